"""Real MTEB tasks from a local data folder, as fixed dev and test subsamples that a study scores per item.

The folder is `eval_mteb.py --data_folder`'s (`grace.evaluation.offline_data`: `<folder>/<task>/<split>.jsonl`), and
so is the written rule that splits each task into a test and a dev part and gives Banking77's classifier a fixed
training pool (`part_rows`, `training_pool`): `eval_mteb.py --data_items N --data_part test` scores the same rows.

Per item, as mteb scores the whole task (tested against `mteb.evaluate` on the same rows):
- STS: (cosine of the two sentences, gold score); the task's score is the Spearman correlation x 100;
- classification: 1 when mteb's classifier (`LogisticRegression(max_iter=100)` on the pool's embeddings) labels
  the text correctly, else 0; the score is accuracy x 100.
Pairs are resampled as units: the STS files repeat few sentences across pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grace.evaluation.offline_data import FIELDS, part_rows, read_split, take_rows, training_pool

STS_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "SICK-R")
CLASSIFICATION_TASKS = ("Banking77Classification",)
MTEB_OFFLINE_TASKS = STS_TASKS + CLASSIFICATION_TASKS


@dataclass
class StsItems:
    first: list[str]
    second: list[str]
    gold: np.ndarray

    def texts(self) -> list[str]:
        return self.first + self.second

    def units(self, vector) -> np.ndarray:
        """[n, 2]: cosine of each pair's unit vectors, gold score."""
        cosines = np.array([float(vector(a) @ vector(b)) for a, b in zip(self.first, self.second)])
        return np.stack([cosines, self.gold], axis=1)


@dataclass
class ClassificationItems:
    train_texts: list[str]
    train_labels: list
    item_texts: list[str]
    item_labels: list

    def texts(self) -> list[str]:
        return self.train_texts + self.item_texts

    def units(self, vector) -> np.ndarray:
        """[n]: 1.0 where mteb's classifier, trained on the pool, labels the item correctly."""
        from sklearn.linear_model import LogisticRegression

        classifier = LogisticRegression(max_iter=100).fit(np.stack([vector(t) for t in self.train_texts]),
                                                          self.train_labels)
        predicted = classifier.predict(np.stack([vector(t) for t in self.item_texts]))
        return (predicted == np.asarray(self.item_labels)).astype(np.float64)


def sts_items(folder: Path, task: str, items: int, part: str) -> StsItems:
    columns = read_split(Path(folder) / task / "test.jsonl", FIELDS["STS"])
    pairs = take_rows(columns, part_rows(len(columns["score"]), items, part))
    return StsItems(pairs["sentence1"], pairs["sentence2"], np.array([float(g) for g in pairs["score"]]))


def classification_items(folder: Path, task: str, items: int, part: str) -> ClassificationItems:
    test = read_split(Path(folder) / task / "test.jsonl", FIELDS["Classification"])
    train = read_split(Path(folder) / task / "train.jsonl", FIELDS["Classification"])
    pool = take_rows(train, training_pool(train["label"]))
    chosen = take_rows(test, part_rows(len(test["label"]), items, part))
    return ClassificationItems(pool["text"], pool["label"], chosen["text"], chosen["label"])


def mteb_offline_items(folder: Path, items: dict[str, int], part: str) -> dict:
    """Each named task's items of `part` (`items`: task name -> items per part)."""
    unknown = sorted(set(items) - set(MTEB_OFFLINE_TASKS))
    if unknown:
        raise ValueError(f"unknown MTEB-offline task(s) {unknown}; known: {list(MTEB_OFFLINE_TASKS)}")
    return {task: (sts_items if task in STS_TASKS else classification_items)(folder, task, count, part)
            for task, count in items.items()}
