"""`python -m grace.study` end to end on the tiny model: every arm kind, results.json in its schema, finished arms
skipped on a re-run, an interrupted GRACE arm resumed from its checkpoint, a study rebuilt from its archive alone,
a contrastive arm run with two seeds, MTEB-offline tasks from a (tiny) data folder."""

import json
import math

import numpy as np
import pytest
import yaml

from grace.study.__main__ import main as study_main
from tests.mteb_files import tiny_mteb_folder

pytestmark = pytest.mark.slow


def write_config(path, model, grace_steps):
    mteb_folder = tiny_mteb_folder(path.parent / "mteb")
    path.write_text(yaml.safe_dump({
        "name": "tiny", "model": str(model), "compare_to": "base_rationale",
        "data": {"train_triples": 40, "max_chars": 200, "max_prompt": 320, "val_size": 4},
        "evaluation": {"retrieval_queries": 10, "lee_documents": 6, "perplexity_texts": 4, "rationale_length": 4,
                       "batch_size": 8, "bootstrap_resamples": 200, "mteb_folder": str(mteb_folder),
                       "mteb_items": {"STS12": 6, "Banking77Classification": 3}, "generative_items": 4},
        "arms": [{"name": "base_prompt_only", "kind": "base", "rationale": False},
                 {"name": "base_rationale", "kind": "base"},
                 {"name": "base_rationale_response", "kind": "base", "pooling_span": "response"},
                 {"name": "minilm", "kind": "sentence_transformer", "rationale": False},
                 {"name": "contrastive", "kind": "contrastive", "rationale": False, "seeds": [0, 1],
                  "settings": {"examples": 8, "epochs": 1, "lr": 1e-3, "batch_size": 4}},
                 {"name": "grace", "kind": "grace", "pooling_span": "response",
                  "compare_to": ["base_rationale_response", "contrastive"],
                  "settings": {"steps": grace_steps, "val_every": 1, "save_every": 1, "response_length": 8,
                               "lr": 1e-3, "entropy_coeff": 0.001, "kl_coef": 0.01}},
                 # An evaluation lever: grace's trained model, its rationales sampled twice and averaged.
                 {"name": "grace_sampled", "kind": "grace", "pooling_span": "response", "model_from": "grace",
                  "evaluation": {"rationale_temperature": 1.0, "rationale_samples": 2, "rationale_length": 3}}]}))
    return path


