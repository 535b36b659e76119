"""A demo-shaped GRACE training step phase by phase, checkpoints included, against this CPU's floor.

    .venv/bin/python benchmarks/step_phases.py                      # 6 steps, a checkpoint every 2
    .venv/bin/python benchmarks/step_phases.py --steps 10 --save_every 4

Trains the packaged SmolLM2-135M-Instruct with the search's learning setting (rationale pooled alone, lr 1e-5, 4
prompts x 4 rollouts, 48-token responses, no validation) through `grace.training_run`, exactly as a study arm does,
and prints each phase's seconds (mean over the steps after the first, a warm-up) beside its floor: the time the
phase's work needs at this machine's matrix-product rate in the run's dtype and its copy bandwidth, both measured in
this run (`benchmarks/machine_rates.py`), with the work counted from the step's own token counts:
- generation: 2 FLOPs per weight and token (prompt and generated tokens; the LM head for generated tokens only),
  or the weights read once per decode step, whichever takes longer;
- reward: the same for the query and negative rationales, plus the embedding pass (no LM head);
- old log-probs: one forward over every token, counted in the reward's phase when the reward ran it (the training
  reward's default, `share_log_prob_forward`); update: three (forward and backward) plus AdamW's two optimizer steps
  reading parameter, gradient and both moments and writing three of them in float32;
- checkpoint: its bytes at this disk's measured write rate (with fsync).
Simplification: attention's own FLOPs, normalisation and activations are left out of the floor (a few percent of
the products at these lengths), so the floor is a little low, never high.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine_rates import matmul_rate, memory_bandwidth  # noqa: E402
from grace.data.assets import smollm2_hf_folder  # noqa: E402
from grace.study.report import machine_description  # noqa: E402
from grace.training_run import DataConfig, TrainingSettings, device, prepare_data, train  # noqa: E402
from grace.verl_ext.cpu_compat import resolve_cpu_dtype  # noqa: E402

PHASES = ["gen", "reward", "old_log_prob", "update_actor"]
ADAM_BYTES_PER_PARAMETER = 7 * 4  # float32 reads of parameter, gradient, two moments; writes of three


def disk_write_rate(folder: Path, megabytes: int = 512) -> float:
    """Bytes/s of writing a file and syncing it to disk, best of 3."""
    data = os.urandom(megabytes * 2**20)
    best = float("inf")
    for _ in range(3):
        path = folder / "write-rate.bin"
        started = time.perf_counter()
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        best = min(best, time.perf_counter() - started)
        path.unlink()
    return len(data) / best


class Floor:
    """Seconds a phase's work needs at this machine's measured rates."""

    def __init__(self, model_folder: Path, dtype: torch.dtype, out: Path):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_folder)
        with torch.device("meta"):  # shapes only
            parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        self.head = config.vocab_size * config.hidden_size  # the LM head's product
        embeddings = self.head * (1 if config.tie_word_embeddings else 2)  # a lookup, and the head's own count
        self.body = parameters - embeddings  # the layers' products
        self.parameters = parameters
        self.weight_bytes = parameters * torch.finfo(dtype).bits // 8
        cpu = torch.device("cpu")
        self.flops = matmul_rate(cpu, dtype, config.hidden_size, config.intermediate_size)
        self.bandwidth = memory_bandwidth(cpu)
        self.disk = disk_write_rate(out)

    def forward(self, tokens: float, logits: float) -> float:
        return 2 * (self.body * tokens + self.head * logits) / self.flops

    def generation(self, prompt_tokens: float, generated: float, decode_steps: float) -> float:
        weights_reads = decode_steps * self.weight_bytes / self.bandwidth
        return max(self.forward(prompt_tokens + generated, generated), weights_reads)

    def phases(self, m: dict, prompts: int, rollouts: int, optimizer_steps: int) -> dict[str, float]:
        rows = prompts * rollouts
        prompt, response = m["prompt_length/mean"] * rows, m["response_length/mean"] * rows
        rationales = m["grace/work/rationale_tokens"]
        rationale_rows = 2 * prompts  # a query and a negative rationale per group
        log_prob_forward = self.forward(prompt + response, response)
        shared = m.get("grace/work/log_prob_tokens", 0) > 0  # the reward ran the old-log-prob forward
        return {
            "gen": self.generation(prompt, response, m["response_length/max"]),
            "reward": self.generation(m["grace/work/rationale_prompt_tokens"], rationales,
                                      rationales / rationale_rows) + self.forward(m["grace/work/embedded_tokens"], 0)
            + (log_prob_forward if shared else 0.0),
            "old_log_prob": 0.0 if shared else log_prob_forward,
            "update_actor": 3 * self.forward(prompt + response, response)
            + optimizer_steps * ADAM_BYTES_PER_PARAMETER * self.parameters / self.bandwidth,
        }


def checkpoint_bytes(run: Path) -> int:
    latest = (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip()
    folder = run / "checkpoints" / f"global_step_{latest}"
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps (the first is warm-up)")
    parser.add_argument("--save_every", type=int, default=2, help="checkpoint every N steps")
    parser.add_argument("--cpu_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the run's dtype on a CPU (auto: bf16 where the CPU has native bf16)")
    parser.add_argument("--two_forwards", action="store_true",
                        help="the rollouts' embeddings from a forward of their own, not from verl's old-log-prob "
                             "forward (as before the reward shared it)")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2: the first step is warm-up")
    if device() != "cpu":
        raise SystemExit("the floor is a CPU's: run this benchmark on a machine without a GPU")
    out = args.out or Path(tempfile.mkdtemp(prefix="grace-step-phases-"))
    out.mkdir(parents=True, exist_ok=True)
    model = smollm2_hf_folder()
    data = prepare_data(DataConfig(), out / "data", model)
    settings = TrainingSettings(steps=args.steps, save_every=args.save_every, val_every=0, pooling_span="response",
                                lr=1e-5, cpu_dtype=args.cpu_dtype, share_log_prob_forward=not args.two_forwards)
    started = time.perf_counter()
    metrics = train(settings, DataConfig().max_prompt, data, model, out / "run", "cpu")
    wall = time.perf_counter() - started

    dtype = getattr(torch, resolve_cpu_dtype(args.cpu_dtype))
    floor = Floor(model, dtype, out)
    steps = [m for m in metrics if "timing_s/step" in m][1:]
    floors = [floor.phases(m, settings.prompts, settings.rollouts, optimizer_steps=2)  # mini-batches of half the
              for m in steps]                                                          # prompts
    print(f"\nmachine: {machine_description()}")
    print(f"run dtype {dtype}; measured: matmul {floor.flops / 1e9:.0f} GFLOP/s, copy {floor.bandwidth / 1e9:.1f} "
          f"GB/s, disk write {floor.disk / 1e9:.2f} GB/s")
    print(f"{len(steps)} steps after warm-up; seconds per phase, mean (min-max), its floor and measured/floor:")
    measured_total = floor_total = 0.0
    for phase in PHASES:
        values = [m[f"timing_s/{phase}"] for m in steps]
        phase_floor = statistics.mean(f[phase] for f in floors)
        measured_total, floor_total = measured_total + statistics.mean(values), floor_total + phase_floor
        ratio = f"x{statistics.mean(values) / phase_floor:.1f}" if phase_floor else "(its work ran in the reward)"
        print(f"  {phase:14s} {statistics.mean(values):6.2f}  ({min(values):.2f}-{max(values):.2f})  floor "
              f"{phase_floor:5.2f}  {ratio}")
    print(f"  {'these phases':14s} {measured_total:6.2f}  floor {floor_total:5.2f}  "
          f"x{measured_total / floor_total:.1f}")
    whole = statistics.mean(m["timing_s/step"] - m.get("timing_s/save_checkpoint", 0) for m in steps)
    print(f"  {'whole step':14s} {whole:6.2f}  (checkpoints left out; beyond the phases: verl's bookkeeping)  "
          f"x{whole / floor_total:.1f} of the floor")
    saves = [m["timing_s/save_checkpoint"] for m in steps if "timing_s/save_checkpoint" in m]
    if saves:
        size = checkpoint_bytes(out / "run")
        total = sum(m["timing_s/step"] for m in steps)
        print(f"checkpoint: {statistics.mean(saves):.2f} s per save ({len(saves)} saves), {size / 1e9:.2f} GB, "
              f"floor {size / floor.disk:.2f} s; {100 * sum(saves) / total:.1f}% of {total:.0f} s of steps")
    print(f"wall time of the run, start-up included: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
