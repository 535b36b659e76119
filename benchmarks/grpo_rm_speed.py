"""Examples per second of a GRPO-RM step and a CE step, measured in one run; their ratio should be close to mu.

    python benchmarks/grpo_rm_speed.py                               # packaged MiniLM, batch 16, 64 tokens, CPU
    python benchmarks/grpo_rm_speed.py --encoder digits-cnn --batch-size 256
    python benchmarks/grpo_rm_speed.py --device cuda --batch-size 128

A GRPO-RM batch takes mu inner updates, each one encoder forward and backward (pi_old comes from the first forward,
not an extra pass), and the rewards and advantages are whole-tensor operations with no loop over classes or
examples: so a CE step should be about mu times faster per example. Steps alternate between the two objectives
so that both see the same machine state; the median over --repeats steps is reported.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grace.grpo_rm.data import load_labelled  # noqa: E402
from grace.grpo_rm.loop import TrainConfig, ce_step, grpo_rm_step, make_optimizer  # noqa: E402
from grace.grpo_rm.policy import build_policy  # noqa: E402
from grace.study.report import machine_description  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="minilm", help="minilm, digits-cnn or an encoder folder")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs per step")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text")
    parser.add_argument("--inner-updates", type=int, default=2, help="mu")
    parser.add_argument("--uniformity", default="prob", help="uniformity reward of the GRPO-RM steps")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per objective (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    data = load_labelled("digits" if args.encoder == "digits-cnn" else "wiki-topics")
    policy = build_policy(args.encoder, data.num_classes, max_length=args.max_length, device=args.device)
    rng = np.random.default_rng(0)
    configs = {"grpo_rm": TrainConfig(objective="grpo_rm", inner_updates=args.inner_updates,
                                      uniformity=args.uniformity),
               "ce": TrainConfig(objective="ce")}
    optimizers = {name: make_optimizer(policy, config) for name, config in configs.items()}
    times = {name: [] for name in configs}

    def step(name: str) -> float:
        batch = data.subset(rng.choice(len(data), args.batch_size, replace=False))
        labels = torch.as_tensor(batch.labels, device=args.device)
        inputs = batch.inputs if batch.is_text else batch.inputs.to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        if name == "grpo_rm":
            grpo_rm_step(policy, optimizers[name], inputs, labels, configs[name])
        else:
            ce_step(policy, optimizers[name], inputs, labels)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name in configs:  # warm-up
        step(name)
    for _ in range(args.repeats):
        for name in configs:
            times[name].append(step(name))
    speed = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    print(f"{machine_description()}; device {args.device}")
    print(f"encoder {args.encoder}, batch {args.batch_size}, max length {args.max_length}, mu {args.inner_updates}, "
          f"{data.num_classes} classes, median of {args.repeats} steps")
    for name, value in speed.items():
        print(f"  {name:8s} {value:8.1f} examples/s  ({statistics.median(times[name]):.3f} s/step)")
    print(f"CE / GRPO-RM examples per second: {speed['ce'] / speed['grpo_rm']:.2f} (mu = {args.inner_updates})")


if __name__ == "__main__":
    main()
