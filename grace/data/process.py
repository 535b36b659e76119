"""Raw data -> verl-ready parquet in the reference's format (spec section 1.2), streamed in batches.

Inputs: the Echo JSONL (`query`, `positive`, `negative`, optional `source`) in supervised mode; the wiki1m text
file (one sentence per line) or a JSONL with `text` in unsupervised mode. Two passes keep memory flat: the first
validates each line and appends the usable samples to a temporary parquet file, so the number of samples is known;
the second turns them into records and writes `train.parquet` / `test.parquet` batch by batch.

The split is the reference's: the first int(N * test_ratio) samples are the test set. `--shuffle --seed S`
instead draws a random test set of the same size; rows then keep file order within each split (verl shuffles
the training set itself). Bad lines are skipped and counted by reason, with their first line numbers, or, with
`strict`, the first one is an error naming its line.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from grace.data.records import supervised_record, unsupervised_record

BATCH_ROWS = 50_000
SUPERVISED_FIELDS = ("query", "positive", "negative")

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_REWARD_MODEL = pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
SUPERVISED_SCHEMA = pa.schema([
    ("data_source", pa.string()), ("prompt", _MESSAGES), ("ability", pa.string()), ("reward_model", _REWARD_MODEL),
    ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("original_query", pa.string()),
                              ("positive_example", pa.string()), ("negative_example", pa.string()),
                              ("source", pa.string()), ("line_idx", pa.int64())])),
    ("multi_input", pa.struct([("query", pa.string()), ("instruction", pa.string()),
                               ("negative_document", pa.string())])),
])
UNSUPERVISED_SCHEMA = pa.schema([
    ("data_source", pa.string()), ("prompt", _MESSAGES), ("ability", pa.string()), ("reward_model", _REWARD_MODEL),
    ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("text", pa.string()),
                              ("source", pa.string()), ("line_idx", pa.int64())])),
])
# What pass 1 keeps of each usable line.
_SAMPLE_SCHEMAS = {
    "supervised": pa.schema([(f, pa.string()) for f in (*SUPERVISED_FIELDS, "source")] + [("line_idx", pa.int64())]),
    "unsupervised": pa.schema([("text", pa.string()), ("source", pa.string()), ("line_idx", pa.int64())]),
}


class BadInputError(ValueError):
    """A bad input line under --strict, or input that yields nothing usable."""


@dataclass
class BadLineReport:
    """Skipped lines by reason, with the first few line numbers (1-based) of each."""

    examples_per_reason: int = 5
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_lines: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, line_number: int) -> None:
        self.counts[reason] += 1
        if len(self.first_lines[reason]) < self.examples_per_reason:
            self.first_lines[reason].append(line_number)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no bad lines"
        lines = [f"skipped {self.total} bad line(s):"]
        for reason, count in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>8}  {reason} (lines {', '.join(map(str, self.first_lines[reason]))}"
                         f"{', ...' if count > len(self.first_lines[reason]) else ''})")
        return "\n".join(lines)


def _check_string_fields(obj: dict, names, optional=()) -> str | None:
    """The reason `obj` is unusable, or None."""
    for name in names:
        if name not in obj:
            return f"missing field '{name}'"
        if not isinstance(obj[name], str):
            return f"non-string field '{name}'"
        if not obj[name].strip():
            return f"empty field '{name}'"
    for name in optional:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"non-string field '{name}'"
    return None


def parse_line(raw: bytes, mode: str, is_jsonl: bool, line_idx: int) -> tuple[tuple | None, str | None]:
    """(sample, None) for a usable line, (None, reason) for a bad one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "undecodable bytes (not UTF-8)"
    if not line.strip():
        return None, "blank line"
    if mode == "unsupervised" and not is_jsonl:
        return (line.strip(), "wiki1m", line_idx), None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None, "invalid JSON"
    if not isinstance(obj, dict):
        return None, "JSON that is not an object"
    required = SUPERVISED_FIELDS if mode == "supervised" else ("text",)
    reason = _check_string_fields(obj, required, optional=("source",))
    if reason:
        return None, reason
    return (*(obj[name].strip() for name in required), obj.get("source"), line_idx), None


def iter_samples(path: Path, mode: str, report: BadLineReport, strict: bool = False) -> Iterator[tuple]:
    """Usable samples of the input file, in order, with a progress bar over its bytes."""
    is_jsonl = path.suffix.lower() in (".jsonl", ".json")
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"reading {path.name}") as progress:
        pending = 0
        for line_idx, raw in enumerate(f):
            pending += len(raw)
            if pending > 1 << 22:
                progress.update(pending)
                pending = 0
            sample, reason = parse_line(raw.rstrip(b"\r\n"), mode, is_jsonl, line_idx)
            if reason is None:
                yield sample
            elif strict:
                raise BadInputError(f"{path}:{line_idx + 1}: {reason}")
            else:
                report.add(reason, line_idx + 1)
        progress.update(pending)


