"""Continuous-batching generation: the same greedy rationales as one prompt at a time, sampling, errors, and the
encoder's chunked use of it (order restored, nothing lost on a failure). The fixtures `chaotic_model` and `prompts`
are in conftest.py."""

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import grace.encoder
import grace.generation
from grace.embedding import embed_sequences
from grace.encoder import GraceEncoder
from grace.generation import (
    ContinuousBatchGenerator,
    GenerationSettings,
    SlotKVCache,
    UnsupportedModelError,
    choose_tokens,
    default_slots,
    grouped_query_sdpa,
)

NEW_TOKENS = 40


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


def test_embeddings_pooled_in_generation_are_those_of_a_forward_over_the_sequence(chaotic_model, prompts):
    endless = one_at_a_time(chaotic_model, prompts, NEW_TOKENS, [10**6])
    eos = frequent_inner_token(endless)
    skip = [(0, 5, len(p))[i % 3] for i, p in enumerate(prompts)]  # none, a prefix, the whole prompt (response)
    for settings in (GenerationSettings(max_new_tokens=NEW_TOKENS),
                     GenerationSettings(max_new_tokens=NEW_TOKENS, do_sample=True, seed=3),
                     GenerationSettings(max_new_tokens=1)):
        for slots in (1, 3, 12):
            generator = ContinuousBatchGenerator(chaotic_model, [eos], pad_id=0, slots=slots)
            rationales, pooled = generator.generate_pooled(prompts, settings, skip)
            if not settings.do_sample:  # the extra step of each row changes nothing of greedy rationales
                assert rationales == generator.generate(prompts, settings), (settings, slots)
            assert {len(r) for r in rationales} >= ({1} if settings.max_new_tokens == 1 else {NEW_TOKENS})
            expected = torch.cat([embed_sequences(chaotic_model, torch.tensor([p + r]), torch.ones(1, len(p + r)),
                                                  prefix_len=k) for p, r, k in zip(prompts, rationales, skip)])
            torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-5, msg=f"{settings}, {slots} slots")
    with pytest.raises(ValueError, match="pool_skip"):
        generator.generate_pooled(prompts[:2], settings, [0, len(prompts[1]) + 1])
    with pytest.raises(ValueError, match="pool_skip"):
        generator.generate_pooled(prompts[:2], settings, [0])


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


def test_top_k_keeps_the_k_most_likely_then_the_nucleus_of_those():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    draws = lambda settings: {int(choose_tokens(logits, settings, torch.Generator().manual_seed(s)))  # noqa: E731
                              for s in range(400)}
    assert draws(GenerationSettings(do_sample=True, top_k=2)) == {0, 1}
    assert draws(GenerationSettings(do_sample=True, top_k=3)) == {0, 1, 2}
    # top-p over the top-3 renormalised (0.44, 0.33, 0.22): 0.7 needs the first two; over all four 0.4 + 0.3 would do
    assert draws(GenerationSettings(do_sample=True, top_k=3, top_p=0.75)) == {0, 1}
    assert draws(GenerationSettings(do_sample=True, top_k=3, top_p=0.8)) == {0, 1, 2}
    # a low temperature sharpens before the cut: only the top token is left inside the nucleus
    assert draws(GenerationSettings(do_sample=True, temperature=0.05, top_p=0.9)) == {0}
    with pytest.raises(ValueError, match="top_k >= 0"):
        GenerationSettings(do_sample=True, top_k=-1)