def test_study_runs_every_arm_kind_skips_finished_arms_and_resumes(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "study_out"
    config = write_config(tmp_path / "study.yaml", tiny_model_path, grace_steps=2)
    assert study_main([str(config), "--out", str(out)]) == 0
    results = json.loads((out / "tiny/results.json").read_text())
    assert list(results["arms"]) == ["base_prompt_only", "base_rationale", "base_rationale_response", "minilm",
                                     "contrastive", "grace", "grace_sampled"]
    assert results["not_run"] == []
    for name, arm in results["arms"].items():
        assert arm["wall_seconds"] > 0 and (name == "minilm") == ("perplexity" not in arm)
        assert name == "minilm" or math.isfinite(arm["perplexity"])
        generative = {"DescriptionChoice"} if name != "minilm" else set()  # a causal LM's task
        assert set(arm["tasks"]) == {"WikiDescriptionRetrieval", "LeeSTS", "STS12", "Banking77Classification",
                                     "MTEB-offline"} | generative
        for task in arm["tasks"].values():
            assert {"metric", "score", "n"} <= set(task)
            comparison = task.get("vs_base_rationale")
            assert (comparison is None) == (name == "base_rationale")
            if comparison:
                assert comparison["ci_low"] <= comparison["diff"] <= comparison["ci_high"]
    assert results["arms"]["base_prompt_only"]["perplexity"] == results["arms"]["base_rationale"]["perplexity"]
    # The arm's own reference (same pooling span) beside the study's; no other arm is compared with it.
    assert all({"vs_base_rationale", "vs_base_rationale_response", "vs_contrastive"} <= set(task)
               for task in results["arms"]["grace"]["tasks"].values())
    assert not any("vs_base_rationale_response" in task for name, arm in results["arms"].items() if name != "grace"
                   for task in arm["tasks"].values())
    grace = results["arms"]["grace"]
    assert grace["validation_reward"]["steps"] == 3 and grace["validation_reward"]["at_steps"] == [0, 1, 2]
    assert math.isfinite(grace["validation_reward"]["slope"]) and grace["settings"]["pooling_span"] == "response"
    assert grace["kl_to_base"] > 0 and results["arms"]["contrastive"]["kl_to_base"] > 0  # both moved the model
    assert grace["tasks"]["DescriptionChoice"]["vs_best_base"]["arm"] in ("base_prompt_only", "base_rationale",
                                                                          "base_rationale_response")
    assert 0 <= grace["tasks"]["DescriptionChoice"]["score"] <= 100 and grace["tasks"]["DescriptionChoice"]["n"] == 4
    contrastive = results["arms"]["contrastive"]
    assert sorted(contrastive["runs"]) == ["contrastive@seed0", "contrastive@seed1"]
    assert contrastive["tasks"]["STS12"]["score"] == pytest.approx(
        sum(run["tasks"]["STS12"] for run in contrastive["runs"].values()) / 2)
    assert "kl_to_base" not in results["arms"]["base_rationale"]
    # Rationale diversity on every held-out text, for the arms that write a rationale only.
    with_diversity = {name for name, arm in results["arms"].items() if "rationale_diversity" in arm}
    assert with_diversity == {"base_rationale", "base_rationale_response", "grace", "grace_sampled"}
    # Every text the evaluation embeds: each retrieval query, its document and the 6 Lee documents.
    # ... and the MTEB-offline texts: 6 STS12 pairs, Banking77's 12 training texts and 3 test texts
    assert grace["rationale_diversity"]["texts"] == grace["tasks"]["WikiDescriptionRetrieval"]["n"] * 2 + 6 + 27
    assert 0 < grace["rationale_diversity"]["distinct_percent"] <= 100
    assert grace["settings"]["cpu_dtype"] == "auto"
    # The arm's entropy bonus and KL loss reach verl's actor: a reference model runs every step.
    steps = [json.loads(line) for line in (out / "tiny/arms/grace/metrics.jsonl").read_text().splitlines()]
    steps = [step for step in steps if "timing_s/step" in step]
    assert len(steps) == 2 and all("timing_s/ref" in step and math.isfinite(step["actor/kl_loss"]) for step in steps)
    assert all(step["actor/kl_coef"] == 0.01 for step in steps)
    assert grace["settings"]["compute_dtype"].split()[0] in ("float32", "bfloat16")
    # The evaluation lever trained nothing: grace's model and training, its own (sampled, shorter) rationales, so its
    # STS12 cosines are not grace's while the gold scores are the same pairs'.
    lever = results["arms"]["grace_sampled"]
    assert lever["model_from"] == "grace" and lever["settings"] == grace["settings"]
    assert lever["train_seconds"] == grace["train_seconds"] and lever["evaluation"]["rationale_samples"] == 2
    assert not (out / "tiny/arms/grace_sampled/checkpoints").exists() and lever["kl_to_base"] > 0
    sts = [np.load(out / f"tiny/arms/{name}/units.npz")["STS12"] for name in ("grace", "grace_sampled")]
    assert np.array_equal(sts[0][:, 1], sts[1][:, 1]) and not np.allclose(sts[0][:, 0], sts[1][:, 0])
    report = (out / "tiny/report.md").read_text()
    assert "- grace vs base_rationale_response on LeeSTS:" in report
    for section in ("distinct / looping rationales %", "| grace |", "validation_reward.png", "## In words"):
        assert section in report, section
    for plot in ("scores.png", "validation_reward.png", "tradeoff.png"):
        assert (out / "tiny" / plot).exists(), plot

    # Re-run: finished arms are skipped. An interrupted GRACE arm (no result, no merged model) resumes training
    # from its latest checkpoint instead of starting again; the lever on its model, finished, runs again after it.
    grace_dir = out / "tiny/arms/grace"
    (grace_dir / "result.json").unlink()
    for path in sorted((grace_dir / "trained_model").iterdir()):
        path.unlink()
    (grace_dir / "trained_model").rmdir()
    write_config(config, tiny_model_path, grace_steps=3)
    capsys.readouterr()
    assert study_main([str(config), "--out", str(out)]) == 0
    assert "7 arms, 2 to run: grace, grace_sampled" in capsys.readouterr().out
    assert "global_step_2" in (grace_dir / "logs/train.log").read_text().split("Load from checkpoint folder")[-1]
    rerun = json.loads((out / "tiny/results.json").read_text())["arms"]
    resumed = rerun["grace"]
    assert resumed["validation_reward"]["at_steps"] == [0, 1, 2, 3]
    assert len(resumed["training"]["grace/total"]) == 3
    assert rerun["grace_sampled"]["train_seconds"] == resumed["train_seconds"] != grace["train_seconds"]

    # The archive: naming it archives the arms finished so far; a new machine with only the archive (no run folder)
    # runs nothing and rebuilds the same results.
    archive = tmp_path / "archive"
    assert study_main([str(config), "--out", str(out), "--archive", str(archive)]) == 0
    assert sorted(p.name for p in (archive / "grace").iterdir()) == ["metrics.jsonl", "result.json", "units.npz"]
    capsys.readouterr()
    assert study_main([str(config), "--out", str(tmp_path / "new_machine"), "--archive", str(archive)]) == 0
    assert "7 arms, 0 to run" in capsys.readouterr().out
    assert (json.loads((tmp_path / "new_machine/tiny/results.json").read_text())
            == json.loads((out / "tiny/results.json").read_text()))
