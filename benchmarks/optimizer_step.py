"""AdamW's step over the packaged SmolLM2's parameters as FSDP2 shards them on one rank: torch's CPU default (the
per-tensor loop, which verl's AdamW gets), the multi-tensor step (bit-identical parameters) and the fused kernel
that GRACE's worker sets on a CPU (`grace.verl_ext.worker.fused_steps_on_cpu`: the same parameters to float32
rounding), against the memory floor, in one run.

    python benchmarks/optimizer_step.py [--repeats 5]

Simplifications: random gradients (the step's cost does not depend on their values), float32 parameters and
states as verl keeps them; the floor counts 7 passes over the parameters' bytes (read parameter, gradient and the
two moments, write parameter and the two moments) at this machine's measured copy bandwidth.
"""

import argparse
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine_rates import memory_bandwidth, timed  # noqa: E402
from benchmarks.step_phases import ADAM_BYTES_PER_PARAMETER  # noqa: E402
from grace.data.assets import smollm2_hf_folder  # noqa: E402
from grace.study.report import machine_description  # noqa: E402
from grace.verl_ext.worker import fused_steps_on_cpu  # noqa: E402


def step_seconds(model, step: str, repeats: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01,  # as verl builds it
                                  foreach=True if step == "multi-tensor" else None)
    if step == "fused":
        fused_steps_on_cpu(optimizer)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()  # the moments exist from here on
    return min(timed(optimizer.step, torch.device("cpu"))[1] for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (the best counts)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_folder(), torch_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    parameters = sum(p.numel() for p in model.parameters())
    per_tensor, multi, fused = (step_seconds(model, step, args.repeats)
                                for step in ("per-tensor", "multi-tensor", "fused"))
    floor = ADAM_BYTES_PER_PARAMETER * parameters / memory_bandwidth(torch.device("cpu"))
    print(f"machine: {machine_description()}")
    print(f"AdamW step over {parameters / 1e6:.1f} M float32 parameters (FSDP2, 1 rank):")
    print(f"  per-tensor loop (torch's CPU default) {per_tensor:.3f} s")
    print(f"  multi-tensor step                     {multi:.3f} s   {per_tensor / multi:.2f}x faster")
    print(f"  fused kernel (GRACE's worker on a CPU) {fused:.3f} s   {per_tensor / fused:.2f}x faster")
    print(f"  floor (7 passes at the copy bandwidth) {floor:.3f} s   floor / fused {floor / fused:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
