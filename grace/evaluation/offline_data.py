"""MTEB tasks with their data read from local files, scored by mteb's own evaluators.

A data folder holds one folder per task, named as mteb names it, with one JSON-lines file per split the task reads:
its evaluation splits, and its training split for classification (`<folder>/STS12/test.jsonl`,
`<folder>/Banking77Classification/{train,test}.jsonl`). Each line is an object with the fields mteb's task reads:
`sentence1`, `sentence2`, `score` (STS) or `text`, `label` (classification); other fields are ignored.
`attach_offline_data` loads them into the real mteb task object (`task.dataset`, `task.data_loaded`), so that
`mteb.evaluate` scores it exactly as it scores the hub's copy; the same command without a data folder reads the hub.

A fixed part of a task (`items`, `part`), by a written rule the studies use too (`grace.study.mteb_offline`): the
evaluation split's rows are permuted by numpy's `default_rng(SPLIT_SEED)`; the first `items` rows of the permutation
are the test part, the next `items` the dev part (disjoint, the same on every machine). A classification task then
trains on a fixed pool from its training split: per label, the first `TRAIN_PER_LABEL` rows in a permutation of the
same seed (mteb draws 8 per label in each of its experiments; with a pool of exactly 8 they are all the same
experiment, so a part scores the same in mteb and in a study).
Simplification: STS and classification tasks only, one subset (`default`); others are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIELDS = {"STS": ("sentence1", "sentence2", "score"), "Classification": ("text", "label")}
SPLIT_SEED = 0
TRAIN_PER_LABEL = 8  # mteb's samples_per_label for classification
PARTS = ("test", "dev")


def read_split(path: Path, fields: tuple[str, ...]) -> dict[str, list]:
    """The columns `fields` of a JSON-lines file; raises naming the file and line of any bad row."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (one JSON object per line with {', '.join(fields)})")
    columns: dict[str, list] = {name: [] for name in fields}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from error
            missing = [name for name in fields if not isinstance(row, dict) or name not in row]
            if missing:
                raise ValueError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
            for name in fields:
                columns[name].append(row[name])
    if not columns[fields[0]]:
        raise ValueError(f"{path}: no rows")
    return columns


def part_rows(count: int, items: int, part: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Row numbers of a split's `part` ("test" or "dev") under the written rule (module docstring)."""
    if part not in PARTS:
        raise ValueError(f"part must be 'test' or 'dev', got {part!r}")
    if 2 * items > count:
        raise ValueError(f"{items} test and {items} dev items asked for, but the file has {count} rows")
    order = np.random.default_rng(seed).permutation(count)
    return order[:items] if part == "test" else order[items : 2 * items]


def training_pool(labels: list, seed: int = SPLIT_SEED) -> list[int]:
    """Row numbers of a classification task's fixed training pool: `TRAIN_PER_LABEL` per label (module docstring)."""
    pool, taken = [], {}
    for row in np.random.default_rng(seed).permutation(len(labels)):
        if taken.get(labels[row], 0) < TRAIN_PER_LABEL:
            pool.append(int(row))
            taken[labels[row]] = taken.get(labels[row], 0) + 1
    return pool


def take_rows(columns: dict[str, list], rows) -> dict[str, list]:
    return {name: [values[r] for r in rows] for name, values in columns.items()}


def attach_offline_data(task, folder: Path, items: int | None = None, part: str = "test"):
    """`task` (an mteb task object) with its splits read from `folder/<task name>/<split>.jsonl`; with `items`, only
    its fixed `part` of that many rows per evaluation split (and, for classification, the fixed training pool)."""
    from datasets import Dataset, DatasetDict

    name, kind = task.metadata.name, task.metadata.type
    if kind not in FIELDS:
        raise ValueError(f"{name}: {kind} tasks cannot be read from a data folder (STS and Classification can)")
    task_folder = Path(folder) / name
    if not task_folder.is_dir():
        raise FileNotFoundError(f"{task_folder}: no folder for task {name} in the data folder {folder}")
    evaluated = list(task.metadata.eval_splits)
    splits = evaluated + ([task.train_split] if kind == "Classification" else [])
    columns = {split: read_split(task_folder / f"{split}.jsonl", FIELDS[kind]) for split in dict.fromkeys(splits)}
    if items is not None:
        for split, values in columns.items():
            count = len(values[FIELDS[kind][0]])
            try:
                rows = part_rows(count, items, part) if split in evaluated else training_pool(values["label"])
            except ValueError as error:
                raise ValueError(f"{task_folder / split}.jsonl: {error}") from error
            columns[split] = take_rows(values, rows)
    task.dataset = DatasetDict({split: Dataset.from_dict(values) for split, values in columns.items()})
    task.data_loaded = True
    return task
