"""verl's contract, pinned in one place: every verl 0.4.1 name GRACE subclasses, patches or calls exists with the
shape we rely on, and the package metadata bounds verl below 0.5. An upgrade of verl fails here first, by name.

Why the bound: verl 0.7 removes the HF rollout (the CPU path and the GPU demo), 0.8 the `fsdp_workers` module and
the driver-side reward manager, 0.9 moves rewards to per-sample workers that cannot see the policy (GRACE's reward
needs the policy's hidden states).
"""

import ast
import importlib
import inspect
import os
import tempfile
from importlib.metadata import requires
from pathlib import Path

import pytest
import verl

# (module, attribute): what grace/ imports, subclasses or replaces.
USED = [
    ("verl", "DataProto"),
    ("verl.protocol", "pad_dataproto_to_divisor"),
    ("verl.protocol", "unpad_dataproto"),
    ("verl.single_controller.base.decorator", "Dispatch"),
    ("verl.single_controller.base.decorator", "register"),
    ("verl.single_controller.ray", "RayWorkerGroup"),
    ("verl.trainer.main_ppo", "create_rl_sampler"),
    ("verl.trainer.ppo.ray_trainer", "RayPPOTrainer"),
    ("verl.trainer.ppo.ray_trainer", "ResourcePoolManager"),
    ("verl.trainer.ppo.ray_trainer", "Role"),
    ("verl.trainer.ppo.reward", "load_reward_manager"),
    ("verl.utils", "hf_processor"),
    ("verl.utils", "hf_tokenizer"),
    ("verl.utils.hdfs_io", "copy"),
    ("verl.utils.hdfs_io", "makedirs"),
    ("verl.utils.dataset.rl_dataset", "RLHFDataset"),
    ("verl.utils.dataset.rl_dataset", "collate_fn"),
    ("verl.utils.device", "get_device_id"),
    ("verl.utils.device", "get_device_name"),
    ("verl.utils.device", "get_nccl_backend"),  # replaced on CPU hosts
    ("verl.utils.fs", "copy_to_local"),
    ("verl.utils.fsdp_utils", "load_fsdp_model_to_gpu"),
    ("verl.utils.fsdp_utils", "offload_fsdp_model_to_cpu"),
    ("verl.utils.model", "get_generation_config"),
    ("verl.utils.tracking", "Tracking"),  # subclassed by the metrics file
    ("verl.workers.fsdp_workers", "ActorRolloutRefWorker"),
    ("verl.workers.fsdp_workers", "CPUOffloadPolicy"),  # replaced on CPU hosts
    ("verl.workers.fsdp_workers", "get_nccl_backend"),  # replaced on CPU hosts
    ("verl.workers.reward_manager", "register"),
    ("verl.workers.rollout", "HFRollout"),
    ("verl.workers.sharding_manager.base", "BaseShardingManager"),
    ("verl.model_merger.base_model_merger", "ModelMergerConfig"),
    ("verl.model_merger.fsdp_model_merger", "FSDPModelMerger"),
]

# (class, method, parameters GRACE passes or overrides with)
METHODS = [
    ("verl.trainer.ppo.ray_trainer.RayPPOTrainer", "init_workers", ["self"]),
    ("verl.workers.fsdp_workers.ActorRolloutRefWorker", "update_actor", ["self", "data"]),
    ("verl.utils.tracking.Tracking", "log", ["self", "data", "step", "backend"]),
    ("verl.utils.tracking.Tracking", "__init__", ["self", "project_name", "experiment_name", "default_backend",
                                                  "config"]),
]


def resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_verl_is_the_pinned_version():
    assert verl.__version__ == "0.4.1"


@pytest.mark.parametrize("module, name", USED, ids=[f"{m}.{n}" for m, n in USED])
def test_every_verl_name_grace_uses_exists(module, name):
    assert hasattr(importlib.import_module(module), name), f"verl {verl.__version__} has no {module}.{name}"


@pytest.mark.parametrize("owner, method, parameters", METHODS, ids=[f"{o}.{m}" for o, m, _ in METHODS])
def test_methods_grace_overrides_or_calls_keep_their_parameters(owner, method, parameters):
    signature = inspect.signature(getattr(resolve(owner), method))
    assert list(signature.parameters)[: len(parameters)] == parameters


def test_the_vllm_rollout_still_offers_update_sampling_params():
    # The worker asks vLLM for one rationale per prompt through it; vLLM is not installed on CPU hosts, so the
    # source is read instead of imported.
    source = Path(verl.__file__).parent / "workers/rollout/vllm_rollout/vllm_rollout_spmd.py"
    classes = {node.name: node for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.ClassDef)}
    methods = {node.name for node in classes["vLLMRollout"].body if isinstance(node, ast.FunctionDef)}
    assert "update_sampling_params" in methods


def test_package_metadata_bounds_verl_below_0_5():
    requirements = requires("grace-embed") or []
    assert any(r.replace(" ", "").startswith("verl") and "<0.5" in r.replace(" ", "") for r in requirements), \
        requirements


def test_temporary_files_stay_in_the_session_folder(tmp_path):
    # verl takes a lock file in the temp folder for every checkpoint directory it creates (`local_mkdir_safe`).
    from verl.utils.fs import local_mkdir_safe

    session = Path(os.environ["TMPDIR"])
    assert session.name.startswith("grace-tests-") and Path(tempfile.gettempdir()) == session
    before = set(session.glob("ckpt_*.lock"))
    local_mkdir_safe(str(tmp_path / "global_step_1"))
    assert len(set(session.glob("ckpt_*.lock")) - before) == 1
    assert tmp_path.is_relative_to(session)
