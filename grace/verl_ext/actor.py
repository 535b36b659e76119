"""verl's data-parallel PPO actor, computing only the positions its log-probs are read from.

With `use_remove_padding=False` (the CPU recipe's setting: remove-padding needs flash-attn) verl's actor forwards
every micro-batch at full width, prompts left-padded to `data.max_prompt_length`, and projects every position onto
the vocabulary before keeping the last `response_length`. The demo's prompts average 94 tokens against a width of
192, and the vocabulary projection of a 135M model is a fifth of its weights, so most of the actor's work (the old
log-probs and the update, about half of a CPU training step) went to positions that no loss reads.

`ResponseLogitsActor` changes two things and leaves verl's arithmetic to verl:
- the micro-batch's leading columns that are padding in every row are dropped (`without_shared_left_padding`):
  padding is masked out of attention and every real token keeps its position id, so the outputs at real tokens
  are the same;
- the model projects only the last `response_length + 1` positions (transformers' `logits_to_keep`), of which
  verl's own slice `[:, -response_length - 1 : -1]` then takes exactly the positions it took before.
Log-probs, entropies and gradients equal verl's (tested against `DataParallelPPOActor` on a tiny model). The
remove-padding, fused-kernel and sequence-parallel paths are verl's, unchanged.

On its own path the actor can also pool each forward's last-layer hidden states (`pooling_hidden_states`), so that
the reward's embeddings of the rollouts come from the old-log-prob forward instead of a second forward over the same
rows (`GraceActorRolloutRefWorker.compute_log_prob_and_embeddings`); and, in the update, add the auxiliary
contrastive loss of `grace.rollout_contrastive` on the rollouts' pooled hidden states (`contrastive_loss_on_rollouts`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from verl.workers.actor import DataParallelPPOActor

from grace.embedding import last_hidden_state_captured
from grace.pooling import pool_hidden_states
from grace.rollout_contrastive import attach_loss, rollout_contrastive_loss

TRIMMED_KEYS = ("input_ids", "attention_mask", "position_ids")


def without_shared_left_padding(micro_batch: dict) -> dict:
    """The micro-batch without its leading columns that are padding in every row (a copy; nothing else changes).
    `position_ids` may carry extra leading dimensions (mrope): the sequence is always the last one."""
    mask = micro_batch["attention_mask"]
    used = mask.bool().any(dim=0)
    first = int(used.nonzero()[0]) if used.any() else 0
    if first == 0:
        return micro_batch
    trimmed = dict(micro_batch.items())
    for key in TRIMMED_KEYS:
        trimmed[key] = micro_batch[key][..., first:]
    return trimmed


@contextlib.contextmanager
def logits_of_last_positions(module: torch.nn.Module, count: int):
    """Within the block, every forward of `module` projects only its last `count` positions onto the vocabulary."""

    def keep_last(_module, args, kwargs):
        return args, {**kwargs, "logits_to_keep": count}

    handle = module.register_forward_pre_hook(keep_last, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class RolloutContrastive:
    """The auxiliary loss's settings and targets for one update over a rank's rows (`grace.rollout_contrastive`)."""

    coef: float
    scale: float
    pool_skip: torch.Tensor  # [N] leading valid tokens each rollout row leaves out of its embedding
    targets: torch.Tensor  # [N] each row's right candidate
    candidates: torch.Tensor  # [C, H] detached query and negative embeddings
    losses: list[float] = field(default_factory=list)  # one per micro-batch forward
    rows_seen: int = 0


class ResponseLogitsActor(DataParallelPPOActor):
    _pooling: tuple[torch.Tensor, list] | None = None  # (pool_skip, pooled rows so far) in `pooling_hidden_states`
    _contrastive: RolloutContrastive | None = None  # in `contrastive_loss_on_rollouts`

    def forwards_in_row_order(self, use_dynamic_bsz: bool) -> bool:
        """Whether its log-prob forwards take the rows in order, on its own path: verl's compute_log_prob splits a
        batch in consecutive micro-batches unless dynamic batch sizes regroup them."""
        return not (self.use_remove_padding or self.use_fused_kernels or self.use_ulysses_sp or use_dynamic_bsz)

    @contextlib.contextmanager
    def pooling_hidden_states(self, pool_skip: torch.Tensor):
        """Within the block, each micro-batch forward also pools its last-layer hidden states (`grace.pooling`, each
        row skipping its `pool_skip` [B] leading valid tokens) and appends the [rows, H] float32 L2-normalised
        embeddings to the yielded list. Only for forwards in row order (`forwards_in_row_order`)."""
        pooled = []
        self._pooling = (pool_skip, pooled)
        try:
            yield pooled
        finally:
            self._pooling = None

    @contextlib.contextmanager
    def contrastive_loss_on_rollouts(self, contrastive: RolloutContrastive):
        """Within the block, each micro-batch forward with gradients (the update) attaches `contrastive.coef` x the
        rollout contrastive loss of its rows to the backward pass, and records the loss in `contrastive.losses`.
        Rows are counted in order, modulo the rank's rows (every PPO epoch passes them in the same order): only
        for forwards in row order (`forwards_in_row_order`)."""
        self._contrastive = contrastive
        try:
            yield contrastive
        finally:
            self._contrastive = None

    def _with_contrastive_loss(self, log_prob, hidden, mask):
        contrastive = self._contrastive
        start = contrastive.rows_seen % len(contrastive.targets)
        rows = slice(start, start + len(mask))
        contrastive.rows_seen += len(mask)
        embeddings = pool_hidden_states(hidden, mask, prefix_len=contrastive.pool_skip[rows].to(mask.device))
        loss = rollout_contrastive_loss(embeddings, contrastive.candidates.to(embeddings.device),
                                        contrastive.targets[rows].to(embeddings.device), contrastive.scale)
        contrastive.losses.append(float(loss.detach()))
        # verl divides its loss by the accumulation steps; the attached loss gets the same share
        return attach_loss(log_prob, loss, contrastive.coef / self.gradient_accumulation)

    def _forward_micro_batch(self, micro_batch, temperature, calculate_entropy=False):
        if self.use_remove_padding or self.use_fused_kernels or self.use_ulysses_sp:
            if self._pooling is not None or self._contrastive is not None:
                raise RuntimeError("hidden states are pooled only on GRACE's own forward path (no remove-padding, "
                                   "fused kernels or Ulysses)")
            return super()._forward_micro_batch(micro_batch, temperature, calculate_entropy)
        micro_batch = without_shared_left_padding(micro_batch)
        mask = micro_batch["attention_mask"]
        with logits_of_last_positions(self.actor_module, micro_batch["responses"].size(-1) + 1), \
                last_hidden_state_captured(self.actor_module) as captured:
            entropy, log_prob = super()._forward_micro_batch(micro_batch, temperature, calculate_entropy)
        if self._pooling is not None:
            pool_skip, pooled = self._pooling
            done = sum(len(rows) for rows in pooled)
            skip = pool_skip[done : done + len(mask)].to(mask.device)
            pooled.append(pool_hidden_states(captured["hidden"].detach(), mask, prefix_len=skip))
        if self._contrastive is not None and torch.is_grad_enabled():
            log_prob = self._with_contrastive_loss(log_prob, captured["hidden"], mask)
        return entropy, log_prob
