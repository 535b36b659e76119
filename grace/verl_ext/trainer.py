"""verl's RayPPOTrainer, unchanged but for two things: the `hidden` reward managers get the actor worker group, and
checkpoints can be spaced in time.

verl 0.4.1 has no hook between rollout and reward; the reward function is called in the driver with the whole
batch, so giving it the worker group is enough for it to generate the document rationales and compute pooled
embeddings on the workers. `fit()` is verl's own.

`+trainer.save_minutes=M` (GRACE's key; 0 or absent: verl's behaviour) skips a checkpoint that verl's `save_freq`
makes due while the last one is younger than M minutes; the last step always saves. With `save_freq=1` a run
checkpoints about every M minutes and an interrupted run loses at most M minutes and one step, whatever a save costs
on its disk (a checkpoint of a 135M model with its optimizer is 1.6 GB).
"""

import time

from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from grace.verl_ext.reward_manager import HiddenRewardManager


def checkpoint_skipped(save_minutes: float, seconds_since_last: float, last_step: bool) -> bool:
    """Whether a checkpoint that save_freq made due is skipped."""
    return save_minutes > 0 and not last_step and seconds_since_last < 60 * save_minutes


class GraceRayPPOTrainer(RayPPOTrainer):
    def init_workers(self):
        super().init_workers()
        for reward_fn in (self.reward_fn, self.val_reward_fn):
            if isinstance(reward_fn, HiddenRewardManager):
                reward_fn.attach_worker_group(self.actor_rollout_wg)
        self._last_checkpoint = time.monotonic()  # training starts now: the first checkpoint is M minutes in

    def _save_checkpoint(self):
        save_minutes = self.config.trainer.get("save_minutes", 0) or 0
        last_step = self.global_steps >= self.total_training_steps
        if checkpoint_skipped(save_minutes, time.monotonic() - self._last_checkpoint, last_step):
            return
        super()._save_checkpoint()
        self._last_checkpoint = time.monotonic()
