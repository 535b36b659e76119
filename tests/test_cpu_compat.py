"""grace.verl_ext.cpu_compat: patches in place on a CPU, nothing touched under CUDA, pinned verl only.

Each check runs in a fresh interpreter, since the patches are process-wide."""

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_patches_are_applied_on_a_cpu():
    done = run_python("""
        import torch, torch.distributed
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
        import verl.utils.device, verl.workers.fsdp_workers as workers
        from transformers import AutoConfig
        from verl.workers.sharding_manager.base import BaseShardingManager
        assert verl.utils.device.get_nccl_backend() == "gloo" == workers.get_nccl_backend()
        assert torch.distributed.init_process_group._grace_gloo
        assert torch.cpu.memory_allocated() == 0 and torch.cpu.mem_get_info()[1] > 0
        assert torch.cpu.get_device_name() == "cpu"
        assert AutoConfig.from_pretrained.__func__._grace_sdpa
        assert workers.CPUOffloadPolicy().pin_memory is False
        assert BaseShardingManager.timing == {}
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


def test_another_verl_version_is_refused():
    done = run_python("""
        import verl
        verl.__version__ = "0.5.0"
        from grace.verl_ext import cpu_compat
        cpu_compat.apply()
    """)
    assert done.returncode != 0 and "written for verl==0.4.1, found verl 0.5.0" in done.stderr
