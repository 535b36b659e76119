"""GRACE training through verl 0.4.1 on the CPU: tiny model, real Wikipedia text, the `hidden` reward."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grace.train import run_grace
from tests.training import (
    checkpoint_weights,
    compose_config,
    read_metrics,
    tiny_overrides,
    unchanged_parameters,
    write_tiny_dataset,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

GRACE_OVERRIDES = [
    "reward_model.reward_manager=hidden",
    "+reward_model.reward_kwargs.temperature=0.1",
    # The random tiny model never emits EOS, so the length penalty would give every rollout -1 (no signal).
    "+reward_model.reward_kwargs.enable_length_penalty=False",
    "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0",  # as the reference
]


def rollout_rows(rollout_file: Path) -> list[dict]:
    with open(rollout_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def user_texts(rollout_file: Path) -> set[str]:
    return {row["input"].split("\nuser\n", 1)[1].rsplit("\nassistant", 1)[0] for row in rollout_rows(rollout_file)}


def check_merged_checkpoint(model_path: Path, checkpoint_root: Path, target: Path):
    """scripts/merge_model.py on the checkpoint root: the merged folder loads with transformers and gives the
    logits of the trained weights (as saved by the merger, in bf16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = subprocess.run([sys.executable, str(ROOT / "scripts/merge_model.py"), "merge", "--backend", "fsdp",
                           "--local_dir", str(checkpoint_root), "--target_dir", str(target)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"merged {checkpoint_root}/global_step_2/actor" in done.stdout
    merged = AutoModelForCausalLM.from_pretrained(target, torch_dtype=torch.float32)
    trained = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    weights = checkpoint_weights(checkpoint_root / "global_step_2/actor")
    trained.load_state_dict({k: v.bfloat16().float() for k, v in weights.items()}, strict=False)
    trained.tie_weights()
    ids = AutoTokenizer.from_pretrained(target)("Paris is the capital of France.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained(ids).logits, rtol=0, atol=0)
    assert merged.generation_config.eos_token_id == trained.generation_config.eos_token_id


def check_eval_sh(model_path: Path, checkpoint_root: Path, out: Path):
    """eval.sh merges the latest checkpoint, evaluates once and writes a per-task timing log."""
    env = dict(os.environ, PYTHON=sys.executable, CHECKPOINT_DIR=str(checkpoint_root), BASE_MODEL=str(model_path),
               MERGED_DIR=str(out / "merged"), OUTPUT_DIR=str(out / "results"), TASKS="LeeSTS WikiDescriptionRetrieval",
               THINKING_MAX_LENGTH="4", BATCH_SIZE="4", EVAL_ARGS="--local_size 6")
    done = subprocess.run(["bash", str(ROOT / "eval.sh")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    log = next((out / "results").glob("timing_results_*.txt")).read_text()
    assert "Task Timing Report" in log and "model: GRACE/GRACE-1.5B" in log
    assert [line.split()[0] for line in log.splitlines()[4:]] == ["LeeSTS", "WikiDescriptionRetrieval"]
    assert (out / "merged/model.safetensors").exists()


def components(mode):
    names = ["total", "positive", "clustering", "cross_group", "length_penalized", "group_reward_std",
             "group_all_equal"]
    return {f"grace/{n}" for n in names + (["negative"] if mode == "supervised" else [])}


def test_supervised_training_checkpoint_and_resume(tiny_model_path, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", "supervised", train_rows=12)
    # a checkpoint is due every step, but one younger than an hour is skipped: only the last step's is written
    run_grace(compose_config(tiny_overrides(data, tiny_model_path, tmp_path, steps=2) + GRACE_OVERRIDES
                             + ["+data.train_mode=supervised", "trainer.save_freq=1", "+trainer.save_minutes=60"]))

    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    for step in metrics:
        assert components("supervised") <= set(step)
        assert all(math.isfinite(step[name]) for name in components("supervised"))
        assert "timing_s/ref" not in step  # kl_loss_coef=0: no reference policy
        assert 0 <= step["grace/group_all_equal"] <= 1 and step["grace/group_reward_std"] >= 0
        assert step["actor/entropy"] > 0 and step["response_length/mean"] > 0
        # whole-batch means, the same rows as verl's score (no length penalty here)
        assert step["grace/total"] == pytest.approx(step["critic/score/mean"], abs=1e-5)
    assert any(m["actor/grad_norm"] > 0 for m in metrics)
    actor = tmp_path / "checkpoints/global_step_2/actor"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("global_step_*")) == ["global_step_2"]
    assert (tmp_path / "checkpoints/global_step_2/data.pt").exists()
    assert unchanged_parameters(tiny_model_path, actor) == []
    check_merged_checkpoint(tiny_model_path, tmp_path / "checkpoints", tmp_path / "merged")
    check_eval_sh(tiny_model_path, tmp_path / "checkpoints", tmp_path / "eval")

    # Neither a checkpoint nor the shared forward changes results: saving after every step, with the rollouts'
    # embeddings and the old log-probs from two forwards (as before the reward shared verl's), gives the same
    # rollouts, rewards (to float32 rounding of components near 9, from the last bits of the pooled embeddings) and
    # entropies (verl's own forward either way).
    saving = tmp_path / "saving"
    run_grace(compose_config(tiny_overrides(data, tiny_model_path, saving, steps=2) + GRACE_OVERRIDES
                             + ["+data.train_mode=supervised", "trainer.save_freq=1",
                                "+reward_model.reward_kwargs.share_log_prob_forward=False"]))
    assert sorted(p.name for p in (saving / "checkpoints").glob("global_step_*")) == ["global_step_1",
                                                                                      "global_step_2"]
    for name in ("1.jsonl", "2.jsonl"):
        shared_rows, separate_rows = (rollout_rows(folder / "rollouts" / name) for folder in (tmp_path, saving))
        assert [(r["input"], r["output"]) for r in shared_rows] == [(r["input"], r["output"]) for r in separate_rows]
        assert [r["score"] for r in shared_rows] == pytest.approx([r["score"] for r in separate_rows], abs=1e-4)
    two_forwards = read_metrics(saving)
    assert [m["grace/work/log_prob_tokens"] for m in two_forwards] == [0, 0]
    assert all(m["grace/work/log_prob_tokens"] > 0 for m in metrics)
    for shared, separate in zip(metrics, two_forwards):
        assert shared["grace/total"] == pytest.approx(separate["grace/total"], abs=1e-4)
        assert shared["actor/entropy"] == pytest.approx(separate["actor/entropy"], rel=1e-6)

    # Resume: the next run continues at step 3 with the rows that steps 1 and 2 did not use.
    run_grace(compose_config(tiny_overrides(data, tiny_model_path, tmp_path, steps=3) + GRACE_OVERRIDES
                             + ["trainer.resume_mode=auto"]))
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]
    rollouts = tmp_path / "rollouts"
    seen = user_texts(rollouts / "1.jsonl") | user_texts(rollouts / "2.jsonl")
    third = user_texts(rollouts / "3.jsonl")
    assert len(seen) == 8 and len(third) == 4 and not seen & third


def test_unsupervised_training_with_a_kl_loss(tiny_model_path, tmp_path):
    """Also verl's reference policy: a KL loss with a non-zero coefficient builds it and runs it every step; and the
    auxiliary contrastive loss on the rollouts (its targets: the anchors, no negatives in unsupervised mode)."""
    data = write_tiny_dataset(tmp_path / "data", "unsupervised", train_rows=8)
    run_grace(compose_config(tiny_overrides(data, tiny_model_path, tmp_path, steps=2) + GRACE_OVERRIDES
                             + ["+data.train_mode=unsupervised", "trainer.test_freq=2",
                                "actor_rollout_ref.actor.kl_loss_coef=0.01",
                                "+actor_rollout_ref.actor.grace_contrastive_coef=0.5"]))
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    for step in metrics:
        assert components("unsupervised") <= set(step) and "grace/negative" not in step
        assert all(math.isfinite(step[name]) for name in components("unsupervised"))
        assert {"actor/kl_loss", "timing_s/ref"} <= set(step) and math.isfinite(step["actor/kl_loss"])
        assert step["grace/contrastive_loss"] > 0 and math.isfinite(step["grace/contrastive_loss"])
    assert any(m["actor/grad_norm"] > 0 for m in metrics)
    assert "val-aux/unsupervised/grace/positive/mean@1" in metrics[-1]  # validation uses the same reward
    assert math.isfinite(metrics[-1]["val-core/unsupervised/reward/mean@1"])
    assert unchanged_parameters(tiny_model_path, tmp_path / "checkpoints/global_step_2/actor") == []


@pytest.mark.parametrize("script, mode", [("train.sh", "supervised"), ("train_unsupervised.sh", "unsupervised")])
def test_reference_train_sh_overrides_are_accepted(script, mode):
    """Hydra composes the reference's full override list (GPU settings included) and starts nothing."""
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / script), "--cfg", "job"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    for line in ["reward_manager: hidden", f"train_mode: {mode}", "n_gpus_per_node: 4", "temperature: 0.1",
                 "cross_group_weight: 0.2", "train_batch_size: 64", "max_response_length: 2048", "lr: 1.0e-06"]:
        assert line in done.stdout
    assert f"data/{mode}_filtered_overlong/train.parquet" in done.stdout


def greedy_rollouts_one_prompt_at_a_time(config, model_path: Path) -> dict[str, str]:
    """{prompt text: response text} as verl's rollout file writes them (special tokens skipped), for every training
    prompt of GRACE's dataset, generated greedily one prompt at a time by `generate` (positions from the mask)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace.verl_ext.dataset import GraceRLDataset
    from tests.test_generation import one_at_a_time

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    dataset = GraceRLDataset(config.data.train_files, tokenizer, config.data)
    eos = model.generation_config.eos_token_id
    expected = {}
    for row in dataset:
        prompt = row["input_ids"][row["attention_mask"].bool()].tolist()
        (response,) = one_at_a_time(model, [prompt], config.data.max_response_length, eos)
        expected[tokenizer.decode(prompt, skip_special_tokens=True)] = tokenizer.decode(response,
                                                                                        skip_special_tokens=True)
    return expected


def test_two_ranks_give_the_rollouts_of_one_prompt_at_a_time(chaotic_model_path, tmp_path):
    """verl's real data flow over 2 FSDP2 ranks (gloo), `model.generate` on each rank: greedy rollouts equal to one
    prompt at a time (the model's outputs depend on every position, so frozen positions would show), and the logged
    grace/total is the whole batch's mean (verl's score mean), not one rank's. That the rewards do not depend on the
    world size is tests/test_world_sizes.py's, through verl's own dispatch and collect."""
    data = write_tiny_dataset(tmp_path / "data", "supervised", train_rows=8)
    config = compose_config(tiny_overrides(data, chaotic_model_path, tmp_path, steps=1) + GRACE_OVERRIDES + [
        "+data.train_mode=supervised", "trainer.n_gpus_per_node=2", "trainer.save_freq=-1",
        "ray_init.num_cpus=3",  # Ray's logical CPUs: the task runner and one per rank
        "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.rollout.do_sample=False",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=False",  # HF rollout under FSDP2, 2 ranks
        "+reward_model.reward_kwargs.rationale_temperature=0", "+trainer.cpu_dtype=float32"])
    expected = greedy_rollouts_one_prompt_at_a_time(config, chaotic_model_path)
    assert len(set(expected.values())) == len(expected) == 8  # each prompt its own response: the model sees context
    run_grace(config)
    (step,) = read_metrics(tmp_path)
    assert step["grace/total"] == pytest.approx(step["critic/score/mean"], abs=1e-5)
    with open(tmp_path / "rollouts/1.jsonl", encoding="utf-8") as f:
        rollouts = [json.loads(line) for line in f]
    assert len(rollouts) == 4 and all(row["output"] == expected[row["input"]] for row in rollouts)
