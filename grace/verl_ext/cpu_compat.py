"""Run verl 0.4.1's real trainer on a machine without CUDA.

verl 0.4.1 assumes NVIDIA GPUs in a handful of places. Each function below works around one of them (the
failures are recorded in docs: verl-cpu-notes.md, section 2). `apply()` installs all of them; it is a no-op
when CUDA is available, and it refuses any verl but the pinned one, because the patched names are only known
to be right there. Ray runs `apply()` in every worker process through `worker_process_setup_hook`
(see `init_ray`), so the TaskRunner and every WorkerDict actor get the same patches as the driver.
"""

from __future__ import annotations

import functools
import os

import torch

PINNED_VERL_VERSION = "0.4.1"
_applied = False


def _use_gloo_backend() -> None:
    # verl asks get_nccl_backend() for the collective backend, which raises on a CPU ("No available nccl backend").
    import verl.utils.device
    import verl.workers.fsdp_workers

    verl.utils.device.get_nccl_backend = lambda: "gloo"
    verl.workers.fsdp_workers.get_nccl_backend = lambda: "gloo"


def _init_process_group_with_gloo() -> None:
    # The actor worker asks for "cpu:gloo,cpu:gloo" (device name is "cpu"), which torch rejects as a duplicate.
    original = torch.distributed.init_process_group
    if getattr(original, "_grace_gloo", False):
        return

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        kwargs["backend"] = "gloo"
        return original(*args, **kwargs)

    init_process_group._grace_gloo = True
    torch.distributed.init_process_group = init_process_group


def _add_memory_shims_to_torch_cpu() -> None:
    # get_torch_device() returns torch.cpu, and verl calls CUDA-only memory and RNG helpers on it.
    import psutil

    def mem_get_info(*_args, **_kwargs):
        memory = psutil.virtual_memory()
        return memory.available, memory.total

    shims = {
        "memory_allocated": lambda *a, **k: 0,
        "memory_reserved": lambda *a, **k: 0,
        "max_memory_allocated": lambda *a, **k: 0,
        "max_memory_reserved": lambda *a, **k: 0,
        "mem_get_info": mem_get_info,
        "empty_cache": lambda *a, **k: None,
        "reset_peak_memory_stats": lambda *a, **k: None,
        "manual_seed": lambda seed, *a, **k: torch.manual_seed(seed),
        "manual_seed_all": lambda seed, *a, **k: torch.manual_seed(seed),
        "get_rng_state": lambda *a, **k: torch.get_rng_state(),
        "set_rng_state": lambda state, *a, **k: torch.set_rng_state(state),
        # The MFU metric looks up peak FLOP/s by device name; an unknown name gives infinity (MFU 0).
        "get_device_name": lambda *a, **k: "cpu",
    }
    for name, shim in shims.items():
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, shim)


def _map_flash_attention_to_sdpa() -> None:
    # The actor is built from AutoConfig.from_pretrained(..., attn_implementation="flash_attention_2"): no flash-attn on a CPU.
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained.__func__
    if getattr(original, "_grace_sdpa", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, *args, **kwargs):
        if kwargs.get("attn_implementation") == "flash_attention_2":
            kwargs["attn_implementation"] = "sdpa"
        return original(cls, *args, **kwargs)

    from_pretrained._grace_sdpa = True
    AutoConfig.from_pretrained = classmethod(from_pretrained)


def _unpinned_cpu_offload_policy() -> None:
    # FSDP2's CPUOffloadPolicy(pin_memory=True) needs an accelerator to pin memory.
    import verl.workers.fsdp_workers
    from torch.distributed.fsdp import CPUOffloadPolicy

    verl.workers.fsdp_workers.CPUOffloadPolicy = lambda *args, **kwargs: CPUOffloadPolicy(pin_memory=False)


def _give_base_sharding_manager_timing() -> None:
    # verl 0.4.1 bug (CPU and GPU alike): generate_sequences reads rollout_sharding_manager.timing, which the
    # do-nothing BaseShardingManager used by the HF rollout never sets.
    from verl.workers.sharding_manager.base import BaseShardingManager

    if not hasattr(BaseShardingManager, "timing"):
        BaseShardingManager.timing = {}


def apply() -> None:
    """Install every CPU adaptation in this process; does nothing when CUDA is available."""
    global _applied
    if _applied or torch.cuda.is_available():
        return
    import verl

    if verl.__version__ != PINNED_VERL_VERSION:
        raise RuntimeError(
            f"GRACE's CPU adaptations are written for verl=={PINNED_VERL_VERSION}, found verl {verl.__version__}. "
            f"Install the pinned version (requirements/cpu.txt)."
        )
    _use_gloo_backend()
    _init_process_group_with_gloo()
    _add_memory_shims_to_torch_cpu()
    _map_flash_attention_to_sdpa()
    _unpinned_cpu_offload_policy()
    _give_base_sharding_manager_timing()
    _applied = True


RAY_ENV_VARS = {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN", "VLLM_LOGGING_LEVEL": "WARN"}


def init_ray(num_cpus: int | None, num_gpus: int) -> None:
    """Start a local Ray cluster for verl unless one is running.

    On a CPU machine Ray is told it has `num_gpus` placeholder GPUs, because verl's resource pools always ask
    for GPU bundles; the actors then find no CUDA and run on the CPU. Every Ray worker runs `apply()` first.
    """
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": dict(RAY_ENV_VARS)}
    if torch.cuda.is_available():
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env)
        return
    apply()
    # Ray refuses placeholder GPUs when CUDA_VISIBLE_DEVICES is set but empty; unset it instead.
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        del os.environ["CUDA_VISIBLE_DEVICES"]
    runtime_env["worker_process_setup_hook"] = f"{__name__}.apply"
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=runtime_env)
