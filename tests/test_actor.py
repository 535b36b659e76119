"""`ResponseLogitsActor` against verl's `DataParallelPPOActor`: the same log-probs, entropies and gradients from a
narrower forward that projects only the response positions."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from grace.embedding import embed_sequences
from grace.verl_ext.actor import ResponseLogitsActor, without_shared_left_padding

PROMPT_WIDTH, RESPONSE_WIDTH = 12, 6
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port no one listens on now (tests on another worker of `pytest -n` may hold a fixed one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def single_process_group():
    """verl's actor reads its rank at construction: a one-process gloo group for the test."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def float32_autocast(monkeypatch):
    """verl's forward runs under a bf16 autocast; compare the two actors in float32 (as a float32 CPU run does)."""
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())


def actor_config():
    return OmegaConf.create({"use_remove_padding": False, "use_fused_kernels": False,
                             "ulysses_sequence_parallel_size": 1, "entropy_from_logits_with_chunking": False,
                             "use_torch_compile": False, "entropy_checkpointing": False})


def left_padded_batch(vocab_size: int, prompt_lengths: list[int], response_lengths: list[int]) -> dict:
    """Prompts left-padded to PROMPT_WIDTH, responses right-padded to RESPONSE_WIDTH, verl's position ids."""
    generator = torch.Generator().manual_seed(0)
    rows = len(prompt_lengths)
    input_ids = torch.randint(3, vocab_size, (rows, PROMPT_WIDTH + RESPONSE_WIDTH), generator=generator)
    mask = torch.zeros_like(input_ids)
    for row, (prompt, response) in enumerate(zip(prompt_lengths, response_lengths)):
        mask[row, PROMPT_WIDTH - prompt : PROMPT_WIDTH + response] = 1
    input_ids = torch.where(mask.bool(), input_ids, torch.zeros_like(input_ids))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions,
            "responses": input_ids[:, PROMPT_WIDTH:]}


def log_probs_and_gradients(actor_class, model, batch):
    model.zero_grad()
    actor = actor_class(config=actor_config(), actor_module=model)
    entropy, log_probs = actor._forward_micro_batch(batch, temperature=0.7, calculate_entropy=True)
    response_mask = batch["attention_mask"][:, PROMPT_WIDTH:]
    weights = torch.linspace(-1.0, 1.0, log_probs.numel()).reshape(log_probs.shape)  # signs like advantages
    (log_probs * weights * response_mask).sum().backward()
    return entropy.detach(), log_probs.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_same_log_probs_entropy_and_gradients_as_verls_actor(tiny_model_path, single_process_group,
                                                            float32_autocast):
    from verl.workers.actor import DataParallelPPOActor

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, torch_dtype=torch.float32)
    model.eval()  # no dropout: the two forwards must see the same network
    batch = left_padded_batch(model.config.vocab_size, prompt_lengths=[5, 8, 3], response_lengths=[6, 2, 4])
    expected = log_probs_and_gradients(DataParallelPPOActor, model, batch)
    actual = log_probs_and_gradients(ResponseLogitsActor, model, batch)
    torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual[1], expected[1], atol=1e-5, rtol=1e-5)
    assert expected[2].keys() == actual[2].keys()
    for name in expected[2]:
        torch.testing.assert_close(actual[2][name], expected[2][name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in actual[2].values())


def test_the_forward_is_narrower_and_projects_only_the_response(tiny_model_path, single_process_group,
                                                                float32_autocast):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, torch_dtype=torch.float32)
    batch = left_padded_batch(model.config.vocab_size, prompt_lengths=[5, 8, 3], response_lengths=[6, 2, 4])
    seen = {}
    model.register_forward_hook(lambda module, args, kwargs, output: seen.update(
        width=kwargs["input_ids"].shape[1], logits=output.logits.shape[1]), with_kwargs=True)
    with torch.no_grad():
        ResponseLogitsActor(config=actor_config(), actor_module=model)._forward_micro_batch(batch, temperature=1.0)
    assert seen == {"width": 8 + RESPONSE_WIDTH, "logits": RESPONSE_WIDTH + 1}


