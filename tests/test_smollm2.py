"""The packaged SmolLM2-135M-Instruct, the demo's policy: its conversion from GGUF gives a working chat model, and the
continuous-batching generator gives it the rationales of one prompt at a time. One file, so that `pytest -n`
converts it once (the `smollm2_path` fixture)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grace.data.assets import load_wiki_articles, smollm2_hf_folder
from grace.generation import ContinuousBatchGenerator, GenerationSettings
from grace.prompts import chat_prompt_ids
from tests.test_generation import one_at_a_time

pytestmark = pytest.mark.slow


def test_packaged_smollm2_converts_to_a_working_chat_model(smollm2_path):
    folder = smollm2_path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("Hello")["input_ids"] == tokenizer("Hello", add_special_tokens=False)["input_ids"]  # no BOS
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.generation_config.eos_token_id == [2, 0]
    ids = chat_prompt_ids(tokenizer, "What is the capital of France? Answer in one word.", system_prompt="")
    output = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, len(ids):])
    assert smollm2_hf_folder(folder) == folder  # cached: a second call converts nothing


def test_packaged_smollm2_rationales_match_one_prompt_at_a_time(smollm2_path):
    folder = smollm2_path
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    articles = load_wiki_articles()[1::1500][:5]
    texts = [a["description"] or a["title"] for a in articles[:2]] + [a["extract"] for a in articles[2:]]
    prompts = [chat_prompt_ids(tokenizer, text, 1024) for text in texts]
    eos = model.generation_config.eos_token_id
    expected = one_at_a_time(model, prompts, 32, eos)
    got = ContinuousBatchGenerator(model, eos, tokenizer.pad_token_id, slots=3).generate(  # slots refilled
        prompts, GenerationSettings(max_new_tokens=32))
    assert got == expected
