"""The demo's code path, reduced: tiny model, a few steps, small local tasks (the real run is `make demo`)."""

import math

import pytest
from scipy.stats import linregress
from transformers import AutoModelForCausalLM, AutoTokenizer

from grace.data.assets import smollm2_hf_folder
from grace.demo import main as demo_main
from grace.demo import reward_trend, trend_verdict
from grace.prompts import chat_prompt_ids

pytestmark = pytest.mark.slow


def test_reduced_demo_writes_report_and_plot(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert demo_main(["--out", str(out), "--model", str(tiny_model_path), "--steps", "3", "--eval_size", "6",
                      "--rationale_length", "4", "--response_length", "8", "--max_prompt", "320",
                      "--train_triples", "40"]) == 0
    report = (out / "report.md").read_text()
    for section in ("## Settings", "## Reward over the steps", "Slope of the total reward",
                    "## Local evaluation", "| base, prompt only | base, with rationale | trained, with rationale |",
                    "accuracy@1", "## The same text, before and after training", "## Wall time"):
        assert section in report
    steps = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(steps) == 2
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "trained_model/model.safetensors").exists()
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2:] == [f"report: {out / 'report.md'}", f"reward curve: {out / 'reward_curve.png'}"]
    with pytest.raises(SystemExit, match="not empty"):
        demo_main(["--out", str(out), "--model", str(tiny_model_path)])


def test_reward_trend_against_known_lines():
    slope, error = reward_trend([1.0, 2.0, 3.0, 4.0])
    assert slope == pytest.approx(1.0) and error == pytest.approx(0.0)
    assert "rose" in trend_verdict(slope, 0.1)
    values = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 2.0, 0.5]
    slope, error = reward_trend(values)
    expected = linregress(range(1, len(values) + 1), values)  # an independent least-squares fit
    assert slope == pytest.approx(expected.slope) and error == pytest.approx(expected.stderr)
    assert "no clear trend" in trend_verdict(slope, error)
    assert "fell" in trend_verdict(-1.0, 0.1)
    assert math.isnan(reward_trend([1.0, 2.0])[0])


def test_packaged_smollm2_converts_to_a_working_chat_model(tmp_path):
    folder = smollm2_hf_folder(tmp_path / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("Hello")["input_ids"] == tokenizer("Hello", add_special_tokens=False)["input_ids"]  # no BOS
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.generation_config.eos_token_id == [2, 0]
    ids = chat_prompt_ids(tokenizer, "What is the capital of France? Answer in one word.", system_prompt="")
    import torch

    output = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, len(ids):])
    assert smollm2_hf_folder(folder) == folder  # cached: a second call converts nothing
