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
"""

from __future__ import annotations

import contextlib

import torch
from verl.workers.actor import DataParallelPPOActor

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


class ResponseLogitsActor(DataParallelPPOActor):
    def _forward_micro_batch(self, micro_batch, temperature, calculate_entropy=False):
        if self.use_remove_padding or self.use_fused_kernels or self.use_ulysses_sp:
            return super()._forward_micro_batch(micro_batch, temperature, calculate_entropy)
        micro_batch = without_shared_left_padding(micro_batch)
        with logits_of_last_positions(self.actor_module, micro_batch["responses"].size(-1) + 1):
            return super()._forward_micro_batch(micro_batch, temperature, calculate_entropy)
