"""Command-line pieces of the tools that measure a model's held-out rationales after a study (drift, diversity):
the same greedy rationales as the study's evaluation, read from its rationale cache, and the value recorded in an
arm's result.json so that the study's report shows it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_rationale_flags(parser: argparse.ArgumentParser, record_key: str) -> None:
    parser.add_argument("--rationale_length", type=int, default=48, help="max rationale tokens (greedy)")
    parser.add_argument("--rationale_cache", type=Path, default=None,
                        help="a study's rationales.sqlite: rationales the evaluation generated are not generated again")
    parser.add_argument("--record", type=Path, default=None,
                        help=f"a study arm's result.json to record the value in (key {record_key})")


def load_encoder(model: Path, args: argparse.Namespace):
    """A GraceEncoder of `model` generating greedy rationales of `--rationale_length`, through the cache if given."""
    from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder
    from grace.evaluation.rationale_cache import RationaleCache, encoder_namespace

    settings = EncoderSettings(generation=GenerationSettings(max_new_tokens=args.rationale_length))
    encoder = GraceEncoder.from_pretrained(model, backend="hf", settings=settings)
    if args.rationale_cache is not None:
        encoder.rationale_cache = RationaleCache(args.rationale_cache, encoder_namespace(model, encoder))
    return encoder


def record_value(args: argparse.Namespace, key: str, value) -> None:
    """Writes `value` under `key` into the result.json named by `--record`, if any."""
    if args.record is not None:
        record = json.loads(args.record.read_text())
        record[key] = value
        args.record.write_text(json.dumps(record, indent=1))
