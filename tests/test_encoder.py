"""GraceEncoder and grace-embed on the tiny model: pooling, equality with training, batch invariance, errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from transformers import AutoModelForCausalLM

from grace.embedding import position_ids_from_mask
from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder
from grace.pooling import pool_hidden_states
from grace.verl_ext.worker import pooled_embeddings_in_token_budget

TEXTS = ["Paris is the capital of France.", "Cats are small carnivorous mammals.", "",
         "The Nile is a major north-flowing river in Africa.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def encoder(tiny_model_path):
    settings = EncoderSettings(max_input_length=160, generation=GenerationSettings(max_new_tokens=10))
    return GraceEncoder.from_pretrained(tiny_model_path, device="cpu", settings=settings)


class CountingGenerator:
    """Returns fixed rationales (ending in EOS) and records how many prompts it was asked for."""

    def __init__(self, eos_id, fail=False):
        self.eos_id, self.fail, self.prompts_seen = eos_id, fail, 0

    def generate(self, prompts, settings, on_finished=None):
        if self.fail:
            raise RuntimeError("CUDA error: device-side assert")
        self.prompts_seen += len(prompts)
        return [[40 + len(p) % 7, 50, self.eos_id] for p in prompts]


def test_pooling_matches_grace_pooling_on_the_same_tokens(encoder):
    prompt = encoder.prompt_ids(TEXTS[0])
    sequence = prompt + [40, 41, 42, encoder.eos_ids[0]]
    got = encoder.embed_token_sequences([sequence])
    with torch.no_grad():
        hidden = encoder.model(torch.tensor([sequence]), output_hidden_states=True).hidden_states[-1]
    expected = pool_hidden_states(hidden, torch.ones(1, len(sequence)), prefix_len=encoder.prefix_len)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_response_pooling_span_pools_the_rationale_alone(tiny_model_path):
    settings = EncoderSettings(pooling_span="response", generation=GenerationSettings(max_new_tokens=5))
    encoder = GraceEncoder.from_pretrained(tiny_model_path, backend="hf", device="cpu", settings=settings)
    embeddings, _ = encoder.encode(TEXTS[:2], return_rationales=True)
    for row, text in enumerate(TEXTS[:2]):
        prompt = encoder.prompt_ids(text)
        rationale = encoder.generate_rationale_ids([prompt])[0]
        with torch.no_grad():
            hidden = encoder.model(torch.tensor([prompt + rationale]), output_hidden_states=True).hidden_states[-1]
        expected = torch.nn.functional.normalize(hidden[0, len(prompt):].mean(0), dim=0)
        np.testing.assert_allclose(embeddings[row], expected.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs rationale=True"):
        encoder.encode(TEXTS[:1], rationale=False)
    with pytest.raises(ValueError, match="pooling_span must be one of"):
        EncoderSettings(pooling_span="prompt")


def test_encoder_embeds_exactly_as_the_training_worker(encoder):
    """The same prompt + response, laid out as verl does (left-padded prompt, right-padded response)."""
    prompts = [encoder.prompt_ids(t) for t in TEXTS[:3]]
    responses = [[40, 41, encoder.eos_ids[0]], [42] * 6, [encoder.eos_ids[0]]]
    prompt_width, response_width = 160, 8
    pad = encoder.tokenizer.pad_token_id
    rows = [[pad] * (prompt_width - len(p)) + p + r + [pad] * (response_width - len(r))
            for p, r in zip(prompts, responses)]
    mask = torch.tensor([[0] * (prompt_width - len(p)) + [1] * (len(p) + len(r)) + [0] * (response_width - len(r))
                         for p, r in zip(prompts, responses)])
    batch = TensorDict({"input_ids": torch.tensor(rows), "attention_mask": mask,
                        "position_ids": position_ids_from_mask(mask),
                        "pool_skip": torch.full((3,), encoder.prefix_len)},
                       batch_size=3)
    worker = pooled_embeddings_in_token_budget(encoder.model, batch, max_token_len=400)
    direct = encoder.embed_token_sequences([p + r for p, r in zip(prompts, responses)], batch_size=2)
    np.testing.assert_allclose(direct, worker.numpy(), rtol=1e-5, atol=1e-5)


def test_encode_is_deterministic_and_independent_of_batch_composition(encoder):
    together, rationales = encoder.encode(TEXTS, batch_size=3, return_rationales=True)
    alone = np.stack([encoder.encode([text], batch_size=1)[0] for text in TEXTS])
    assert together.dtype == np.float32 and together.shape == (5, encoder.model.config.hidden_size)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    assert rationales[0] == rationales[4] and len(rationales) == 5
    np.testing.assert_array_equal(encoder.encode(TEXTS, batch_size=3), together)


def test_generated_rationales_are_pooled_in_generation_and_cached_ones_by_a_forward(tiny_model_path, tmp_path,
                                                                                     monkeypatch):
    from grace.evaluation.rationale_cache import RationaleCache

    settings = EncoderSettings(max_input_length=160, generation=GenerationSettings(max_new_tokens=10))
    encoder = GraceEncoder.from_pretrained(tiny_model_path, backend="hf", device="cpu", settings=settings)
    encoder.rationale_cache = RationaleCache(tmp_path / "rationales.sqlite", "test")
    forwarded, forward = [], encoder.embed_token_sequences
    monkeypatch.setattr(encoder, "embed_token_sequences",
                        lambda sequences, *args: forwarded.append(len(sequences)) or forward(sequences, *args))
    generated, rationales = encoder.encode(TEXTS, return_rationales=True)
    assert forwarded == [0]  # every rationale was generated here: pooled in its generation
    from_cache, cached_rationales = encoder.encode(TEXTS, return_rationales=True)
    assert forwarded == [0, len(set(TEXTS))] and cached_rationales == rationales
    np.testing.assert_allclose(from_cache, generated, rtol=1e-5, atol=1e-6)


def test_identical_texts_are_generated_once(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    generator = CountingGenerator(tokenizer.eos_token_id)
    encoder = GraceEncoder(model, tokenizer, generator=generator)
    forwarded, forward = [], encoder.embed_token_sequences
    encoder.embed_token_sequences = lambda sequences, *args: (forwarded.append(len(sequences))
                                                              or forward(sequences, *args))
    embeddings = encoder.encode(TEXTS + TEXTS)
    assert generator.prompts_seen == 4
    assert forwarded == [4]  # a generator that cannot pool (vLLM's interface): its rationales are forwarded
    np.testing.assert_array_equal(embeddings[0], embeddings[4])


def test_direct_forward_embeds_the_prompt_alone(encoder):
    direct = encoder.encode(TEXTS[:2], rationale=False)
    np.testing.assert_allclose(direct, encoder.embed_token_sequences([encoder.prompt_ids(t) for t in TEXTS[:2]]),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(direct, encoder.encode(TEXTS[:2]))


def test_long_input_keeps_the_chat_template(encoder):
    ids = encoder.prompt_ids("word " * 500)
    assert len(ids) == 160
    assert encoder.tokenizer.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_bad_input_and_failures_are_clear(tiny_model_path, encoder):
    assert encoder.encode([]).shape == (0, encoder.model.config.hidden_size)
    with pytest.raises(TypeError, match="text 1 is int"):
        encoder.encode(["fine", 3])
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode("a single string")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        GraceEncoder.from_pretrained("/no/such/model")
    failing = GraceEncoder(encoder.model, encoder.tokenizer, generator=CountingGenerator(0, fail=True))
    with pytest.raises(RuntimeError, match="rationale generation failed for 2 texts .*: CUDA error"):
        failing.encode(["a", "b"])


def test_grace_embed_prints_rationales_and_similarities(tiny_model_path):
    command = Path(sys.executable).with_name("grace-embed")
    done = subprocess.run([str(command), "--model", str(tiny_model_path), "--max_new_tokens", "6",
                           "The cat sat on the mat.", "A dog barked."], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[1] The cat sat on the mat." in done.stdout and "rationale:" in done.stdout
    matrix = done.stdout.split("cosine similarity")[1].strip().splitlines()[1:]
    values = [[float(v) for v in line.split()[1:]] for line in matrix]
    assert values[0][0] == pytest.approx(1.0, abs=1e-3) and values[0][1] == pytest.approx(values[1][0])


def test_grace_encoder_is_importable_from_the_package_without_loading_it_eagerly():
    import grace

    assert grace.GraceEncoder is GraceEncoder
    with pytest.raises(AttributeError, match="no attribute 'Encoder'"):
        grace.Encoder  # noqa: B018
    light = "import sys, grace, grace.pooling, grace.reward; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, check=True).stdout == "False\n"


def test_k_sampled_rationales_average_into_one_embedding(tiny_model_path, tmp_path):
    """With rationale_samples k, a text's embedding is the normalised mean of the k embeddings that one-sample
    encoders seeded seed, seed + 1, ... give; the first sample is the one-sample encoder's rationale, and a cache
    filled by the k-sample encoder serves the one-sample encoder without generating."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    from transformers import AutoTokenizer

    from grace.evaluation.rationale_cache import RationaleCache

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def sampling_encoder(seed, samples=1, cache=None):
        generation = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.0, seed=seed)
        settings = EncoderSettings(max_input_length=160, generation=generation, rationale_samples=samples)
        return GraceEncoder(model, tokenizer, settings, rationale_cache=cache)

    texts = TEXTS[:4]
    singles = [sampling_encoder(seed).encode(texts, return_rationales=True) for seed in (3, 4, 5)]
    assert singles[0][1] != singles[1][1]  # the samples differ, so the mean is not one of them
    mean = sum(embeddings for embeddings, _ in singles)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    cache = RationaleCache(tmp_path / "rationales.sqlite", "test")
    averaged, rationales = sampling_encoder(3, samples=3, cache=cache).encode(texts, return_rationales=True)
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)
    assert rationales == singles[0][1]
    np.testing.assert_allclose(np.linalg.norm(averaged, axis=1), 1.0, rtol=1e-5)

    single_from_cache = sampling_encoder(3, cache=cache)
    single_from_cache.generator = CountingGenerator(tokenizer.eos_token_id)
    np.testing.assert_allclose(single_from_cache.encode(texts), singles[0][0], rtol=1e-6, atol=1e-6)
    assert single_from_cache.generator.prompts_seen == 0

    with pytest.raises(ValueError, match="rationale_samples=2 averages sampled rationales"):
        EncoderSettings(rationale_samples=2)
    with pytest.raises(ValueError, match="at least 1"):
        EncoderSettings(rationale_samples=0)
