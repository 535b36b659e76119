"""Why CPU training picks its dtype: bf16 against fp32 matrix products on this machine, measured in one run.

    .venv/bin/python benchmarks/cpu_dtype.py

A [512 x 576] x [576 x 1536] product (SmolLM2-135M's MLP at 512 tokens) in each dtype, with one thread and with
all of torch's threads; prints GFLOP/s, the fp32 / bf16 speed ratio, the CPU, whether it has native bf16, and the
dtype `+trainer.cpu_dtype=auto` chooses here.
"""

import subprocess
import time

import torch

from grace.verl_ext.cpu_compat import cpu_has_native_bf16, resolve_cpu_dtype

SHAPE = (512, 576, 1536)


def gflops(dtype: torch.dtype, seconds_budget: float = 2.0) -> float:
    m, k, n = SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds_budget:
        a @ b
        repeats += 1
    return 2 * m * k * n * repeats / (time.perf_counter() - started) / 1e9


def cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 (AVX512-BF16 or AMX): {cpu_has_native_bf16()}; auto dtype: {resolve_cpu_dtype('auto')}")
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        fp32, bf16 = gflops(torch.float32), gflops(torch.bfloat16)
        print(f"{count} thread(s): fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s, fp32/bf16 = {fp32 / bf16:.1f}x")


if __name__ == "__main__":
    main()