def test_a_bf16_decode_step_attends_as_float64_does(chaotic_model):
    # 8 query heads reading 2 key/value heads (head h reads h // 4), a window of 37 keys, some masked per row
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 8, 1, 16), torch.randn(3, 2, 37, 16), torch.randn(3, 2, 37, 16)
    mask = torch.rand(3, 1, 1, 37) > 0.3
    mask[..., -1] = True
    expected = torch.zeros(3, 8, 16, dtype=torch.float64)
    for row in range(3):
        for head in range(8):
            keys, values = key[row, head // 4].double(), value[row, head // 4].double()
            scores = keys @ query[row, head, 0].double() / 4
            scores[~mask[row, 0, 0]] = float("-inf")
            expected[row, head] = torch.softmax(scores, 0) @ values

    def attend(dtype, autocast):
        q, k, v = (t.to(dtype) for t in (query, key, value))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return grouped_query_sdpa(chaotic_model, q, k, v, mask)[0][:, 0].double()

    for dtype, autocast in ((torch.bfloat16, False), (torch.float32, True)):  # bf16 weights; verl's autocast
        assert (attend(dtype, autocast) - expected).abs().max() < 0.02  # bf16 inputs: 2^-8 relative rounding
    assert (attend(torch.float32, False) - expected).abs().max() < 1e-5


def test_the_slot_budget_counts_the_dtype_the_buffers_hold_and_the_prefill(chaotic_model, monkeypatch):
    # the tiny Qwen2: 2 layers x 2 key/value heads x head size 16, keys and values: 128 numbers per position
    monkeypatch.setattr(grace.generation, "MEMORY_BUDGET_BYTES", 4 * 128 * (8192 + 5 * 1000))
    assert chaotic_model.dtype == torch.float32
    assert default_slots(chaotic_model, capacity=1000, prefill_tokens=8192) == 5  # float32: exactly 5 fit
    with torch.autocast("cpu", dtype=torch.bfloat16):  # verl's rollouts: float32 parameters, bf16 autocast
        # what the buffers hold: rotated keys in float32, values in bf16
        cache = SlotKVCache(slots=1, capacity=8)
        chaotic_model(input_ids=torch.tensor([[1, 2, 3]]), past_key_values=cache, use_cache=True)
        assert {cache.key_buffers[0].dtype, cache.value_buffers[0].dtype} == {torch.float32, torch.bfloat16}
        assert cache.key_buffers[0].dtype == torch.float32
        assert default_slots(chaotic_model, capacity=1000, prefill_tokens=8192) == (
            (4 * 128 * 13192 - 3 * 128 * 8192) // (3 * 128 * 1000))  # 9: 6 bytes a key and value, less the prefill
    monkeypatch.setattr(grace.generation, "MEMORY_BUDGET_BYTES", 4 * 128 * 8192)  # the prefill takes it all
    assert default_slots(chaotic_model, capacity=1000, prefill_tokens=8192) == 1


def family_model(family: str, vocab_size: int, **overrides):
    """A 2-layer random model of `family` whose greedy outputs depend on every position: large weights, but for Gemma 3,
    whose scaled embeddings then saturate to one token."""
    from transformers import Gemma2Config, Gemma3TextConfig, GptOssConfig, MistralConfig, Phi3Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.3,
                  pad_token_id=0)
    configs = {"gemma2": lambda: Gemma2Config(**common, head_dim=16),
               "gemma3": lambda: Gemma3TextConfig(**{**common, "initializer_range": 0.02}, head_dim=16),
               "mistral": lambda: MistralConfig(**common), "phi3": lambda: Phi3Config(**common),
               "gpt_oss": lambda: GptOssConfig(**common, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                               rope_scaling=None)}
    config = configs[family]()
    for name, value in overrides.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family, overrides, reason", [
    ("gemma2", {}, "caps its attention logits"),
    ("gpt_oss", {}, "attends with learned sinks"),
    ("mistral", {"sliding_window": 24}, "sliding window of 24 tokens"),  # Mistral 0.1: 4096
    ("phi3", {"sliding_window": 24}, "sliding window of 24 tokens"),  # Phi-3-mini-4k: 2047
    ("gemma3", {"sliding_window": 24}, "sliding window of 24 tokens"),
])
def test_models_the_generator_would_get_wrong_are_refused_by_name(family, overrides, reason, prompts,
                                                                  tiny_model_path, monkeypatch):
    model = family_model(family, len(AutoTokenizer.from_pretrained(tiny_model_path)), **overrides)
    generator = ContinuousBatchGenerator(model, [10**6], pad_id=0, slots=2)
    with pytest.raises(UnsupportedModelError, match=rf"\({model.config.model_type}\) .*{reason}.*backend='vllm'"):
        generator.generate(prompts[:3], GenerationSettings(max_new_tokens=8))
    # the model-level check is what stands between the user and wrong rationales: past it, the attention guard
    # sees what SDPA would drop
    monkeypatch.setattr(grace.generation, "unsupported_attention", lambda model, span: None)
    with pytest.raises(UnsupportedModelError, match="its attention needs"):
        generator.generate(prompts[:3], GenerationSettings(max_new_tokens=8))


@pytest.mark.parametrize("family", ["mistral", "phi3", "gemma3"])
def test_a_sliding_window_that_cannot_bind_gives_the_rationales_of_one_prompt_at_a_time(family, prompts,
                                                                                          tiny_model_path):
    span = max(map(len, prompts[:6])) + 12
    model = family_model(family, len(AutoTokenizer.from_pretrained(tiny_model_path)), sliding_window=span)
    expected = one_at_a_time(model, prompts[:6], 12, [10**6])
    assert len({tuple(r) for r in expected}) == 6  # the outputs depend on the text
    got = ContinuousBatchGenerator(model, [10**6], pad_id=0, slots=3).generate(
        prompts[:6], GenerationSettings(max_new_tokens=12))
    assert got == expected
