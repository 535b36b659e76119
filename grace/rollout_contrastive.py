"""An auxiliary contrastive loss on the rollouts' pooled hidden states, beside GRPO's reward (beyond the paper).

GRPO's reward can only select among the rationales the policy samples; the embedding itself (the pooled hidden
states) is shaped only through which rationales become likelier. This loss sends a gradient through the
representation too: each rollout's embedding, pooled from the update's own forward, is pulled towards its group's
query embedding and pushed from every hard negative and every other group's query of the rank's batch (the
in-batch negatives of sentence-transformers' `MultipleNegativesRankingLoss`, with the rollout as the anchor). The
targets are the reward's embeddings of the query and negative rationales, detached: the loss moves the rollouts'
representation, not the targets'.

`attach_loss` adds the loss's gradient to the backward pass that verl runs on the policy loss, without touching
verl's loss or its metrics: the rollouts' log-probs pass through unchanged, and the loss receives a fixed
gradient `scale` whenever the log-probs receive one (the whole update). verl divides its loss by the gradient
accumulation steps, so the actor gives `coef / gradient_accumulation` as the scale.
"""

from __future__ import annotations

import torch


def rollout_contrastive_loss(rollouts: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
                             scale: float = 20.0) -> torch.Tensor:
    """Mean cross-entropy of each rollout's scaled cosine similarities to `candidates` [C, H] (every group's query
    and hard negative on the rank), the right one at `targets` [B] (the row's group's query). `rollouts` [B, H];
    `scale` 20 is the inverse temperature of sentence-transformers' MNRL."""
    if rollouts.dim() != 2 or candidates.dim() != 2 or rollouts.shape[1] != candidates.shape[1]:
        raise ValueError(f"expected rollouts [B, H] and candidates [C, H], got {tuple(rollouts.shape)} and "
                         f"{tuple(candidates.shape)}")
    if targets.shape != rollouts.shape[:1] or int(targets.max()) >= len(candidates) or int(targets.min()) < 0:
        raise ValueError(f"targets must be [B] = [{len(rollouts)}] indices into {len(candidates)} candidates")
    similarities = torch.nn.functional.normalize(rollouts.float(), dim=-1) @ \
        torch.nn.functional.normalize(candidates.float(), dim=-1).T
    return torch.nn.functional.cross_entropy(scale * similarities, targets)


class _AttachLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, carrier, loss, scale):
        ctx.scale = scale
        ctx.loss_dtype, ctx.loss_device = loss.dtype, loss.device
        return carrier.view_as(carrier)

    @staticmethod
    def backward(ctx, carrier_grad):
        return carrier_grad, torch.full((), ctx.scale, dtype=ctx.loss_dtype, device=ctx.loss_device), None


def attach_loss(carrier: torch.Tensor, loss: torch.Tensor, scale: float) -> torch.Tensor:
    """`carrier` unchanged; in the backward pass of anything computed from it, `loss` (a scalar) also receives the
    gradient `scale`, as if `scale * loss` had been added to the objective."""
    if loss.dim() != 0:
        raise ValueError(f"the attached loss must be a scalar, got shape {tuple(loss.shape)}")
    return _AttachLoss.apply(carrier, loss, scale)


def group_candidates(groups: torch.Tensor, queries: torch.Tensor, negatives: torch.Tensor | None):
    """From per-row `groups` [B] and their group's `queries` / `negatives` [B, H] (None: unsupervised, no hard
    negative): the candidates [C, H] (each group's query once, then each group's negative once) and each row's
    target [B], the index of its group's query."""
    unique, targets = torch.unique(groups, return_inverse=True)
    rows = torch.arange(len(groups))
    first = torch.full((len(unique),), len(groups)).scatter_reduce(0, targets, rows, "amin")
    candidates = queries[first] if negatives is None else torch.cat([queries[first], negatives[first]])
    return candidates, targets
