"""One GRPO-RM (or CE, or frozen) run: data and fixed splits -> policy -> training -> evaluation -> files.

Writes into its output folder `metrics.jsonl` (a record per step, `eval_*` values on evaluation steps),
`result.json` (settings, per-step seconds, dev and test scores, per-class test accuracies, and as asked: scores on
the shifted test set, test scores at earlier steps; written last, so it marks the run as done) and, with
`save_encoder`, `encoder/` (a sentence-transformers folder for text encoders).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from grace.grpo_rm.data import LabelledData, Splits, load_labelled, split
from grace.grpo_rm.evaluate import (
    accuracies,
    embed,
    embed_and_classify,
    per_class_accuracy,
    representation_predictions,
    representation_scores,
)
from grace.grpo_rm.loop import TrainConfig, train
from grace.grpo_rm.policy import build_policy


@dataclass
class RunSettings:
    data: str = "wiki-topics"
    encoder: str = "minilm"  # `minilm`, `digits-cnn` or a folder
    head: str = "linear"
    temperature: float = 0.05
    max_length: int = 64
    dev_per_class: int = 20
    test_per_class: int = 50
    train_per_class: int | None = None
    split_seed: int = 0
    ood_data: str | None = None  # another labelled corpus for the out-of-distribution probe
    ood_test_per_class: int = 40
    imbalance: float = 1.0  # > 1: a long-tailed training split with this ratio (`data.long_tailed`)
    shift_data: str | None = None  # the data's items in another text domain: the same-label shifted test set
    score_at: tuple[int, ...] = ()  # earlier steps (multiples of evaluate_every) at which the test is scored too
    knn_k: int = 20
    evaluate_every: int = 25
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def load_splits(settings: RunSettings) -> Splits:
    shifted = load_labelled(settings.shift_data) if settings.shift_data else None
    return split(load_labelled(settings.data), settings.dev_per_class, settings.test_per_class,
                 settings.train_per_class, settings.split_seed, settings.imbalance, shifted)


def _predictions(policy, train_embeddings: np.ndarray, train_labels: np.ndarray, test_data: LabelledData, k: int,
                 with_head: bool) -> dict[str, np.ndarray]:
    test_embeddings, head = embed_and_classify(policy, test_data)
    predictions = representation_predictions(train_embeddings, train_labels, test_embeddings, k)
    return {"head": head, **predictions} if with_head else predictions


def _test_scores(policy, splits: Splits, k: int, with_head: bool, train_embeddings: np.ndarray | None = None
                 ) -> dict:
    """{"test": accuracies, "test_per_class": per-class accuracies, "shift": accuracies on the shifted test set}."""
    if train_embeddings is None:
        train_embeddings = embed(policy.encoder, splits.train)
    predictions = _predictions(policy, train_embeddings, splits.train.labels, splits.test, k, with_head)
    scores = {"test": accuracies(predictions, splits.test.labels),
              "test_per_class": {name: per_class_accuracy(predicted, splits.test.labels, splits.test.num_classes)
                                 for name, predicted in predictions.items()}}
    if splits.shifted_test is not None:
        shifted = _predictions(policy, train_embeddings, splits.train.labels, splits.shifted_test, k, with_head)
        scores["shift"] = accuracies(shifted, splits.shifted_test.labels)
    return scores


def run(settings: RunSettings, config: TrainConfig, output: str | Path | None = None, frozen: bool = False,
        splits: Splits | None = None, save_encoder: bool = False, on_step=None) -> dict:
    """Train (unless `frozen`) and evaluate; returns the result record (also written to output/result.json)."""
    early = [step for step in settings.score_at if step >= config.steps or not settings.evaluate_every
             or step % settings.evaluate_every]
    if early and not frozen:
        raise ValueError(f"score_at steps {early} are not evaluation steps before the last ({config.steps}): use "
                         f"multiples of evaluate_every ({settings.evaluate_every}) below it")
    splits = splits or load_splits(settings)
    ood = None
    if settings.ood_data:
        ood_data = load_labelled(settings.ood_data)
        ood_split = split(ood_data, 0, settings.ood_test_per_class, None, settings.split_seed)
        ood = (ood_split.train, ood_split.test)
    policy = build_policy(settings.encoder, splits.train.num_classes, settings.head, settings.temperature,
                          settings.max_length, config.seed, settings.device)
    output = Path(output) if output else None
    log = None
    if output:
        output.mkdir(parents=True, exist_ok=True)
        log = open(output / "metrics.jsonl", "w")

    def record(entry: dict) -> None:
        if log:
            log.write(json.dumps(entry) + "\n")
            log.flush()
        if on_step:
            on_step(entry)

    scores_at = {}

    def dev_accuracy(step: int) -> dict:
        if step in settings.score_at:
            scores_at[str(step)] = _test_scores(policy, splits, settings.knn_k, True)
        _, predictions = embed_and_classify(policy, splits.dev)
        return {"dev_head_accuracy": float((predictions == splits.dev.labels).mean())}

    started = time.perf_counter()
    history = []
    try:
        if not frozen:
            history = train(policy, splits.train, config, settings.device, on_step=record, evaluate=dev_accuracy,
                            evaluate_every=settings.evaluate_every)
    finally:  # the steps logged so far stay readable when training fails
        if log:
            log.close()
    train_seconds = time.perf_counter() - started
    train_embeddings = embed(policy.encoder, splits.train)
    dev_predictions = _predictions(policy, train_embeddings, splits.train.labels, splits.dev, settings.knn_k,
                                   not frozen)
    step_seconds = [h["seconds"] for h in history if "seconds" in h]
    result = {
        "settings": settings.to_dict(), "config": config.to_dict(), "frozen": frozen,
        "classes": splits.train.class_names,
        "sizes": {"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
        "train_seconds": train_seconds,
        "seconds_per_step": float(np.median(step_seconds)) if step_seconds else None,
        "dev_curve": [(h["step"], h["eval_dev_head_accuracy"]) for h in history if "eval_dev_head_accuracy" in h],
        "train_accuracy": [h["accuracy"] for h in history if "accuracy" in h],
        "train_class_counts": np.bincount(splits.train.labels, minlength=splits.train.num_classes).tolist(),
        "dev": accuracies(dev_predictions, splits.dev.labels),
        **_test_scores(policy, splits, settings.knn_k, not frozen, train_embeddings),
        "test_at": scores_at,
    }
    if ood:
        ood_train_embeddings = embed(policy.encoder, ood[0])
        ood_test_embeddings = embed(policy.encoder, ood[1])
        result["ood"] = representation_scores(ood_train_embeddings, ood[0].labels, ood_test_embeddings,
                                              ood[1].labels, min(settings.knn_k, len(ood[0])))
    if output:
        if save_encoder and hasattr(policy.encoder, "save"):
            policy.encoder.save(output / "encoder")
        (output / "result.json").write_text(json.dumps(result, indent=1))
    return result
