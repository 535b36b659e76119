"""The auxiliary contrastive loss on the rollouts' pooled hidden states: the loss against a float64 loop, the
attached gradient as an exact identity, and the actor's update adding exactly coef / accumulation x its gradient."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from grace.embedding import last_hidden_state_captured
from grace.pooling import pool_hidden_states
from grace.rollout_contrastive import attach_loss, group_candidates, rollout_contrastive_loss
from grace.verl_ext.actor import ResponseLogitsActor, RolloutContrastive
from tests.test_actor import actor_config, float32_autocast, left_padded_batch, single_process_group  # noqa: F401


def loss_loop(rollouts, candidates, targets, scale):
    """Cross-entropy of scaled cosine similarities, one row and one candidate at a time, in float64."""
    total = 0.0
    for row, target in zip(rollouts.double().tolist(), targets.tolist()):
        logits = []
        for candidate in candidates.double().tolist():
            dot = sum(a * b for a, b in zip(row, candidate))
            logits.append(scale * dot / math.sqrt(sum(a * a for a in row) * sum(b * b for b in candidate)))
        top = max(logits)
        total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[target]
    return total / len(rollouts)


def test_the_loss_is_the_cross_entropy_of_scaled_cosines():
    generator = torch.Generator().manual_seed(0)
    rollouts, candidates = torch.randn(5, 7, generator=generator), torch.randn(4, 7, generator=generator)
    targets = torch.tensor([0, 0, 3, 1, 2])
    for scale in (1.0, 20.0):
        loss = rollout_contrastive_loss(rollouts, candidates, targets, scale)
        assert float(loss) == pytest.approx(loss_loop(rollouts, candidates, targets, scale), rel=1e-5)
    with pytest.raises(ValueError, match="indices into 4 candidates"):
        rollout_contrastive_loss(rollouts, candidates, torch.tensor([0, 0, 4, 1, 2]))
    with pytest.raises(ValueError, match=r"candidates \[C, H\]"):
        rollout_contrastive_loss(rollouts, candidates[:, :3], targets)


def test_each_row_targets_its_groups_query_among_every_groups_query_and_negative():
    queries = torch.arange(10.0)[:, None].repeat(1, 3)  # row r's query embedding is [r, r, r]
    negatives = -queries
    groups = torch.tensor([7, 7, 2, 2, 9])  # rows 0-1 group 7, 2-3 group 2, 4 group 9
    candidates, targets = group_candidates(groups, queries, negatives)
    # each group once (by group id: 2, 7, 9; first rows 2, 0, 4), queries then negatives
    torch.testing.assert_close(candidates, torch.tensor([[2.0] * 3, [0.0] * 3, [4.0] * 3,
                                                         [-2.0] * 3, [-0.0] * 3, [-4.0] * 3]))
    assert targets.tolist() == [1, 1, 0, 0, 2]
    unsupervised, _ = group_candidates(groups, queries, None)
    assert unsupervised.shape == (3, 3)


def test_the_attached_loss_receives_scale_times_the_carriers_backward():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 3, generator=generator, requires_grad=True)
    inputs = torch.randn(6, 4, generator=generator)

    def carrier_and_loss():
        carrier = (inputs @ weight).log_softmax(-1)
        return carrier, (inputs @ weight).pow(2).mean()

    def objective(carrier):  # nonlinear in the carrier, as verl's clipped policy loss is
        return (carrier.exp() * torch.linspace(-1, 1, carrier.numel()).reshape(carrier.shape)).sum()

    carrier, loss = carrier_and_loss()
    objective(attach_loss(carrier, loss, 0.25)).backward()
    attached = weight.grad.clone()
    weight.grad = None
    carrier, loss = carrier_and_loss()
    torch.testing.assert_close(attach_loss(carrier, loss, 0.25), carrier, rtol=0, atol=0)  # passes unchanged
    (objective(carrier) + 0.25 * loss).backward()
    torch.testing.assert_close(attached, weight.grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="scalar"):
        attach_loss(carrier, loss.reshape(1), 1.0)


def test_the_update_adds_exactly_coef_over_accumulation_times_the_loss_gradient(
        tiny_model_path, single_process_group, float32_autocast):  # noqa: F811
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, torch_dtype=torch.float32).eval()
    batch = left_padded_batch(model.config.vocab_size, prompt_lengths=[5, 8, 3, 6], response_lengths=[6, 2, 4, 5])
    actor = ResponseLogitsActor(config=actor_config(), actor_module=model)
    actor.gradient_accumulation = 2  # what verl's update sets: two micro-batches per mini-batch
    pool_skip, targets = torch.tensor([5, 8, 3, 6]), torch.tensor([0, 0, 1, 2])  # each row's prompt: the rationale
    candidates = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    micro_batches = [slice(0, 2), slice(2, 4)]

    def policy_gradient(contrastive=None):
        model.zero_grad()
        with actor.contrastive_loss_on_rollouts(contrastive) if contrastive else torch.enable_grad():
            for rows in micro_batches + micro_batches:  # two PPO epochs over the same rows
                _, log_probs = actor._forward_micro_batch({k: v[rows] for k, v in batch.items()}, 0.7)
                (log_probs.exp() * torch.linspace(-1, 1, log_probs.numel()).reshape(log_probs.shape)).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = policy_gradient()
    contrastive = RolloutContrastive(coef=0.3, scale=20.0, pool_skip=pool_skip, targets=targets,
                                     candidates=candidates)
    combined = policy_gradient(contrastive)
    assert actor._contrastive is None and len(contrastive.losses) == 4 and contrastive.rows_seen == 8

    model.zero_grad()  # the oracle: the loss of each micro-batch's rows from a forward of its own
    losses = []
    for rows in micro_batches + micro_batches:
        mask = batch["attention_mask"][rows]
        with last_hidden_state_captured(model) as captured:
            model(input_ids=batch["input_ids"][rows], attention_mask=mask, position_ids=batch["position_ids"][rows])
        embeddings = pool_hidden_states(captured["hidden"], mask, prefix_len=pool_skip[rows])
        losses.append(rollout_contrastive_loss(embeddings, candidates, targets[rows], 20.0))
        (0.3 / 2 * losses[-1]).backward()
    assert contrastive.losses == pytest.approx([float(loss.detach()) for loss in losses], rel=1e-5)
    changed = 0
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(combined[name], plain[name] + parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
        changed += int(not torch.allclose(combined[name], plain[name]))
    assert changed > 0


def test_the_worker_builds_the_targets_from_the_batch_or_says_what_is_missing():
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from verl import DataProto

    from grace.verl_ext.worker import GraceActorRolloutRefWorker

    in_row_order = SimpleNamespace(forwards_in_row_order=lambda use_dynamic_bsz: not use_dynamic_bsz)

    def worker(**actor):
        return SimpleNamespace(config=OmegaConf.create({"actor": {"use_dynamic_bsz": False, **actor}}),
                               actor=in_row_order)

    queries = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    data = DataProto.from_dict(tensors={"grace_group": torch.tensor([1, 1, 0, 0]), "grace_pool_skip": torch.ones(4),
                                        "grace_query_embeddings": queries, "grace_negative_embeddings": -queries})
    targets_of = GraceActorRolloutRefWorker._rollout_contrastive
    assert targets_of(worker(), data) is None and targets_of(worker(grace_contrastive_coef=0.0), data) is None
    built = targets_of(worker(grace_contrastive_coef=0.5), data)
    assert built.coef == 0.5 and built.scale == 20.0 and built.targets.tolist() == [1, 1, 0, 0]
    torch.testing.assert_close(built.candidates, torch.cat([queries[[2, 0]], -queries[[2, 0]]]))
    with pytest.raises(NotImplementedError, match="row order"):
        targets_of(worker(grace_contrastive_coef=0.5, use_dynamic_bsz=True), data)
    with pytest.raises(ValueError, match=">= 0"):
        targets_of(worker(grace_contrastive_coef=-1.0), data)
    data.batch.pop("grace_query_embeddings")
    with pytest.raises(KeyError, match="grace_query_embeddings"):
        targets_of(worker(grace_contrastive_coef=0.5), data)
