"""Time grace.reward against the plain-loop oracle of tests/test_reward.py and print the speed-up.

    python benchmarks/reward_speed.py            # B=512 (64 groups of 8), H=1536, supervised, reference
The oracle is slow on purpose (pure Python loops over rows and groups, like the reference's reward manager):
expect it to take a minute or two. Both are timed in this one run, on this machine.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grace.reward import contrastive_rewards  # noqa: E402
from tests.test_reward import as_lists, make_batch, oracle_rewards  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=64, help="prompts per step")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt (group size)")
    parser.add_argument("--hidden", type=int, default=1536, help="embedding size (Qwen2.5-1.5B: 1536)")
    parser.add_argument("--mode", default="supervised", choices=["supervised", "unsupervised"], help="reward mode")
    parser.add_argument("--variant", default="reference", choices=["reference", "infonce"], help="reward variant")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the library (median is reported)")
    args = parser.parse_args()

    main_emb, query, negative, ids = make_batch([args.rollouts] * args.groups, args.hidden, torch.float32, seed=0)
    negative = negative if args.mode == "supervised" else None
    kwargs = dict(mode=args.mode, variant=args.variant)

    contrastive_rewards(main_emb, query, negative, ids, **kwargs)  # warm-up
    library_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        got = contrastive_rewards(main_emb, query, negative, ids, **kwargs)
        library_times.append(time.perf_counter() - start)
    library = statistics.median(library_times)

    lists = as_lists(main_emb), as_lists(query), as_lists(negative)
    start = time.perf_counter()
    want = oracle_rewards(*lists, ids.tolist(), args.mode, variant=args.variant)
    oracle = time.perf_counter() - start

    max_error = max(abs(got["total"][i].item() - row["total"]) for i, row in enumerate(want))
    print(f"B={len(ids)} ({args.groups} groups of {args.rollouts}), H={args.hidden}, {args.mode}, {args.variant}, "
          f"torch threads={torch.get_num_threads()}")
    print(f"library (vectorised, float32): {library * 1e3:.2f} ms (median of {args.repeats})")
    print(f"loop oracle (float64):         {oracle * 1e3:.0f} ms")
    print(f"max |difference| of total:     {max_error:.2e}")
    print(f"speed-up: {oracle / library:.0f}x")


if __name__ == "__main__":
    main()
