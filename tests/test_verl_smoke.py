"""verl 0.4.1's real GRPO trainer runs on the CPU (HF rollout, FSDP2 on gloo, one rank) with a trivial reward."""

from pathlib import Path

import pytest

from grace.train import run_grace
from tests.training import compose_config, read_metrics, tiny_overrides, unchanged_parameters, write_tiny_dataset

pytestmark = pytest.mark.slow


def test_grpo_two_steps_with_trivial_reward(tiny_model_path, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", "unsupervised", train_rows=8)
    overrides = tiny_overrides(data, tiny_model_path, tmp_path) + [
        "reward_model.reward_manager=naive",
        f"custom_reward_function.path={Path(__file__).parent / 'trivial_reward.py'}",
        "custom_reward_function.name=compute_score",
        "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.01",  # builds a ref model
    ]
    run_grace(compose_config(overrides))

    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    for step in metrics:
        assert {"actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "critic/score/mean", "timing_s/ref"} <= set(step)
    assert any(m["actor/grad_norm"] > 0 for m in metrics)
    assert unchanged_parameters(tiny_model_path, tmp_path / "checkpoints/global_step_2/actor") == []
