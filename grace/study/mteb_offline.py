"""Real MTEB tasks from a local data folder, as fixed dev and test subsamples that a study scores per item.

The folder is `eval_mteb.py --data_folder`'s (`grace.evaluation.offline_data`: `<folder>/<task>/<split>.jsonl`).
The written rule that splits each task: its test file's rows are permuted by numpy's `default_rng(SPLIT_SEED)`; the
first `items` rows of the permutation are the test part, the next `items` the dev part (disjoint, the same on
every machine). Banking77's classifier trains on a fixed pool taken from its train file: per label, the first
`TRAIN_PER_LABEL` rows in a permutation of the same seed (mteb draws 8 per label in each of its experiments; with a
pool of exactly 8 they are all the same experiment).

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

from grace.evaluation.offline_data import FIELDS, read_split

STS_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "SICK-R")
CLASSIFICATION_TASKS = ("Banking77Classification",)
MTEB_OFFLINE_TASKS = STS_TASKS + CLASSIFICATION_TASKS
SPLIT_SEED = 0
TRAIN_PER_LABEL = 8  # mteb's samples_per_label for classification


def part_rows(count: int, items: int, part: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Row numbers of a task's `part` ("test" or "dev") under the written rule (module docstring)."""
    if part not in ("test", "dev"):
        raise ValueError(f"part must be 'test' or 'dev', got {part!r}")
    if 2 * items > count:
        raise ValueError(f"{items} test and {items} dev items asked for, but the file has {count} rows")
    order = np.random.default_rng(seed).permutation(count)
    return order[:items] if part == "test" else order[items : 2 * items]


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
    rows = part_rows(len(columns["score"]), items, part)
    return StsItems([columns["sentence1"][r] for r in rows], [columns["sentence2"][r] for r in rows],
                    np.array([float(columns["score"][r]) for r in rows]))


def classification_items(folder: Path, task: str, items: int, part: str) -> ClassificationItems:
    test = read_split(Path(folder) / task / "test.jsonl", FIELDS["Classification"])
    train = read_split(Path(folder) / task / "train.jsonl", FIELDS["Classification"])
    pool, taken = [], {}
    for row in np.random.default_rng(SPLIT_SEED).permutation(len(train["label"])):
        label = train["label"][row]
        if taken.get(label, 0) < TRAIN_PER_LABEL:
            pool.append(row)
            taken[label] = taken.get(label, 0) + 1
    rows = part_rows(len(test["label"]), items, part)
    return ClassificationItems([train["text"][r] for r in pool], [train["label"][r] for r in pool],
                               [test["text"][r] for r in rows], [test["label"][r] for r in rows])


def mteb_offline_items(folder: Path, items: dict[str, int], part: str) -> dict:
    """Each named task's items of `part` (`items`: task name -> items per part)."""
    unknown = sorted(set(items) - set(MTEB_OFFLINE_TASKS))
    if unknown:
        raise ValueError(f"unknown MTEB-offline task(s) {unknown}; known: {list(MTEB_OFFLINE_TASKS)}")
    return {task: (sts_items if task in STS_TASKS else classification_items)(folder, task, count, part)
            for task, count in items.items()}
