"""GRPO-RM's maths as pure tensor functions: rewards over the class set, group advantages, the clipped objective.

Notation of docs/grpo_rm.md: B inputs, C classes, logits z (B, C), pi = softmax(z). The output group of an input
is the class set (all C classes, or G classes sampled from pi_old). Every function here is stateless and works on
any device; the loop in `loop.py` wires them together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNIFORMITY_KINDS = ("none", "prob", "complement", "prototype")
ADVANTAGE_EPS = 1e-6


def accuracy_reward(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """r_acc[b, j] = 1 if j is the true class of input b, else 0 (B, C)."""
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels, num_classes).to(torch.float32)


def uniformity_reward(kind: str, labels: torch.Tensor, old_probs: torch.Tensor,
                      embeddings: torch.Tensor | None = None, prototypes: torch.Tensor | None = None,
                      sharpness: float = 2.0) -> torch.Tensor:
    """u[b, j] <= 0 for the wrong classes, 0 for the true class (B, C).

    - `none`: zero;
    - `prob`: -p_old[j]: the most probable wrong class is pushed hardest (our default);
    - `complement`: -|p_hat[j] - 1/(C-1)| with p_hat the old distribution renormalised over the wrong classes: the
      wrong classes are pushed towards a flat distribution;
    - `prototype`: -exp(-t ||h_hat - w_hat_j||^2) with unit-normalised embedding h and class vector w: wrong classes
      whose prototype lies near the embedding are pushed hardest (uniformity in the embedding space).
    A term equal for every class of one input would cancel out of the advantages, so each varies across classes.
    """
    if kind not in UNIFORMITY_KINDS:
        raise ValueError(f"uniformity must be one of {UNIFORMITY_KINDS}, got {kind!r}")
    old_probs = old_probs.detach().to(torch.float32)
    num_classes = old_probs.shape[1]
    if kind == "none":
        u = torch.zeros_like(old_probs)
    elif kind == "prob":
        u = -old_probs
    elif kind == "complement":
        if num_classes < 2:
            raise ValueError("the complement uniformity needs at least 2 classes")
        wrong_mass = (1 - old_probs.gather(1, labels[:, None])).clamp_min(1e-12)
        u = -(old_probs / wrong_mass - 1 / (num_classes - 1)).abs()
    else:
        if embeddings is None or prototypes is None:
            raise ValueError("the prototype uniformity needs the embeddings and the class prototypes")
        if prototypes.shape != (num_classes, embeddings.shape[1]):
            raise ValueError(f"prototypes of shape {tuple(prototypes.shape)} do not match {num_classes} classes "
                             f"of {embeddings.shape[1]}-dimensional embeddings")
        h = F.normalize(embeddings.detach().to(torch.float32), dim=-1)
        w = F.normalize(prototypes.detach().to(torch.float32), dim=-1)
        u = -torch.exp(-sharpness * torch.cdist(h, w).pow(2))
    return u.scatter(1, labels[:, None], 0.0)


def class_rewards(labels: torch.Tensor, old_probs: torch.Tensor, uniformity: str = "prob",
                  accuracy_weight: float = 1.0, uniformity_weight: float = 1.0,
                  embeddings: torch.Tensor | None = None, prototypes: torch.Tensor | None = None,
                  sharpness: float = 2.0) -> torch.Tensor:
    """r = alpha * r_acc + lambda * u, for every class of every input (B, C)."""
    rewards = accuracy_weight * accuracy_reward(labels, old_probs.shape[1])
    if uniformity != "none" and uniformity_weight:
        rewards = rewards + uniformity_weight * uniformity_reward(uniformity, labels, old_probs, embeddings,
                                                                  prototypes, sharpness)
    return rewards


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A = (r - mean) / (std + 1e-6) over each row (the group), population std: rows sum to 0, a constant row
    gives 0, and a per-row constant added to r changes nothing."""
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    return centred / (rewards.std(dim=-1, unbiased=False, keepdim=True) + ADVANTAGE_EPS)


