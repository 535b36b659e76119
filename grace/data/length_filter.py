"""Drop rows whose chat prompt is longer than `max_len` tokens, so training never truncates a prompt.

A row is kept when its main prompt, chat-templated with the generation header and tokenised as verl does, is at
most `max_len` tokens. Supervised rows also have their query and negative-document prompts measured (same system
prompt and template), because training builds prompts from them too; the reference measured only the main
prompt, so long queries were later cut and lost their assistant header (`main_prompt_only=True` restores that).
Rows are read, tokenised (fast tokenizer, whole batches) and written in batches of `batch_rows`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from grace.prompts import chat_messages

MULTI_INPUT_PROMPTS = {"query prompt": "query", "negative prompt": "negative_document"}


@dataclass
class FilterResult:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows (a row counts under its first reason)


def prompt_lengths(tokenizer, conversations: list) -> list[int]:
    """Token counts of the chat-templated conversations, tokenised as verl does (no added special tokens)."""
    templated = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    if getattr(tokenizer, "is_fast", False):  # the Rust tokenizer directly: no per-row Python conversion
        return [len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(templated, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(templated, add_special_tokens=False)["input_ids"]]


def _keep_mask(table: pa.Table, tokenizer, max_len: int, prompt_key: str, main_prompt_only: bool, result):
    checks = {"main prompt": [list(messages) for messages in table.column(prompt_key).to_pylist()]}
    if not main_prompt_only and "multi_input" in table.column_names:
        multi_input = table.column("multi_input").to_pylist()
        for reason, name in MULTI_INPUT_PROMPTS.items():
            checks[reason] = [chat_messages(row[name]) for row in multi_input]
    keep = [True] * table.num_rows
    for reason, conversations in checks.items():
        for row, length in enumerate(prompt_lengths(tokenizer, conversations)):
            if keep[row] and length > max_len:
                keep[row] = False
                result.dropped[f"{reason} > {max_len} tokens"] += 1
    return keep


def filter_parquet(source: Path, destination: Path, tokenizer, max_len: int, prompt_key: str = "prompt",
                   main_prompt_only: bool = False, batch_rows: int = 4096) -> FilterResult:
    if not source.is_file():
        raise FileNotFoundError(f"parquet file not found: {source}")
    parquet = pq.ParquetFile(source)
    if prompt_key not in parquet.schema_arrow.names:
        raise ValueError(f"{source} has no column {prompt_key!r} (columns: {parquet.schema_arrow.names})")
    result = FilterResult()
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    try:
        with pq.ParquetWriter(partial, parquet.schema_arrow) as writer, \
                tqdm(total=parquet.metadata.num_rows, unit="rows", desc=f"filtering {source.name}") as progress:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                keep = _keep_mask(table, tokenizer, max_len, prompt_key, main_prompt_only, result)
                writer.write_table(table.filter(pa.array(keep)))
                result.kept += sum(keep)
                progress.update(table.num_rows)
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    return result
