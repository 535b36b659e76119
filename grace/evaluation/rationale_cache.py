"""Rationales on disk, so a re-run or a second task sharing a corpus generates nothing twice.

One SQLite file; a row per (namespace, text) holds the generated token ids. The namespace is a hash of what
determines a rationale besides the text: the model (its path and the size and modification time of its weight
files, or its hub id), the generation settings, the system prompt and the input length, and what computes it (torch,
the generation backend, dtype and device type).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path


def model_fingerprint(path_or_hub_id) -> str:
    folder = Path(path_or_hub_id)
    if not folder.is_dir():
        return str(path_or_hub_id)
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    return json.dumps([str(folder.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights])


def namespace_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def encoder_namespace(model_path, encoder) -> str:
    """The namespace of a GraceEncoder's rationales: its model, what shapes a rationale (not the pooling span) and what
    computes it: torch's version, the generation backend, the model's dtype and device type (each rounds differently,
    and a greedy rationale follows the rounding: a study resumed on another device must not reuse them)."""
    import torch

    settings = encoder.settings
    return namespace_of(model_fingerprint(model_path), settings.system_prompt, settings.max_input_length,
                        settings.generation, torch.__version__, type(encoder.generator).__name__,
                        str(encoder.model.dtype), encoder.model.device.type)


class RationaleCache:
    def __init__(self, path: Path, namespace: str):
        self.path, self.namespace = Path(path), namespace
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS rationale (namespace TEXT, text_hash TEXT, token_ids TEXT, "
                       "PRIMARY KEY (namespace, text_hash))")

    @staticmethod
    def _hash(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def get_many(self, texts: list[str]) -> dict[str, list[int]]:
        by_hash = {self._hash(t): t for t in texts}
        found = {}
        with sqlite3.connect(self.path) as db:
            hashes = list(by_hash)
            for start in range(0, len(hashes), 500):  # SQLite limits the number of bound parameters
                chunk = hashes[start : start + 500]
                rows = db.execute(f"SELECT text_hash, token_ids FROM rationale WHERE namespace = ? AND text_hash IN "
                                  f"({','.join('?' * len(chunk))})", [self.namespace, *chunk])
                found.update({by_hash[h]: json.loads(ids) for h, ids in rows})
        return found

    def put_many(self, rationales: dict[str, list[int]]) -> None:
        with sqlite3.connect(self.path) as db:
            db.executemany("INSERT OR REPLACE INTO rationale VALUES (?, ?, ?)",
                           [(self.namespace, self._hash(t), json.dumps(ids)) for t, ids in rationales.items()])