def _write_samples(samples: Iterator[tuple], mode: str, destination: Path, max_samples: int | None) -> int:
    schema = _SAMPLE_SCHEMAS[mode]
    samples = islice(samples, max_samples)  # None: no cap
    count = 0
    with pq.ParquetWriter(destination, schema) as writer:
        while batch := list(islice(samples, BATCH_ROWS)):
            writer.write_table(pa.Table.from_arrays([pa.array(c) for c in zip(*batch)], schema=schema))
            count += len(batch)
    return count


def _record(mode: str, sample: dict, split: str, index: int) -> dict:
    if mode == "supervised":
        return supervised_record(sample["query"], sample["positive"], sample["negative"], sample["source"],
                                 sample["line_idx"], split, index)
    return unsupervised_record(sample["text"], sample["source"], sample["line_idx"], split, index)


class _SplitWriter:
    """Parquet (and optionally indented JSON) output of one split, written batch by batch."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, write_json: bool):
        self.split, self.schema, self.rows, self.pending = split, schema, 0, []
        # Written under a .partial name and renamed by finish(): a failed run leaves earlier outputs intact.
        self.paths = [folder / f"{split}.parquet"] + ([folder / f"{split}.json"] if write_json else [])
        self.parquet = pq.ParquetWriter(self._partial(self.paths[0]), schema)
        self.json = open(self._partial(self.paths[1]), "w", encoding="utf-8") if write_json else None
        if self.json:
            self.json.write("[")

    def add(self, mode: str, sample: dict) -> None:
        self.pending.append(_record(mode, sample, self.split, self.rows))
        self.rows += 1
        if len(self.pending) == BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.parquet.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
        if self.json:
            for i, record in enumerate(self.pending):
                separator = "," if self.rows - len(self.pending) + i else ""
                self.json.write(separator + "\n" + json.dumps(record, ensure_ascii=False, indent=2))
        self.pending = []

    @staticmethod
    def _partial(path: Path) -> Path:
        return path.with_name(path.name + ".partial")

    def close(self) -> None:
        self.parquet.close()
        if self.json:
            self.json.close()

    def finish(self) -> None:
        self.flush()
        if self.json:
            self.json.write("\n]\n")
        self.close()
        for path in self.paths:
            self._partial(path).replace(path)


@dataclass
class ProcessResult:
    train_rows: int
    test_rows: int
    report: BadLineReport


def process_file(input_file: Path, local_dir: Path, mode: str, test_ratio: float = 0.01,
                 max_samples: int | None = None, shuffle: bool = False, seed: int = 0, strict: bool = False,
                 write_json: bool = False) -> ProcessResult:
    """Write local_dir/{train,test}.parquet from `input_file`; see the module docstring."""
    if mode not in ("supervised", "unsupervised"):
        raise ValueError(f"unknown mode {mode!r}; expected 'supervised' or 'unsupervised'")
    if not input_file.is_file():
        raise FileNotFoundError(f"input file not found: {input_file}")
    if not 0.0 <= test_ratio < 1.0:
        raise ValueError(f"test_ratio must be in [0, 1), got {test_ratio}")
    local_dir.mkdir(parents=True, exist_ok=True)
    report = BadLineReport()
    schema = SUPERVISED_SCHEMA if mode == "supervised" else UNSUPERVISED_SCHEMA
    with tempfile.TemporaryDirectory(dir=local_dir) as tmp:
        samples_file = Path(tmp) / "samples.parquet"
        total = _write_samples(iter_samples(input_file, mode, report, strict), mode, samples_file, max_samples)
        if total == 0:
            raise BadInputError(f"{input_file}: no usable {mode} sample\n{report.summary()}")
        test_size = int(total * test_ratio)
        if shuffle:
            is_test = np.zeros(total, dtype=bool)
            is_test[np.random.default_rng(seed).permutation(total)[:test_size]] = True
        else:
            is_test = np.arange(total) < test_size
        writers = {split: _SplitWriter(local_dir, split, schema, write_json) for split in ("train", "test")}
        try:
            position = 0
            with tqdm(total=total, unit="rows", desc="writing parquet") as progress:
                for batch in pq.ParquetFile(samples_file).iter_batches(batch_size=BATCH_ROWS):
                    for sample in batch.to_pylist():
                        writers["test" if is_test[position] else "train"].add(mode, sample)
                        position += 1
                    progress.update(batch.num_rows)
            for writer in writers.values():
                writer.finish()
        except BaseException:
            for writer in writers.values():
                writer.close()
                for path in writer.paths:
                    writer._partial(path).unlink(missing_ok=True)
            raise
    return ProcessResult(writers["train"].rows, writers["test"].rows, report)


def copy_to_hdfs(local_dir: Path, hdfs_dir: str) -> None:
    from verl.utils import hdfs_io

    hdfs_io.makedirs(hdfs_dir)
    hdfs_io.copy(src=str(local_dir), dst=hdfs_dir)

