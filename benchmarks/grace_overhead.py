"""Step time of GRACE's `hidden` reward against plain GRPO with a trivial per-sample reward, same config.

    python benchmarks/grace_overhead.py [--steps 4] [--rollouts 8]

Both runs use the tiny test model on the CPU (HF rollout, FSDP2, 1 rank), the same data, batch, rollouts and
response length; the first step of each is dropped as warm-up and the mean `timing_s/step` of the rest is
compared. GRACE's extra work per step: one rationale per prompt for the query and the negative document, and one
embedding pass over rollouts and rationales.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grace.train import run_grace  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402
from tests.training import compose_config, read_metrics, tiny_overrides, write_tiny_dataset  # noqa: E402


def step_times(metrics):
    return [m["timing_s/step"] for m in metrics[1:]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (the first is warm-up)")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt (the reference uses 8)")
    parser.add_argument("--response_length", type=int, default=32, help="max response tokens")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "model")
        data = write_tiny_dataset(tmp / "data", "supervised", train_rows=4 * args.steps)
        common = [f"actor_rollout_ref.rollout.n={args.rollouts}", f"data.max_response_length={args.response_length}",
                  "trainer.save_freq=-1", "trainer.rollout_data_dir=null", "actor_rollout_ref.actor.use_kl_loss=False"]
        runs = {
            "trivial per-sample reward": ["reward_model.reward_manager=naive",
                                          f"custom_reward_function.path={ROOT / 'tests/trivial_reward.py'}",
                                          "custom_reward_function.name=compute_score"],
            "GRACE hidden reward": ["reward_model.reward_manager=hidden",
                                    "+reward_model.reward_kwargs.temperature=0.1"],
        }
        results = {}
        for name, extra in runs.items():
            out = tmp / name.split()[0]
            out.mkdir()
            run_grace(compose_config(tiny_overrides(data, model, out, steps=args.steps) + common + extra))
            metrics = read_metrics(out)
            results[name] = (statistics.mean(step_times(metrics)),
                             statistics.mean(m["timing_s/reward"] for m in metrics[1:]))

    print(f"tiny model, 4 prompts x {args.rollouts} rollouts, responses <= {args.response_length} tokens, "
          f"{args.steps - 1} timed steps each")
    for name, (step, reward) in results.items():
        print(f"{name:28s} step {step:.3f} s   (reward {reward:.3f} s)")
    plain, grace = results["trivial per-sample reward"][0], results["GRACE hidden reward"][0]
    print(f"GRACE step / plain GRPO step: {grace / plain:.2f}x")


if __name__ == "__main__":
    main()
