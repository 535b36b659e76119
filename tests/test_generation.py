"""Continuous-batching generation: the same greedy rationales as one prompt at a time, sampling, errors, and the
encoder's chunked use of it (order restored, nothing lost on a failure)."""

from collections import Counter

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import grace.encoder
from grace.data.assets import load_wiki_articles, smollm2_hf_folder
from grace.encoder import GraceEncoder
from grace.generation import ContinuousBatchGenerator, GenerationSettings, SlotKVCache, choose_tokens
from grace.prompts import chat_prompt_ids

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def chaotic_model(tiny_model_path):
    """The tiny Qwen2 with larger random weights: its greedy continuations change with every token of context
    (the default initialisation repeats one token), so a wrong position or mask shows in the output."""
    config = AutoConfig.from_pretrained(tiny_model_path)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def prompts(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    articles = load_wiki_articles()[:12]
    return [chat_prompt_ids(tokenizer, a["extract"][: 20 + 37 * i % 300], 1024) for i, a in enumerate(articles)]


def one_at_a_time(model, prompts, max_new_tokens, eos_ids):
    """Greedy `generate` on each prompt alone, cut after its first EOS."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        row = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_ids, pad_token_id=0)[0, len(prompt):].tolist()
        ends = [i for i, token in enumerate(row) if token in eos_ids]
        out.append(row[: ends[0] + 1] if ends else row)
    return out


def frequent_inner_token(rationales):
    """A token that occurs inside many rationales but in none's first 5 tokens: as EOS, rows end at many lengths."""
    counts = Counter(t for r in rationales for t in set(r[5:]) if t not in {u for s in rationales for u in s[:5]})
    return counts.most_common(1)[0][0]


def test_continuous_batching_gives_the_rationales_of_one_prompt_at_a_time(chaotic_model, prompts):
    endless = one_at_a_time(chaotic_model, prompts, NEW_TOKENS, [10**6])
    eos = frequent_inner_token(endless)
    expected = [r[: r.index(eos) + 1] if eos in r else r for r in endless]  # greedy: EOS only cuts the sequence
    lengths = {len(r) for r in expected}
    assert len(lengths) >= 4 and NEW_TOKENS in lengths  # rows end at different steps, some at the limit
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    for slots in (1, 3, 12):
        generator = ContinuousBatchGenerator(chaotic_model, [eos], pad_id=0, slots=slots)
        finished = []
        assert generator.generate(prompts, settings, on_finished=finished.append) == expected, f"{slots} slots"
        assert sum(finished) == len(prompts)
        assert generator.stats.generated_tokens == sum(len(r) for r in expected)
        # every token but a row's first (from its prefill) took one live slot in one decode step
        assert generator.stats.live_slot_steps == sum(len(r) - 1 for r in expected) <= generator.stats.slot_steps
    single = ContinuousBatchGenerator(chaotic_model, [eos], pad_id=0, slots=1)
    single.generate(prompts, settings)
    assert single.stats.window_shifts >= 1  # twelve rows through one slot fill the buffers: the window slid


def test_sampling_is_seeded_and_a_tiny_nucleus_is_greedy(chaotic_model, prompts):
    generator = ContinuousBatchGenerator(chaotic_model, [10**6], pad_id=0, slots=4)
    greedy = generator.generate(prompts[:6], GenerationSettings(max_new_tokens=12))
    nucleus = generator.generate(prompts[:6], GenerationSettings(max_new_tokens=12, do_sample=True, top_p=1e-6))
    assert nucleus == greedy
    sample = lambda seed: generator.generate(prompts[:6], GenerationSettings(  # noqa: E731
        max_new_tokens=12, do_sample=True, temperature=1.0, seed=seed))
    assert sample(1) == sample(1) and sample(1) != sample(2)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    settings = GenerationSettings(do_sample=True, top_p=0.7)
    draws = torch.stack([choose_tokens(logits, settings, torch.Generator().manual_seed(s)) for s in range(400)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 covers 0.7; tokens 2 and 3 are outside


def test_bad_requests_are_refused(chaotic_model, prompts, monkeypatch):
    generator = ContinuousBatchGenerator(chaotic_model, [10**6], pad_id=0)
    assert generator.generate([], GenerationSettings()) == []
    with pytest.raises(ValueError, match="empty prompt"):
        generator.generate([prompts[0], []], GenerationSettings())
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature > 0"):
        GenerationSettings(do_sample=True, temperature=0.0)
    # A layer that bypasses past_key_values.update would attend to the wrong keys: the generator says so.
    original = SlotKVCache.update

    def update_skipping_layer_1(self, key_states, value_states, layer_idx, cache_kwargs=None):
        result = original(self, key_states, value_states, layer_idx, cache_kwargs)
        self.layers_written -= layer_idx == 1
        return result

    monkeypatch.setattr(SlotKVCache, "update", update_skipping_layer_1)
    with pytest.raises(RuntimeError, match="2 decoder layers but 1 wrote keys and values"):
        generator.generate(prompts[:2], GenerationSettings(max_new_tokens=3))


def test_the_attention_implementation_is_restored(chaotic_model, prompts):
    before = chaotic_model.config._attn_implementation
    generator = ContinuousBatchGenerator(chaotic_model, [10**6], pad_id=0)
    generator.generate(prompts[:2], GenerationSettings(max_new_tokens=2))
    assert chaotic_model.config._attn_implementation == before


class FailingOnSecondChunk:
    """Numbers each prompt's rationale by its length; the second call fails."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, settings, on_finished=None):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("CUDA out of memory")
        return [[len(p), 2] for p in prompts]


class DictCache:
    def __init__(self):
        self.saved = {}

    def get_many(self, texts):
        return {t: self.saved[t] for t in texts if t in self.saved}

    def put_many(self, rationales):
        self.saved.update(rationales)


def test_encoder_generates_in_length_chunks_and_keeps_finished_chunks(tiny_model_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    cache = DictCache()
    encoder = GraceEncoder(model, tokenizer, generator=FailingOnSecondChunk(), rationale_cache=cache)
    monkeypatch.setattr(grace.encoder, "GENERATION_CHUNK", 2)
    texts = ["a", "a much longer text than the others", "mid length text", "b c"]
    with pytest.raises(RuntimeError, match="rationale generation failed for 2 texts"):
        encoder.encode(texts)
    longest = sorted(texts, key=lambda t: -len(encoder.prompt_ids(t)))[:2]
    assert set(cache.saved) == set(longest)  # the first chunk (the two longest prompts) was saved
    encoder.generator = FailingOnSecondChunk()
    encoder.generator.calls = 5  # no further failure
    rationales = encoder.cached_rationale_ids(texts, [encoder.prompt_ids(t) for t in texts], False)
    assert rationales == [[len(encoder.prompt_ids(t)), 2] for t in texts]  # the caller's order


@pytest.mark.slow
def test_packaged_smollm2_rationales_match_one_prompt_at_a_time():
    folder = smollm2_hf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    articles = load_wiki_articles()[1::1500][:6]
    texts = [a["description"] or a["title"] for a in articles[:3]] + [a["extract"] for a in articles[3:]]
    prompts = [chat_prompt_ids(tokenizer, text, 1024) for text in texts]
    eos = model.generation_config.eos_token_id
    expected = one_at_a_time(model, prompts, 48, eos)
    got = ContinuousBatchGenerator(model, eos, tokenizer.pad_token_id, slots=4).generate(
        prompts, GenerationSettings(max_new_tokens=48))
    assert got == expected


def rollout_config(response_length: int, n: int = 1):
    from omegaconf import OmegaConf

    return OmegaConf.create({"response_length": response_length, "n": n, "do_sample": True, "temperature": 1.0,
                             "top_p": 1.0, "top_k": -1, "val_kwargs": {"top_k": -1, "top_p": 1.0,
                                                                      "temperature": 0.0}})


def left_padded_prompts(prompts, pad_id):
    from verl import DataProto

    from grace.verl_ext import cpu_compat

    cpu_compat.apply()  # as in every CPU worker: verl's HF rollout calls torch.cpu.empty_cache

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return DataProto.from_dict({"input_ids": ids, "attention_mask": mask, "position_ids": positions})


def test_verl_hf_rollout_with_continuous_batching_gives_one_prompt_at_a_time_rationales_in_verl_layout(
        chaotic_model, prompts, monkeypatch):
    import contextlib

    from grace.verl_ext.rollout import ContinuousBatchHFRollout

    # a float32 CPU run turns verl's bf16 autocast off (cpu_compat); so does this test, to compare with float32
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())

    endless = one_at_a_time(chaotic_model, prompts, NEW_TOKENS, [10**6])
    eos, pad = frequent_inner_token(endless), 0
    expected = [r[: r.index(eos) + 1] if eos in r else r for r in endless]
    batch = left_padded_prompts(prompts, pad)
    batch.meta_info = {"eos_token_id": eos, "pad_token_id": pad, "do_sample": False}
    out = ContinuousBatchHFRollout(chaotic_model, rollout_config(NEW_TOKENS)).generate_sequences(batch).batch
    width = batch.batch["input_ids"].shape[1]
    assert torch.equal(out["prompts"], batch.batch["input_ids"])
    for i, rationale in enumerate(expected):
        response = out["responses"][i].tolist()
        assert response == rationale + [pad] * (NEW_TOKENS - len(rationale))  # padded to response_length
        valid = out["attention_mask"][i, width:].tolist()
        assert valid == [1] * len(rationale) + [0] * (NEW_TOKENS - len(rationale))  # up to and with the EOS
        prompt_positions = batch.batch["position_ids"][i]
        assert out["position_ids"][i, width:].tolist() == list(range(int(prompt_positions[-1]) + 1,
                                                                     int(prompt_positions[-1]) + NEW_TOKENS + 1))
    assert chaotic_model.training  # left in train mode, as verl's HF rollout leaves it
    chaotic_model.eval()


def test_verl_hf_rollout_with_continuous_batching_samples_n_per_prompt_from_the_seeded_global_rng(
        chaotic_model, prompts):
    from grace.verl_ext.rollout import ContinuousBatchHFRollout, continuous_batching_rollout
    from verl.workers.rollout import HFRollout

    batch = left_padded_prompts(prompts[:4], 0)
    batch.meta_info = {"eos_token_id": 10**6, "pad_token_id": 0}
    rollout = continuous_batching_rollout(HFRollout(chaotic_model, rollout_config(12, n=3)), world_size=1)
    assert isinstance(rollout, ContinuousBatchHFRollout)
    torch.manual_seed(5)
    first = rollout.generate_sequences(batch).batch
    torch.manual_seed(5)
    again = rollout.generate_sequences(batch).batch
    chaotic_model.eval()
    assert first["responses"].shape == (12, 12) and torch.equal(first["responses"], again["responses"])
    assert torch.equal(first["prompts"], batch.batch["input_ids"].repeat_interleave(3, dim=0))
    assert len({tuple(r.tolist()) for r in first["responses"]}) > 4  # sampled: copies of a prompt differ
    assert type(continuous_batching_rollout(HFRollout(chaotic_model, rollout_config(12)), world_size=2)) is HFRollout
