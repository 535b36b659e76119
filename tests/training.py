"""Helpers for the end-to-end training tests: tiny data, a composed verl config, checkpoint weights."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from grace.data.assets import load_wiki_articles
from grace.data.demo import wiki_sentences, wiki_triples
from grace.data.records import supervised_record, unsupervised_record


def write_tiny_dataset(folder: Path, mode: str, train_rows: int = 12, test_rows: int = 4, chars: int = 160) -> Path:
    """train/test parquet in the reference's format, real Wikipedia text cut to `chars` characters."""
    folder.mkdir(parents=True, exist_ok=True)
    articles = load_wiki_articles()[:200]
    if mode == "supervised":
        items = wiki_triples(articles, seed=0)
        make = lambda i, split, k: supervised_record(  # noqa: E731
            items[i]["query"], items[i]["positive"][:chars], items[i]["negative"][:chars], "wiki", i, split, k)
    else:
        items = wiki_sentences(articles)
        make = lambda i, split, k: unsupervised_record(items[i][:chars], "wiki", i, split, k)  # noqa: E731
    splits = {"train": range(train_rows), "test": range(train_rows, train_rows + test_rows)}
    for split, rows in splits.items():
        pd.DataFrame([make(i, split, k) for k, i in enumerate(rows)]).to_parquet(folder / f"{split}.parquet")
    return folder


def tiny_overrides(data: Path, model: Path, out: Path, steps: int = 2) -> list[str]:
    """verl overrides for a fast GRPO run on the tiny model: HF rollout, FSDP2, 1 rank, CPU."""
    return [
        "algorithm.adv_estimator=grpo", "algorithm.norm_adv_by_std_in_grpo=False",
        f"data.train_files={data}/train.parquet", f"data.val_files={data}/test.parquet",
        "data.train_batch_size=4", "data.val_batch_size=4", "data.max_prompt_length=256",
        "data.max_response_length=12", "data.filter_overlong_prompts=False", "data.truncation=error",
        f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "trainer.logger=['console']", "trainer.n_gpus_per_node=1", "trainer.nnodes=1",
        f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}", "trainer.test_freq=-1",
        "trainer.val_before_train=False", f"trainer.default_local_dir={out}/checkpoints",
        f"+trainer.metrics_file={out}/metrics.jsonl", f"trainer.rollout_data_dir={out}/rollouts",
        "ray_init.num_cpus=2",
        # verl waits 300 s for the workers to register; on a busy 2-core machine starting them takes longer
        # (the same allowance grace.training_run gives CPU runs)
        "trainer.ray_wait_register_center_timeout=1800",
    ]


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def checkpoint_weights(actor_folder: Path) -> dict[str, torch.Tensor]:
    """The FSDP checkpoint of a 1-rank run as plain tensors."""
    from torch.distributed.tensor import DTensor

    state = torch.load(actor_folder / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    return {k: (v.to_local() if isinstance(v, DTensor) else v).float() for k, v in state.items()}


def unchanged_parameters(model_path: Path, actor_folder: Path) -> list[str]:
    """Names of the initial model's parameters that the checkpoint holds unchanged."""
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    trained = checkpoint_weights(actor_folder)
    assert set(initial) <= set(trained) | {"lm_head.weight"}  # lm_head is tied to the embeddings
    return [name for name in trained if torch.equal(trained[name], initial[name].float())]
