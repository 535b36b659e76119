"""verl's RayPPOTrainer, unchanged but for one thing: the `hidden` reward managers get the actor worker group.

verl 0.4.1 has no hook between rollout and reward; the reward function is called in the driver with the whole
batch, so giving it the worker group is enough for it to generate the document rationales and compute pooled
embeddings on the workers. `fit()` is verl's own.
"""

from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from grace.verl_ext.reward_manager import HiddenRewardManager


class GraceRayPPOTrainer(RayPPOTrainer):
    def init_workers(self):
        super().init_workers()
        for reward_fn in (self.reward_fn, self.val_reward_fn):
            if isinstance(reward_fn, HiddenRewardManager):
                reward_fn.attach_worker_group(self.actor_rollout_wg)