def test_the_log_prob_forward_pools_what_the_embedding_pass_pools_and_its_log_probs_stay(
        tiny_model_path, single_process_group, float32_autocast):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, torch_dtype=torch.float32).eval()
    batch = left_padded_batch(model.config.vocab_size, prompt_lengths=[5, 8, 3], response_lengths=[6, 2, 4])
    actor = ResponseLogitsActor(config=actor_config(), actor_module=model)
    assert actor.forwards_in_row_order(use_dynamic_bsz=False) and not actor.forwards_in_row_order(True)

    def log_probs_in_micro_batches_of_two():  # as verl's compute_log_prob splits a batch: consecutive rows
        with torch.no_grad():
            outputs = [actor._forward_micro_batch({k: v[rows] for k, v in batch.items()}, 0.7, calculate_entropy=True)
                       for rows in (slice(0, 2), slice(2, 3))]
        return [torch.cat(parts) for parts in zip(*outputs)]

    plain = log_probs_in_micro_batches_of_two()
    skip = torch.tensor([2, 0, 6])  # leading valid tokens left out, per row
    with actor.pooling_hidden_states(skip) as pooled:
        pooling = log_probs_in_micro_batches_of_two()
    assert actor._pooling is None  # the block ended: later forwards pool nothing
    assert torch.equal(pooling[0], plain[0]) and torch.equal(pooling[1], plain[1])  # entropies, log-probs
    assert [len(rows) for rows in pooled] == [2, 1]  # one entry per micro-batch, in row order
    expected = embed_sequences(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"], skip)
    torch.testing.assert_close(torch.cat(pooled), expected, rtol=1e-5, atol=1e-6)


def test_hidden_states_are_pooled_only_on_graces_own_path(single_process_group):
    config = actor_config()
    config.use_remove_padding = True
    actor = ResponseLogitsActor(config=config, actor_module=torch.nn.Linear(2, 2))
    assert not actor.forwards_in_row_order(use_dynamic_bsz=False)
    batch = left_padded_batch(100, prompt_lengths=[5], response_lengths=[6])
    with actor.pooling_hidden_states(torch.zeros(1)), pytest.raises(RuntimeError, match="own forward path"):
        actor._forward_micro_batch(batch, temperature=1.0)


def test_shared_left_padding_is_dropped_and_nothing_else():
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    batch = {"input_ids": torch.arange(10).reshape(2, 5), "attention_mask": mask,
             "position_ids": torch.arange(30).reshape(2, 3, 5), "responses": torch.ones(2, 2)}
    trimmed = without_shared_left_padding(batch)
    assert trimmed["input_ids"].tolist() == [[2, 3, 4], [7, 8, 9]]
    assert trimmed["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert trimmed["position_ids"].shape == (2, 3, 3) and trimmed["position_ids"][0, 0].tolist() == [2, 3, 4]
    assert trimmed["responses"] is batch["responses"]
    assert batch["input_ids"].shape == (2, 5)  # the caller's batch is untouched
    unpadded = {**batch, "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    assert without_shared_left_padding(unpadded) is unpadded


@pytest.fixture(scope="module")
def gpu_recipe_actor_config():
    """The actor config of train.sh (the GPU recipe), as verl's worker hands it to its actor: Hydra's composition
    printed by `train.sh --cfg job`, with the model's remove-padding and fused-kernel flags copied in (verl's
    ActorRolloutRefWorker.init_model does so)."""
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "train.sh"), "--cfg", "job"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120, check=True)
    recipe = OmegaConf.create(done.stdout[done.stdout.index("data:"):])
    actor = recipe.actor_rollout_ref.actor
    actor.use_remove_padding = recipe.actor_rollout_ref.model.use_remove_padding
    actor.use_fused_kernels = recipe.actor_rollout_ref.model.get("use_fused_kernels", False)
    return actor


@pytest.mark.parametrize("variant", ["train.sh", "fused kernels", "Ulysses"])
def test_the_gpu_recipe_reaches_verls_forward_unchanged(variant, gpu_recipe_actor_config, single_process_group,
                                                        monkeypatch):
    """Remove-padding (train.sh), fused kernels and sequence parallelism are verl's paths: GRACE's actor hands the
    micro-batch to verl's forward as it came, with no hook on the module."""
    from verl.workers.actor import DataParallelPPOActor

    config = copy.deepcopy(gpu_recipe_actor_config)
    assert config.use_remove_padding is True  # what train.sh sets
    if variant == "fused kernels":
        config.use_remove_padding, config.use_fused_kernels = False, True
    if variant == "Ulysses":
        config.use_remove_padding, config.ulysses_sequence_parallel_size = False, 2
    calls = []

    def verls_forward(self, micro_batch, temperature, calculate_entropy=False):
        calls.append((micro_batch, temperature, calculate_entropy, len(self.actor_module._forward_pre_hooks)))
        return "verl's output"

    monkeypatch.setattr(DataParallelPPOActor, "_forward_micro_batch", verls_forward)
    batch = left_padded_batch(100, prompt_lengths=[5, 8, 3], response_lengths=[6, 2, 4])
    actor = ResponseLogitsActor(config=config, actor_module=torch.nn.Linear(2, 2))
    assert actor._forward_micro_batch(batch, 0.7, calculate_entropy=True) == "verl's output"
    assert len(calls) == 1 and calls[0][0] is batch and calls[0][1:] == (0.7, True, 0)
    assert all(batch[key].shape[1] == PROMPT_WIDTH + RESPONSE_WIDTH for key in ("input_ids", "position_ids"))


def test_the_fused_adamw_step_on_cpu_gives_the_parameters_of_torchs_default_to_rounding(single_process_group):
    from torch.distributed.fsdp import fully_shard

    from grace.verl_ext.worker import fused_steps_on_cpu

    def sharded_model():
        torch.manual_seed(0)
        return fully_shard(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)))

    models = [sharded_model(), sharded_model()]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01) for m in models]  # as verl builds it
    assert optimizers[1].param_groups[0]["foreach"] is None  # torch's default: on a CPU, the per-tensor loop
    fused_steps_on_cpu(optimizers[1])
    assert optimizers[1].param_groups[0]["fused"] is True
    inputs = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
    default, fused = ([p.full_tensor() for p in m.parameters()] for m in models)
    for a, b in zip(default, fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    start = sharded_model()[0].weight.full_tensor()
    assert (default[0] - start).abs().max() > 1e-3  # the steps moved the weights far beyond the tolerance
    chosen = torch.optim.AdamW(models[0].parameters(), foreach=False)
    fused_steps_on_cpu(chosen)
    assert not chosen.param_groups[0]["fused"]  # a choice made by whoever built the optimizer stays
