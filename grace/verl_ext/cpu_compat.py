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
CPU_DTYPE_ENV = "GRACE_CPU_DTYPE"  # float32 or bfloat16: the compute dtype of a CPU run, set by configure_cpu_run
CPU_DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_applied = False


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), as torch reports it.

    Without it (AVX2-only CPUs: most laptops) torch runs bf16 matrix products in a fallback kernel about 100x
    slower than fp32 (`benchmarks/cpu_dtype.py` prints the ratio of the machine it runs on).
    """
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_cpu_dtype(choice: str = "auto") -> str:
    """"float32" or "bfloat16": the forced choice, or for "auto" the one this CPU runs fast."""
    if choice not in CPU_DTYPE_CHOICES:
        raise ValueError(f"cpu dtype must be one of {CPU_DTYPE_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def configure_cpu_run(config) -> str | None:
    """Settings of a training run on a machine without CUDA; returns the compute dtype (None under CUDA).

    - dtype: `+trainer.cpu_dtype` (auto | float32 | bfloat16; auto picks bf16 only where the CPU runs it
      natively). float32 sets FSDP mixed precision (actor and reference) to fp32 and, through CPU_DTYPE_ENV,
      makes every Ray worker turn verl's hard-coded bf16 autocasts into no-ops (see `_autocast_in_cpu_dtype`);
    - data loading in the trainer process: verl starts 8 dataloader workers unless told otherwise, which a
      laptop's few cores do not need (`data.dataloader_num_workers` is kept when set).
    """
    from omegaconf import open_dict

    if torch.cuda.is_available():
        return None
    choice = config.trainer.get("cpu_dtype", "auto")
    dtype = resolve_cpu_dtype(choice)
    precision = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
    with open_dict(config):
        for role in ("actor", "ref"):
            fsdp_config = config.actor_rollout_ref[role].fsdp_config
            fsdp_config.mixed_precision = {"param_dtype": precision, "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
        config.actor_rollout_ref.ref.fsdp_config.model_dtype = precision
        if config.data.get("dataloader_num_workers") is None:
            config.data.dataloader_num_workers = 0
    os.environ[CPU_DTYPE_ENV] = dtype
    reason = "forced by +trainer.cpu_dtype" if choice != "auto" else (
        "this CPU has native bf16 (AVX512-BF16 or AMX)" if dtype == "bfloat16"
        else "this CPU has no native bf16, where bf16 matrix products are ~100x slower")
    print(f"CPU training in {dtype}: {reason}; dataloader workers: {config.data.dataloader_num_workers}", flush=True)
    return dtype


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
    def init_process_group(backend=None, *args, **kwargs):
        return original("gloo", *args, **kwargs)

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
    # The actor is built from AutoConfig.from_pretrained(..., attn_implementation="flash_attention_2"): no flash-attn
    # on a CPU.
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


def _autocast_in_cpu_dtype() -> None:
    # verl 0.4.1 runs the actor forward (dp_actor), the HF rollout and GRACE's embedding pass under a hard-coded
    # `torch.autocast(dtype=torch.bfloat16)`: on a CPU run in float32 a bf16 autocast on the CPU becomes a no-op.
    if os.environ.get(CPU_DTYPE_ENV) != "float32" or getattr(torch.autocast, "_grace_float32", False):
        return
    base = torch.autocast

    class autocast(base):  # noqa: N801  (stands in for torch.autocast)
        _grace_float32 = True

        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            if device_type == "cpu" and dtype == torch.bfloat16:
                enabled = False
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    torch.autocast = autocast


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
    _autocast_in_cpu_dtype()
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
    if CPU_DTYPE_ENV in os.environ:
        runtime_env["env_vars"][CPU_DTYPE_ENV] = os.environ[CPU_DTYPE_ENV]
    if torch.cuda.is_available():
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env)
        return
    apply()
    # Ray refuses placeholder GPUs when CUDA_VISIBLE_DEVICES is set but empty; unset it instead.
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        del os.environ["CUDA_VISIBLE_DEVICES"]
    runtime_env["worker_process_setup_hook"] = f"{__name__}.apply"
    # No dashboard on a CPU machine: its processes take seconds of the two cores at every start, for a page no one
    # opens during a local run.
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=runtime_env, include_dashboard=False)
