"""A GRACE training run's parts below the study and the demo: settings as flags, progress lines, the validation
curve, data preparation. Training itself runs end to end in tests/test_study_e2e.py and tests/test_demo.py."""

import argparse

import pandas as pd
import pytest

from grace.training_run import (
    DataConfig,
    TrainingSettings,
    add_flags,
    prepare_data,
    settings_from,
    step_line,
    train_overrides,
    validation_curve,
)


def test_settings_are_flags_with_their_defaults_types_and_choices():
    parser = argparse.ArgumentParser()
    add_flags(parser, TrainingSettings)
    assert settings_from(parser.parse_args([]), TrainingSettings) == TrainingSettings()
    args = parser.parse_args(["--steps", "7", "--lr", "3e-5", "--norm_adv_by_std", "false", "--variant", "infonce"])
    assert settings_from(args, TrainingSettings) == TrainingSettings(steps=7, lr=3e-5, norm_adv_by_std=False,
                                                                     variant="infonce")
    for bad in (["--variant", "nope"], ["--norm_adv_by_std", "yes"], ["--steps", "many"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "GRPO training steps" in parser.format_help()


def test_overrides_carry_every_setting():
    settings = TrainingSettings(steps=9, prompts=6, rollouts=3, lr=3e-5, temperature=0.7, variant="infonce",
                                pooling_span="response", val_every=0, save_every=3, save_minutes=2.5,
                                norm_adv_by_std=False, seed=4, entropy_coeff=0.001, kl_coef=0.01,
                                share_log_prob_forward=False, contrastive_coef=0.5)
    overrides = train_overrides(settings, 256, "DATA", "MODEL", "OUT", "cpu")
    for expected in ("trainer.total_training_steps=9", "data.train_batch_size=6", "actor_rollout_ref.rollout.n=3",
                     "actor_rollout_ref.actor.optim.lr=3e-05", "actor_rollout_ref.rollout.temperature=0.7",
                     "+reward_model.reward_kwargs.variant=infonce", "+reward_model.reward_kwargs.pooling_span=response",
                     "trainer.test_freq=-1", "trainer.val_before_train=False", "trainer.save_freq=3",
                     "+trainer.save_minutes=2.5", "+data.seed=4", "+actor_rollout_ref.rollout.seed=4",
                     "algorithm.norm_adv_by_std_in_grpo=False", "data.max_prompt_length=256",
                     "actor_rollout_ref.actor.ppo_mini_batch_size=3", "ray_init.num_cpus=2",
                     "actor_rollout_ref.actor.entropy_coeff=0.001", "actor_rollout_ref.actor.use_kl_loss=True",
                     "actor_rollout_ref.actor.kl_loss_coef=0.01", "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
                     "+reward_model.reward_kwargs.share_log_prob_forward=False",
                     "+actor_rollout_ref.actor.grace_contrastive_coef=0.5",
                     "trainer.ray_wait_register_center_timeout=1800"):
        assert expected in overrides, expected
    # the defaults add neither loss, so no reference model is built
    defaults = train_overrides(TrainingSettings(), 256, "DATA", "MODEL", "OUT", "cpu")
    assert {"actor_rollout_ref.actor.use_kl_loss=False", "actor_rollout_ref.actor.entropy_coeff=0.0",
            "+reward_model.reward_kwargs.share_log_prob_forward=True",
            "+actor_rollout_ref.actor.grace_contrastive_coef=0.0"} <= set(defaults)


def test_a_study_arm_checkpoints_by_time_unless_it_sets_a_step_interval():
    from grace.study.config import ArmConfig
    from grace.study.runner import GRACE_SAVE_MINUTES, grace_settings

    by_time = grace_settings(ArmConfig(name="grace", kind="grace", settings={"steps": 5}))
    assert (by_time.save_every, by_time.save_minutes) == (1, GRACE_SAVE_MINUTES)
    by_steps = grace_settings(ArmConfig(name="grace", kind="grace", settings={"steps": 5, "save_every": 2}))
    assert (by_steps.save_every, by_steps.save_minutes) == (2, 0)


def test_a_due_checkpoint_is_skipped_only_while_the_last_is_younger_than_the_interval():
    from grace.verl_ext.trainer import checkpoint_skipped

    assert checkpoint_skipped(10, seconds_since_last=599, last_step=False)
    assert not checkpoint_skipped(10, seconds_since_last=600, last_step=False)
    assert not checkpoint_skipped(10, seconds_since_last=5, last_step=True)  # the end always saves
    assert not checkpoint_skipped(0, seconds_since_last=5, last_step=False)  # off: verl's save_freq alone


def test_step_line_and_validation_curve():
    records = [{"step": 0, "val-core/supervised/reward/mean@1": 1.5},
               {"step": 1, "grace/total": 2.0, "grace/positive": 0.5, "grace/group_reward_std": 0.25,
                "grace/group_all_equal": 0.5, "actor/entropy": 3.0, "timing_s/step": 60.0},
               {"step": 2, "grace/total": 2.5, "timing_s/step": 120.0, "val-core/supervised/reward/mean@1": 1.75}]
    assert validation_curve(records) == ([0, 2], [1.5, 1.75])
    line = step_line(records[1], total_steps=4, step_seconds=[60.0, 120.0])
    assert line == ("[train] step 1/4 | reward +2.000 (positive +0.500) | group std 0.250, flat groups 50% | "
                    "entropy 3.00 | 60 s/step, ~4 min left")
    assert "validation reward +1.750" in step_line(records[2], 4, [60.0, 120.0])


@pytest.mark.slow
def test_validation_prompts_are_fixed(tiny_model_path, tmp_path):
    """Two preparations give the same validation prompts, held out of the training split."""
    data = DataConfig(train_triples=30, val_size=5, max_prompt=320)
    first, second = (prepare_data(data, tmp_path / name, tiny_model_path) for name in ("a", "b"))
    validation = pd.read_parquet(first / "test.parquet")
    assert len(validation) == 5 and validation.equals(pd.read_parquet(second / "test.parquet"))
    train_texts = {row["instruction"] for row in pd.read_parquet(first / "train.parquet")["multi_input"]}
    assert not train_texts & {row["instruction"] for row in validation["multi_input"]}
