"""Where a demo-shaped GRACE training step spends its time, phase by phase, checkpoints included.

    .venv/bin/python benchmarks/step_phases.py                      # 6 steps, a checkpoint every 2
    .venv/bin/python benchmarks/step_phases.py --steps 10 --save_every 4

Trains the packaged SmolLM2-135M-Instruct with the search's learning setting (rationale pooled alone, lr 1e-5, 4
prompts x 4 rollouts, 48-token responses, no validation) through `grace.training_run`, exactly as a study arm does,
and prints verl's per-phase timings: generation, reward (the query / negative rationales and the embedding pass),
old log-probs, update, and the checkpoint on the steps that save one, with the checkpoint's share of the run.
Simplification: no floor yet (issue 35 asks for each phase against the CPU's measured matmul rate and memory
bandwidth); the first step is left out of the means (warm-up).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grace.data.assets import smollm2_hf_folder  # noqa: E402
from grace.study.report import machine_description  # noqa: E402
from grace.training_run import DataConfig, TrainingSettings, device, prepare_data, train  # noqa: E402

PHASES = ["gen", "reward", "old_log_prob", "update_actor", "save_checkpoint", "step"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps (the first is warm-up)")
    parser.add_argument("--save_every", type=int, default=2, help="checkpoint every N steps")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2: the first step is warm-up")
    out = args.out or Path(tempfile.mkdtemp(prefix="grace-step-phases-"))
    model = smollm2_hf_folder()
    data = prepare_data(DataConfig(), out / "data", model)
    settings = TrainingSettings(steps=args.steps, save_every=args.save_every, val_every=0, pooling_span="response",
                                lr=1e-5)
    started = time.perf_counter()
    metrics = train(settings, DataConfig().max_prompt, data, model, out / "run", device())
    wall = time.perf_counter() - started
    steps = [m for m in metrics if "timing_s/step" in m][1:]
    print(f"\nmachine: {machine_description()}")
    print(f"{len(steps)} steps after warm-up; seconds per phase (mean over the steps that ran it, min-max):")
    for phase in PHASES:
        values = [m[f"timing_s/{phase}"] for m in steps if f"timing_s/{phase}" in m]
        if values:
            print(f"  {phase:16s} {statistics.mean(values):6.2f}  ({min(values):.2f}-{max(values):.2f}, "
                  f"{len(values)} steps)")
    saves = sum(m.get("timing_s/save_checkpoint", 0.0) for m in steps)
    total = sum(m["timing_s/step"] for m in steps)
    print(f"checkpoints: {saves:.1f} s of {total:.1f} s of steps ({100 * saves / total:.1f}%); "
          f"wall time of the run, start-up included: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
