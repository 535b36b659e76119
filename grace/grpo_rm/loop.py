"""The training loop shared by GRPO-RM and the cross-entropy baseline.

Every arm sees the same batches in the same order for a given seed (a seeded permutation per epoch), the same
head initialisation (seeded before the head is built, see `build_policy`), and AdamW with one learning rate for
the encoder and one for the head. A GRPO-RM batch takes `inner_updates` optimizer steps: the first forward gives
pi_old (detached) as well as the first gradient, so each inner update costs one encoder forward and backward, and
a batch costs about `inner_updates` times a CE batch.

Defaults that are ours, not the paper's (it does not state them): alpha = 1, lambda = 1, `prob` uniformity,
eps = 0.2, mu = 2, head lr 1e-3, dropout 0, the whole class set as the group.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from grace.grpo_rm import objective
from grace.grpo_rm.data import LabelledData

OBJECTIVES = ("grpo_rm", "ce")


@dataclass
class TrainConfig:
    objective: str = "grpo_rm"
    steps: int = 100
    batch_size: int = 16
    encoder_lr: float = 3e-5
    head_lr: float = 1e-3
    train_encoder: bool = True
    inner_updates: int = 2
    clip_eps: float = 0.2
    accuracy_weight: float = 1.0
    uniformity: str = "prob"
    uniformity_weight: float = 1.0
    prototype_sharpness: float = 2.0
    group_size: int | None = None  # None: the whole class set; G: G classes sampled from pi_old
    policy_weighted: bool = False  # the whole class set weighted by pi_old (the sampled group's expectation)
    dual_clip: float = 0.0  # c > 1: a negative advantage's term bounded below by c A (0: off)
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.uniformity not in objective.UNIFORMITY_KINDS:
            raise ValueError(f"uniformity must be one of {objective.UNIFORMITY_KINDS}, got {self.uniformity!r}")
        for name in ("steps", "batch_size", "inner_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must lie in (0, 1), got {self.clip_eps}")
        if self.encoder_lr < 0 or self.head_lr <= 0:
            raise ValueError(f"learning rates must be positive, got encoder {self.encoder_lr}, head {self.head_lr}")
        if self.group_size is not None and self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (or None for every class), got {self.group_size}")
        if self.policy_weighted and self.group_size is not None:
            raise ValueError("policy_weighted weighs the whole class set: it cannot be combined with group_size")
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must exceed 1 (or be 0: off), got {self.dual_clip}")

    def to_dict(self) -> dict:
        return asdict(self)


def batch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Indices of each step's batch: consecutive slices of seeded permutations, a new permutation per epoch."""
    if batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")
    rng = np.random.default_rng(seed)
    batches, order = [], np.array([], dtype=np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = rng.permutation(num_examples)
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def make_optimizer(policy, config: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in policy.head.parameters() if p.requires_grad], "lr": config.head_lr}]
    if config.train_encoder:
        groups.append({"params": [p for p in policy.encoder.parameters() if p.requires_grad],
                       "lr": config.encoder_lr})
    else:
        policy.encoder.requires_grad_(False)
    return torch.optim.AdamW(groups, weight_decay=0.0)


