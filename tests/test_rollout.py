"""verl's HF rollout through GRACE (`grace.verl_ext.rollout`) on both of its paths: continuous batching (one rank) and
`model.generate` (several ranks, or a model the generator cannot serve). On each: the rationales of one prompt at a
time in verl's layout (verl's own call freezes positions), verl's sampling options and nothing of the checkpoint's
generation config, temperature and validation's val_kwargs honoured."""

import contextlib
import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer, GenerationConfig
from verl import DataProto
from verl.workers.rollout import HFRollout

import grace.verl_ext.rollout
from grace.generation import ContinuousBatchGenerator
from grace.verl_ext import cpu_compat
from grace.verl_ext.rollout import GraceHFRollout, grace_rollout
from tests.test_generation import family_model, frequent_inner_token, one_at_a_time

NEW_TOKENS = 24
PATHS = {"continuous batching": True, "model.generate": False}


@pytest.fixture(autouse=True)
def float32_rollouts(monkeypatch):
    """verl's HF rollout runs under a bf16 autocast, which a float32 CPU run turns off (cpu_compat): so do these
    tests, to compare with float32 `generate`. verl's rollout also calls torch.cpu.empty_cache (cpu_compat gives it)."""
    cpu_compat.apply()
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())


def rollout_config(response_length: int, n: int = 1, temperature: float = 1.0, val_temperature: float = 0.0):
    return OmegaConf.create({"response_length": response_length, "n": n, "do_sample": True,
                             "temperature": temperature, "top_p": 1.0, "top_k": -1,
                             "val_kwargs": {"top_k": -1, "top_p": 1.0, "temperature": val_temperature}})


def left_padded_prompts(prompts, pad_id, **meta_info):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # verl's
    return DataProto.from_dict({"input_ids": ids, "attention_mask": mask, "position_ids": positions},
                               meta_info={"pad_token_id": pad_id, **meta_info})


def rationales(out: DataProto, pad_id: int) -> list[list[int]]:
    """Each row's response up to its last valid token (verl's response mask)."""
    width = out.batch["prompts"].shape[1]
    valid = out.batch["attention_mask"][:, width:].sum(-1).tolist()
    return [row[:n] for row, n in zip(out.batch["responses"].tolist(), valid)]


@pytest.mark.parametrize("continuous_batching", PATHS.values(), ids=PATHS.keys())
def test_greedy_rollouts_are_the_rationales_of_one_prompt_at_a_time_in_verl_layout(continuous_batching,
                                                                                  chaotic_model, prompts):
    endless = one_at_a_time(chaotic_model, prompts, NEW_TOKENS, [10**6])
    eos, pad = frequent_inner_token(endless), 0
    expected = [r[: r.index(eos) + 1] if eos in r else r for r in endless]
    assert len({len(r) for r in expected}) >= 3  # rows end at different steps
    batch = left_padded_prompts(prompts, pad, eos_token_id=eos, do_sample=False)
    out = GraceHFRollout(chaotic_model, rollout_config(NEW_TOKENS), continuous_batching).generate_sequences(batch)
    chaotic_model.eval()
    width = batch.batch["input_ids"].shape[1]
    assert torch.equal(out.batch["prompts"], batch.batch["input_ids"])
    for i, rationale in enumerate(expected):
        assert out.batch["responses"][i].tolist() == rationale + [pad] * (NEW_TOKENS - len(rationale))
        assert out.batch["attention_mask"][i, width:].tolist() == (
            [1] * len(rationale) + [0] * (NEW_TOKENS - len(rationale)))  # up to and with the EOS
        last = int(batch.batch["position_ids"][i, -1])
        assert out.batch["position_ids"][i, width:].tolist() == list(range(last + 1, last + NEW_TOKENS + 1))
    # verl's own call, with the prompts' position ids, freezes every generated token's position: this model shows it
    frozen = HFRollout(chaotic_model, rollout_config(NEW_TOKENS)).generate_sequences(batch)
    chaotic_model.eval()
    assert sum(got != want for got, want in zip(rationales(frozen, pad), expected)) >= len(expected) // 2


def test_one_rank_batches_continuously_several_ranks_and_other_rollouts_do_not(chaotic_model):
    for world_size, continuous in ((1, True), (2, False), (8, False)):
        rollout = grace_rollout(HFRollout(chaotic_model, rollout_config(12)), world_size)
        assert type(rollout) is GraceHFRollout and rollout.continuous_batching is continuous
    other = object()
    assert grace_rollout(other, 1) is other  # vLLM's rollout is verl's own


@pytest.mark.parametrize("continuous_batching", PATHS.values(), ids=PATHS.keys())
def test_rollouts_sample_n_per_prompt_from_the_rollout_seed_whatever_the_global_rng(continuous_batching,
                                                                                    chaotic_model, prompts):
    batch = left_padded_prompts(prompts[:4], 0, eos_token_id=10**6)

    def rollouts(seed=0, rank=0, calls=1):
        config = OmegaConf.merge(rollout_config(12, n=3), {"seed": seed})
        rollout = GraceHFRollout(chaotic_model, config, continuous_batching, rank)
        torch.manual_seed(int(torch.empty((), dtype=torch.int64).random_()))  # any global state
        for _ in range(calls):
            out = rollout.generate_sequences(batch).batch
        chaotic_model.eval()
        return out

    first, again = rollouts(), rollouts()
    assert first["responses"].shape == (12, 12) and torch.equal(first["responses"], again["responses"])
    assert torch.equal(first["prompts"], batch.batch["input_ids"].repeat_interleave(3, dim=0))
    assert len({tuple(r.tolist()) for r in first["responses"]}) > 4  # sampled: copies of a prompt differ
    for other in (rollouts(seed=1), rollouts(rank=1), rollouts(calls=2)):  # another seed, rank or call: other draws
        assert not torch.equal(first["responses"], other["responses"])
    rollout = GraceHFRollout(chaotic_model, rollout_config(12, n=3), continuous_batching)
    before = torch.get_rng_state()
    rollout.generate_sequences(batch)
    chaotic_model.eval()
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was


