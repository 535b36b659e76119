"""This machine's measured rates, the floors of the benchmarks: memory copy bandwidth and matrix-product FLOP/s.

Shared machines vary from run to run, so each rate is the best of several repetitions, measured in the same run as
the timings it is compared with.
"""

import time

import torch


def timed(function, device: torch.device):
    """(result, seconds) of `function()`, synchronised on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def memory_bandwidth(device: torch.device, megabytes: int = 512) -> float:
    """Bytes/s of a large tensor copy (read + write), best of 10."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(timed(lambda: target.copy_(source), device)[1] for _ in range(10))
    return 2 * source.numel() / best


def matmul_rate(device: torch.device, dtype: torch.dtype, hidden: int, intermediate: int) -> float:
    """FLOP/s of a [512 x hidden] x [hidden x intermediate] product (an MLP projection over a prefill), best of
    20: this machine's peak for the model's shapes."""
    a = torch.randn(512, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, intermediate, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device)[1] for _ in range(20))
    return 2 * 512 * hidden * intermediate / best