def grpo_rm_step(policy, optimizer, inputs, labels: torch.Tensor, config: TrainConfig,
                 generator: torch.Generator | None = None) -> dict:
    """`inner_updates` clipped updates on one batch; metrics of the first forward (before any update) and the
    clip fraction of the last."""
    group = old_log_probs = advantages = weights = None
    for inner in range(config.inner_updates):
        embeddings, logits = policy(inputs)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if inner == 0:
            old_log_probs = log_probs.detach()
            old_probs = old_log_probs.exp()
            rewards = objective.class_rewards(labels, old_probs, config.uniformity, config.accuracy_weight,
                                              config.uniformity_weight, embeddings, policy.head.prototypes,
                                              config.prototype_sharpness)
            metrics = {"reward": float((old_probs * rewards).sum(-1).mean())}  # expected reward under pi_old
            is_true = torch.nn.functional.one_hot(labels, logits.shape[1]).float()
            if config.group_size is not None:
                group = objective.sample_group(old_probs, config.group_size, generator)
                rewards, is_true = rewards.gather(1, group), is_true.gather(1, group)
            if config.policy_weighted:
                advantages, weights = objective.policy_weighted_advantages(rewards, old_probs), old_probs
            else:
                advantages = objective.group_advantages(rewards)
            metrics.update({
                "true_class_advantage": float(((advantages * is_true).sum(-1) / is_true.sum(-1).clamp_min(1))
                                              .mean()),
                "true_class_prob": float(old_probs.gather(1, labels[:, None]).mean()),
                "logit_norm": float(logits.detach().norm(dim=-1).mean()),
                "accuracy": float((logits.detach().argmax(-1) == labels).float().mean()),
            })
        loss, stats = objective.grpo_rm_loss(log_probs, old_log_probs, advantages, config.clip_eps, group, weights,
                                             config.dual_clip)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    metrics.update(loss=float(loss.detach()), clip_fraction=stats["clip_fraction"])
    return metrics


def ce_step(policy, optimizer, inputs, labels: torch.Tensor) -> dict:
    _, logits = policy(inputs)
    loss = objective.cross_entropy_loss(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        probs = torch.softmax(logits.float(), dim=-1)
        return {"loss": float(loss.detach()), "reward": float(probs.gather(1, labels[:, None]).mean()),
                "true_class_prob": float(probs.gather(1, labels[:, None]).mean()),
                "logit_norm": float(logits.norm(dim=-1).mean()),
                "accuracy": float((logits.argmax(-1) == labels).float().mean())}


def train(policy, train_data: LabelledData, config: TrainConfig, device: str = "cpu",
          on_step: Callable[[dict], None] | None = None,
          evaluate: Callable[[int], dict] | None = None, evaluate_every: int = 0) -> list[dict]:
    """Train `policy` in place for `config.steps` batches; returns one metrics dict per step.

    `on_step` receives each record (for the console and the JSON-lines log). `evaluate(step)` is called before
    training (a record of step 0) and after every `evaluate_every`-th and the last step, its values merged into
    that step's record as `eval_*`.
    The policy stays in eval mode (no dropout, see policy.py); gradients flow all the same.
    """
    torch.manual_seed(config.seed)
    policy.eval()
    optimizer = make_optimizer(policy, config)
    generator = torch.Generator().manual_seed(config.seed)
    labels_all = torch.as_tensor(train_data.labels)
    history = []
    if evaluate is not None and evaluate_every:
        history.append({"step": 0, **{f"eval_{k}": v for k, v in evaluate(0).items()}})
        if on_step is not None:
            on_step(history[-1])
    started = time.perf_counter()
    for step, indices in enumerate(batch_order(len(train_data), config.steps, config.batch_size, config.seed), 1):
        batch = train_data.subset(indices)
        labels = labels_all[torch.as_tensor(indices)].to(device)
        inputs = batch.inputs if batch.is_text else batch.inputs.to(device)
        step_started = time.perf_counter()
        if config.objective == "grpo_rm":
            metrics = grpo_rm_step(policy, optimizer, inputs, labels, config, generator)
        else:
            metrics = ce_step(policy, optimizer, inputs, labels)
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"step {step}: the {config.objective} loss is {metrics['loss']}")
        record = {"step": step, **metrics, "seconds": time.perf_counter() - step_started}
        if evaluate is not None and evaluate_every and (step % evaluate_every == 0 or step == config.steps):
            record.update({f"eval_{k}": v for k, v in evaluate(step).items()})
        elapsed = time.perf_counter() - started
        record["seconds_left"] = elapsed / step * (config.steps - step)
        history.append(record)
        if on_step is not None:
            on_step(record)
    return history
