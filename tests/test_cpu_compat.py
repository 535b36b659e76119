"""grace.verl_ext.cpu_compat: patches in place on a CPU, nothing touched under CUDA, pinned verl only.

Each check runs in a fresh interpreter, since the patches are process-wide."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_patches_are_applied_on_a_cpu():
    done = run_python("""
        import torch, torch.distributed
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
        import verl.utils.device, verl.workers.fsdp_workers as workers
        from transformers import AutoConfig
        assert verl.utils.device.get_nccl_backend() == "gloo" == workers.get_nccl_backend()
        assert torch.distributed.init_process_group._grace_gloo
        import socket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        torch.distributed.init_process_group("cpu:gloo,cpu:gloo", f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        assert torch.distributed.get_backend() == "gloo"
        torch.distributed.destroy_process_group()
        assert torch.cpu.memory_allocated() == 0 and torch.cpu.mem_get_info()[1] > 0
        assert torch.cpu.get_device_name() == "cpu"
        assert AutoConfig.from_pretrained.__func__._grace_sdpa
        assert workers.CPUOffloadPolicy().pin_memory is False
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_nothing_is_patched_when_cuda_is_available():
    done = run_python("""
        import torch, torch.distributed
        torch.cuda.is_available = lambda: True
        original = torch.distributed.init_process_group
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
        import verl.workers.fsdp_workers as workers
        from transformers import AutoConfig
        assert torch.distributed.init_process_group is original
        assert not hasattr(AutoConfig.from_pretrained.__func__, "_grace_sdpa")
        assert workers.CPUOffloadPolicy(pin_memory=True).pin_memory is True
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_the_hf_rollout_timing_fix_is_applied_on_gpu_hosts_too():
    # The GPU demo (`--device cuda`) uses the HF rollout, whose sharding manager verl 0.4.1 leaves without `timing`.
    done = run_python("""
        import torch
        torch.cuda.is_available = lambda: True
        import verl.workers.fsdp_workers as workers
        from verl.workers.sharding_manager.base import BaseShardingManager
        from grace.verl_ext.worker import GraceActorRolloutRefWorker
        assert not hasattr(BaseShardingManager, "timing")
        workers.ActorRolloutRefWorker.__init__ = lambda self, *args, **kwargs: None  # no process group here
        GraceActorRolloutRefWorker(None, "actor_rollout")
        assert BaseShardingManager.timing == {}
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_another_verl_version_is_refused():
    done = run_python("""
        import verl
        verl.__version__ = "0.5.0"
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
    """)
    assert done.returncode != 0 and "written for verl==0.4.1, found verl 0.5.0" in done.stderr


def test_cpu_dtype_follows_native_bf16_and_can_be_forced(monkeypatch):
    from grace.verl_ext import cpu_compat

    for avx512_bf16, amx, expected in ((False, False, "float32"), (True, False, "bfloat16"), (False, True, "bfloat16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value)
        assert cpu_compat.resolve_cpu_dtype("auto") == expected
        assert cpu_compat.resolve_cpu_dtype("float32") == "float32"
        assert cpu_compat.resolve_cpu_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="cpu dtype"):
        cpu_compat.resolve_cpu_dtype("fp16")


@pytest.mark.parametrize("native, forced, dtype, precision", [(False, None, "float32", "fp32"),
                                                                (True, None, "bfloat16", "bf16"),
                                                                (True, "float32", "float32", "fp32")])
def test_cpu_run_configuration(monkeypatch, capsys, native, forced, dtype, precision):
    from grace.verl_ext import cpu_compat
    from tests.training import compose_config

    monkeypatch.setattr(cpu_compat, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setenv(cpu_compat.CPU_DTYPE_ENV, "unset")  # restored after the test: configure_cpu_run sets it
    config = compose_config([f"+trainer.cpu_dtype={forced}"] if forced else [])
    assert cpu_compat.configure_cpu_run(config) == dtype
    for role in ("actor", "ref"):
        assert config.actor_rollout_ref[role].fsdp_config.mixed_precision.param_dtype == precision
    assert config.actor_rollout_ref.ref.fsdp_config.model_dtype == precision
    assert config.data.dataloader_num_workers == 0
    assert os.environ[cpu_compat.CPU_DTYPE_ENV] == dtype
    assert f"CPU training in {dtype}" in capsys.readouterr().out
    kept = compose_config(["+data.dataloader_num_workers=3"])
    cpu_compat.configure_cpu_run(kept)
    assert kept.data.dataloader_num_workers == 3


def test_float32_run_turns_bf16_autocast_off_on_the_cpu():
    done = run_python("""
        import os, torch
        os.environ["GRACE_CPU_DTYPE"] = "float32"
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
        a, b = torch.randn(4, 8), torch.randn(8, 2)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # as verl's dp_actor and HF rollout write it
            assert (a @ b).dtype == torch.float32
        with torch.autocast(device_type="cpu", dtype=torch.float16):  # only bf16 is turned off
            assert (a @ b).dtype == torch.float16
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
    unpatched = run_python("""
        import os, torch
        os.environ["GRACE_CPU_DTYPE"] = "bfloat16"
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            assert (torch.randn(4, 8) @ torch.randn(8, 2)).dtype == torch.bfloat16
        print("ok")
    """)
    assert unpatched.returncode == 0 and unpatched.stdout.strip().endswith("ok"), unpatched.stderr
