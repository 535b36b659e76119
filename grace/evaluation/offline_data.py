"""MTEB tasks with their data read from local files, scored by mteb's own evaluators.

A data folder holds one folder per task, named as mteb names it, with one JSON-lines file per split the task reads:
its evaluation splits, and its training split for classification (`<folder>/STS12/test.jsonl`,
`<folder>/Banking77Classification/{train,test}.jsonl`). Each line is an object with the fields mteb's task reads:
`sentence1`, `sentence2`, `score` (STS) or `text`, `label` (classification); other fields are ignored.
`attach_offline_data` loads them into the real mteb task object (`task.dataset`, `task.data_loaded`), so that
`mteb.evaluate` scores it exactly as it scores the hub's copy; the same command without a data folder reads the hub.
Simplification: STS and classification tasks only, one subset (`default`); others are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

FIELDS = {"STS": ("sentence1", "sentence2", "score"), "Classification": ("text", "label")}


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


def attach_offline_data(task, folder: Path):
    """`task` (an mteb task object) with its splits read from `folder/<task name>/<split>.jsonl`."""
    from datasets import Dataset, DatasetDict

    name, kind = task.metadata.name, task.metadata.type
    if kind not in FIELDS:
        raise ValueError(f"{name}: {kind} tasks cannot be read from a data folder (STS and Classification can)")
    task_folder = Path(folder) / name
    if not task_folder.is_dir():
        raise FileNotFoundError(f"{task_folder}: no folder for task {name} in the data folder {folder}")
    splits = list(task.metadata.eval_splits) + ([task.train_split] if kind == "Classification" else [])
    task.dataset = DatasetDict({split: Dataset.from_dict(read_split(task_folder / f"{split}.jsonl", FIELDS[kind]))
                                for split in dict.fromkeys(splits)})
    task.data_loaded = True
    return task
