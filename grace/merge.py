"""Turn a verl FSDP (or Megatron) checkpoint into a Hugging Face folder with verl's own model merger.

What GRACE adds around `verl.model_merger`: `--local_dir` may be an actor folder, a `global_step_*` folder, the
checkpoint root or an experiment folder, and the latest `global_step_*/actor` below it is chosen (and printed);
`--hf_model_path` (the reference's flag) names where the config, generation config and tokenizer come from,
instead of the checkpoint's own `actor/huggingface` copy. The merger writes bf16 safetensors.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_STEP = re.compile(r"global_step_(\d+)$")


def is_actor_checkpoint(folder: Path) -> bool:
    return any(folder.glob("model_world_size_*_rank_0.pt")) or (folder / "fsdp_config.json").exists()


def find_actor_checkpoint(local_dir: Path) -> Path:
    """The actor checkpoint folder at or below `local_dir`: itself, or the highest `global_step_*/actor`."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {local_dir}")
    if is_actor_checkpoint(local_dir):
        return local_dir
    candidates = [p for p in local_dir.rglob("actor") if _STEP.search(p.parent.name) and is_actor_checkpoint(p)]
    if not candidates:
        raise FileNotFoundError(f"no global_step_*/actor checkpoint under {local_dir}")
    latest_step = max(int(_STEP.search(p.parent.name).group(1)) for p in candidates)
    latest = [p for p in candidates if int(_STEP.search(p.parent.name).group(1)) == latest_step]
    if len(latest) > 1:
        raise ValueError(f"several experiments under {local_dir} reach step {latest_step}: "
                         f"{', '.join(map(str, sorted(latest)))}; pass one of them as --local_dir")
    return latest[0]


def merge_checkpoint(local_dir: Path, target_dir: Path, backend: str = "fsdp", hf_model_path: str | None = None,
                     hf_upload_path: str | None = None, private: bool = False) -> Path:
    """Merge the (latest) actor checkpoint under `local_dir` into `target_dir`; returns the actor folder used."""
    from verl.model_merger.base_model_merger import ModelMergerConfig

    actor = find_actor_checkpoint(Path(local_dir))
    config_path = str(hf_model_path) if hf_model_path else str(actor / "huggingface")
    Path(target_dir).mkdir(parents=True, exist_ok=True)
    config = ModelMergerConfig(operation="merge", backend=backend, target_dir=str(target_dir),
                               hf_upload_path=hf_upload_path, private=private, local_dir=str(actor),
                               hf_model_config_path=config_path)
    _run_merger(config)
    generation_config = Path(config_path) / "generation_config.json"
    if generation_config.exists():  # verl copies it only through the model's own generation config
        shutil.copy(generation_config, Path(target_dir) / "generation_config.json")
    return actor


def test_merged_checkpoint(local_dir: Path, test_hf_dir: Path, backend: str = "fsdp") -> Path:
    """verl's check: the merged state dict equals `test_hf_dir`'s (keys, shapes, dtypes, values)."""
    from verl.model_merger.base_model_merger import ModelMergerConfig

    actor = find_actor_checkpoint(Path(local_dir))
    _run_merger(ModelMergerConfig(operation="test", backend=backend, local_dir=str(actor),
                                  hf_model_config_path=str(actor / "huggingface"), test_hf_dir=str(test_hf_dir)))
    return actor


def _run_merger(config) -> None:
    if config.backend == "fsdp":
        from verl.model_merger.fsdp_model_merger import FSDPModelMerger as Merger
    else:
        from verl.model_merger.megatron_model_merger import MegatronModelMerger as Merger
    merger = Merger(config)
    merger.merge_and_save()
    merger.cleanup()