class SamplingSpy:
    """Records the sampling options each path really applies: the generator's settings (continuous batching) and
    the generation config transformers builds its logits processors from (`model.generate`)."""

    def __init__(self, model, monkeypatch):
        self.seen = []
        spy = self

        class RecordingGenerator(ContinuousBatchGenerator):
            def generate(self, prompts, settings, on_finished=None):
                spy.seen.append({"do_sample": settings.do_sample, "temperature": settings.temperature,
                                 "top_p": settings.top_p, "top_k": settings.top_k, "repetition_penalty": 1.0})
                return super().generate(prompts, settings, on_finished)

        monkeypatch.setattr(grace.verl_ext.rollout, "ContinuousBatchGenerator", RecordingGenerator)
        original = model._get_logits_processor

        def recording_processors(generation_config, **kwargs):
            c = generation_config
            self.seen.append({"do_sample": c.do_sample, "temperature": c.temperature, "top_p": c.top_p,
                              "top_k": c.top_k, "repetition_penalty": c.repetition_penalty})
            return original(generation_config=generation_config, **kwargs)

        monkeypatch.setattr(model, "_get_logits_processor", recording_processors)


@pytest.mark.parametrize("continuous_batching", PATHS.values(), ids=PATHS.keys())
def test_verl_options_are_the_whole_sampling_rule_whatever_the_checkpoint_says(continuous_batching, chaotic_model,
                                                                               prompts, monkeypatch):
    greedy = one_at_a_time(chaotic_model, prompts[:6], 12, [10**6])
    model = copy.deepcopy(chaotic_model)
    # a merged Qwen2.5-Instruct checkpoint's sampling fields, made extreme: merged in, any one would show
    model.generation_config = GenerationConfig(do_sample=True, top_k=1, top_p=0.05, temperature=0.01,
                                               repetition_penalty=5.0)
    spy = SamplingSpy(model, monkeypatch)
    rollout = GraceHFRollout(model, rollout_config(12, n=2), continuous_batching)
    batch = left_padded_prompts(prompts[:6], 0, eos_token_id=10**6)
    torch.manual_seed(0)
    sampled = rationales(rollout.generate_sequences(batch), 0)
    assert spy.seen[-1] == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                            "repetition_penalty": 1.0}
    assert sum(s != greedy[i // 2] for i, s in enumerate(sampled)) >= 10  # full-vocabulary draws, not top-1
    batch.meta_info["do_sample"] = False
    assert rationales(rollout.generate_sequences(batch), 0) == greedy  # no repetition penalty merged in
    assert spy.seen[-1]["do_sample"] is False and spy.seen[-1]["repetition_penalty"] == 1.0


@pytest.mark.parametrize("continuous_batching", PATHS.values(), ids=PATHS.keys())
def test_the_temperature_and_validation_val_kwargs_reach_the_sampler(continuous_batching, chaotic_model, prompts):
    greedy = one_at_a_time(chaotic_model, prompts[:6], 12, [10**6])
    batch = lambda **meta: left_padded_prompts(prompts[:6], 0, eos_token_id=10**6, **meta)  # noqa: E731

    def sample(config, data):
        torch.manual_seed(0)
        out = rationales(GraceHFRollout(chaotic_model, config, continuous_batching).generate_sequences(data), 0)
        chaotic_model.eval()
        return out

    assert sample(rollout_config(12, temperature=1e-3), batch()) == greedy  # a cold sampler is greedy
    assert sum(a != b for a, b in zip(sample(rollout_config(12), batch()), greedy)) >= 4  # at 1.0 it is not
    # meta_info's temperature (GRACE's rationale requests) overrides the config's
    assert sample(rollout_config(12), batch(temperature=1e-3)) == greedy
    # validation samples with val_kwargs, not with the rollout's temperature
    validation = batch(validate=True, do_sample=True)
    assert sample(rollout_config(12, val_temperature=1e-3), validation) == greedy
    assert sum(a != b for a, b in zip(sample(rollout_config(12, temperature=1e-3, val_temperature=1.0), validation),
                                      greedy)) >= 4


def test_one_rank_takes_a_model_the_generator_cannot_serve_through_generate(prompts, tiny_model_path):
    model = family_model("mistral", len(AutoTokenizer.from_pretrained(tiny_model_path)), sliding_window=16)
    expected = one_at_a_time(model, prompts[:4], 12, [10**6])
    batch = left_padded_prompts(prompts[:4], 0, eos_token_id=10**6, do_sample=False)
    out = grace_rollout(HFRollout(model, rollout_config(12)), world_size=1).generate_sequences(batch)
    assert rationales(out, 0) == expected