def policy_weighted_advantages(rewards: torch.Tensor, old_probs: torch.Tensor) -> torch.Tensor:
    """A = (r - mu) / (sigma + 1e-6) with the mean and (population) std of r under pi_old over the class set (B, C):
    the advantages of a group sampled from the policy, in the limit of a large group. Their pi_old-weighted sum is
    zero, so at rho = 1 the weighted objective's logit gradient is pi_old * A, the expectation of the sampled
    policy gradient, which shrinks as the policy grows confident (the uniform 1/C group's stays A / C)."""
    weights = old_probs.detach().to(rewards.dtype)
    mean = (weights * rewards).sum(dim=-1, keepdim=True)
    std = (weights * (rewards - mean) ** 2).sum(dim=-1, keepdim=True).sqrt()
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def sample_group(old_probs: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`size` class indices per input drawn from pi_old with replacement (B, G): the sampled-group option.

    The draw is made where `generator` lives (the loop's is a CPU one) and returned on the input's device: torch
    refuses a CPU generator for a CUDA tensor, and the same seed then gives the same groups on every device."""
    if size < 2:
        raise ValueError(f"a sampled group needs at least 2 members, got {size}")
    draw_on = generator.device if generator is not None else old_probs.device
    probs = old_probs.detach().to(draw_on, torch.float32)
    return torch.multinomial(probs, size, replacement=True, generator=generator).to(old_probs.device)


def grpo_rm_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                 clip_eps: float = 0.2, group: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                 dual_clip: float = 0.0) -> tuple[torch.Tensor, dict]:
    """-(1/B) sum_b sum_j w_bj min(rho A, clip(rho, 1-eps, 1+eps) A), with rho = pi / pi_old; no reference model.

    `group` (B, G) selects the sampled classes; by default the group is every class (G = C). `weights` (B, G) weigh
    the members (default 1/G; the policy-weighted group passes pi_old). `dual_clip` c > 1 bounds the term of a
    negative advantage below by c A (dual-clip PPO): the plain clipped objective leaves rho A unbounded there, since
    min() keeps the unclipped, larger-magnitude term when rho > 1 + eps. Returns the loss and `clip_fraction`, the
    share of group members whose term is clipped (their gradient is exactly zero), and `ratio_max_deviation`,
    max |rho - 1|.
    """
    if group is not None:
        log_probs = log_probs.gather(1, group)
        old_log_probs = old_log_probs.gather(1, group)
    if advantages.shape != log_probs.shape:
        raise ValueError(f"advantages of shape {tuple(advantages.shape)} for a group of shape "
                         f"{tuple(log_probs.shape)}")
    if dual_clip and dual_clip <= 1:
        raise ValueError(f"dual_clip must exceed 1 (or be 0: off), got {dual_clip}")
    if weights is None:
        weights = torch.full_like(log_probs, 1.0 / log_probs.shape[1])
    elif weights.shape != log_probs.shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for a group of shape {tuple(log_probs.shape)}")
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    terms = torch.minimum(unclipped, clipped)
    if dual_clip:
        terms = torch.where(advantages < 0, torch.maximum(terms, dual_clip * advantages), terms)
    loss = -(weights.detach() * terms).sum(dim=-1).mean()
    with torch.no_grad():
        is_clipped = ((advantages > 0) & (ratio > 1 + clip_eps)) | ((advantages < 0) & (ratio < 1 - clip_eps))
        if dual_clip:
            is_clipped |= (advantages < 0) & (ratio > dual_clip)
        stats = {"clip_fraction": float(is_clipped.float().mean()),
                 "ratio_max_deviation": float((ratio - 1).abs().max())}
    return loss, stats


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_b log pi(y_b | x_b): standard fine-tuning, the baseline."""
    return F.cross_entropy(logits.to(torch.float32), labels)
