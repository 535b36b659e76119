"""The demo's code path, reduced: tiny model, a few steps, small local tasks (the real run is `make demo`)."""

import json

import pytest

from grace.demo import main as demo_main
from grace.demo import parse_arguments
from grace.verl_ext.cpu_compat import resolve_cpu_dtype

pytestmark = pytest.mark.slow


def test_reduced_demo_writes_report_results_and_plots(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert demo_main(["--out", str(out), "--model", str(tiny_model_path), "--steps", "2", "--eval_size", "6",
                      "--rationale_length", "4", "--response_length", "8", "--max_prompt", "320",
                      "--train_triples", "40", "--val_every", "1", "--val_size", "4"]) == 0
    report = (out / "report.md").read_text()
    for section in ("## Settings", "| preset | quick |", "## Did training help?",
                    "- grace on WikiDescriptionRetrieval: ", "the strongest untrained embedding (base_",
                    "(accuracy@1, paired difference", "n = 6).", "- grace on LeeSTS: ", "held-out perplexity",
                    "nats per token", "| grace | ", "- grace vs base_rationale_response on LeeSTS: ",
                    "## Validation reward", "at 3 points: step 0:", "## Reward over the steps",
                    "Slope of the total reward",
                    f"| compute_dtype | {resolve_cpu_dtype('auto')} (auto: this CPU's fast dtype) |",
                    "group std | flat | entropy",
                    "## The same text, before and after training", "## Wall time", "of which grace: training"):
        assert section in report, section
    steps = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(steps) == 2
    results = json.loads((out / "results.json").read_text())
    # the quick preset pools the rationale alone: the table compares with the base model pooled that way
    assert results["study"] == "demo" and results["compare_to"] == "base_rationale_response"
    assert results["not_run"] == []
    assert list(results["arms"]) == ["base_prompt_only", "base_rationale", "base_rationale_response", "grace"]
    trained = results["arms"]["grace"]
    assert trained["settings"]["steps"] == 2 and trained["validation_reward"]["at_steps"] == [0, 1, 2]
    retrieval = trained["tasks"]["WikiDescriptionRetrieval"]
    same_way = retrieval["vs_base_rationale_response"]
    assert retrieval["n"] == 6 and same_way["ci_low"] <= same_way["diff"] <= same_way["ci_high"]
    best = retrieval["vs_best_base"]
    assert best["arm"] == max(("base_prompt_only", "base_rationale", "base_rationale_response"),
                              key=lambda name: results["arms"][name]["tasks"]["WikiDescriptionRetrieval"]["score"])
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "validation_reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "arms/grace/trained_model/model.safetensors").exists()
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-3:] == [f"report: {out / 'report.md'}", f"results: {out / 'results.json'}",
                            f"reward curve: {out / 'reward_curve.png'}"]
    step_lines = [line.strip() for line in printed if line.strip().startswith("[grace] step ")]
    assert [line.split(" | ")[0] for line in step_lines] == [f"[grace] step {k}/2" for k in range(3)]
    assert "validation reward" in step_lines[0] and "min left" in step_lines[-1] and "flat groups" in step_lines[-1]
    with pytest.raises(SystemExit, match="not empty"):
        demo_main(["--out", str(out), "--model", str(tiny_model_path)])


def test_presets_set_defaults_and_explicit_flags_win():
    quick = parse_arguments([])
    assert (quick.preset, quick.steps, quick.val_every, quick.pooling_span, quick.lr) == ("quick", 20, 5, "response",
                                                                                       1e-5)
    full = parse_arguments(["--preset", "full"])
    assert (full.steps, full.val_every, full.eval_size, full.pooling_span) == (100, 10, 400, "response")
    assert parse_arguments(["--preset", "full", "--steps", "7"]).steps == 7
    with pytest.raises(SystemExit):
        parse_arguments(["--preset", "nope"])
