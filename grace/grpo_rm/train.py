"""Fine-tune a representation model with GRPO-RM (or cross-entropy) and evaluate it.

    python -m grace.grpo_rm.train --data wiki-topics --objective grpo_rm --uniformity prob --output grpo_rm_run
    python -m grace.grpo_rm.train --data digits --encoder digits-cnn --objective ce --steps 300
    python -m grace.grpo_rm.train --data my_labels.csv --encoder path/to/st_or_hf_encoder --save-encoder

Prints a progress bar and a line of metrics every --log-every steps; writes OUTPUT/metrics.jsonl (every step),
OUTPUT/result.json (dev and test scores: head accuracy, softmax-regression probe, kNN k = 20) and, with
--save-encoder, OUTPUT/encoder, a sentence-transformers folder that `eval_mteb.py --baseline_model` scores.
Simplifications: one device, no mixed precision, the whole batch in one forward (no gradient accumulation).
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm import tqdm

from grace.grpo_rm.loop import OBJECTIVES, TrainConfig
from grace.grpo_rm.objective import UNIFORMITY_KINDS
from grace.grpo_rm.policy import HEADS
from grace.grpo_rm.run import RunSettings, run

LOGGED = ("loss", "reward", "true_class_advantage", "clip_fraction", "logit_norm", "accuracy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="wiki-topics",
                   help="wiki-topics (packaged Wikipedia, 11 topics), wiki-descriptions, sentiment, wordnet-nouns "
                        "(Debian wordnet-base), digits, or a JSONL/CSV/parquet file with `text` and `label` columns")
    p.add_argument("--encoder", default=None,
                   help="minilm (packaged all-MiniLM-L6-v2), digits-cnn, or a sentence-transformers / Hugging Face "
                        "encoder folder (default: digits-cnn for --data digits, else minilm)")
    p.add_argument("--objective", choices=OBJECTIVES, default="grpo_rm", help="grpo_rm, or ce (standard fine-tuning)")
    p.add_argument("--frozen", action="store_true", help="no training: evaluate the encoder as it is")
    p.add_argument("--head", choices=HEADS, default="linear", help="linear (W h + b) or cosine (cos(h, w) / T)")
    p.add_argument("--temperature", type=float, default=0.05, help="T of the cosine head")
    p.add_argument("--uniformity", choices=UNIFORMITY_KINDS, default="prob", help="uniformity reward (ours: prob)")
    p.add_argument("--uniformity-weight", type=float, default=1.0, help="lambda, weight of the uniformity reward")
    p.add_argument("--accuracy-weight", type=float, default=1.0, help="alpha, weight of the accuracy reward")
    p.add_argument("--prototype-sharpness", type=float, default=2.0, help="t of the prototype uniformity")
    p.add_argument("--clip-eps", type=float, default=0.2, help="epsilon of the clipped ratio")
    p.add_argument("--inner-updates", type=int, default=2, help="mu, optimizer steps per GRPO-RM batch")
    p.add_argument("--group-size", type=int, default=None,
                   help="sample this many classes per input from pi_old (default: the whole class set)")
    p.add_argument("--policy-weighted", action="store_true",
                   help="weigh the whole class set by pi_old (the sampled group's expectation) instead of 1/C")
    p.add_argument("--dual-clip", type=float, default=0.0,
                   help="c > 1: bound a negative advantage's term below by c A (dual-clip PPO; 0: off)")
    p.add_argument("--steps", type=int, default=100, help="training batches")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per batch")
    p.add_argument("--encoder-lr", type=float, default=3e-5, help="AdamW learning rate of the encoder")
    p.add_argument("--head-lr", type=float, default=1e-3, help="AdamW learning rate of the head")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text")
    p.add_argument("--dev-per-class", type=int, default=20, help="dev examples per class (stratified)")
    p.add_argument("--test-per-class", type=int, default=50, help="test examples per class (stratified)")
    p.add_argument("--train-per-class", type=int, default=None, help="cap on training examples per class")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed train/dev/test split")
    p.add_argument("--ood-data", default=None, help="a second labelled corpus for the out-of-distribution probe")
    p.add_argument("--imbalance", type=float, default=1.0,
                   help="train on a long-tailed subsample with this ratio of largest to smallest class (1: balanced)")
    p.add_argument("--shift-data", default=None,
                   help="the data's items in another text domain with the same labels (wiki-descriptions for "
                        "wiki-topics): the trained head and probes are also scored on its test items")
    p.add_argument("--score-at", type=int, nargs="*", default=[],
                   help="earlier steps (multiples of --evaluate-every) at which the test split is scored too")
    p.add_argument("--evaluate-every", type=int, default=25, help="dev head accuracy every N steps (0: never)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--output", default="grpo_rm_run", help="output folder")
    p.add_argument("--save-encoder", action="store_true", help="save the trained encoder to OUTPUT/encoder")
    p.add_argument("--log-every", type=int, default=10, help="print a metrics line every N steps")
    return p


def settings_from_args(args) -> tuple[RunSettings, TrainConfig]:
    encoder = args.encoder or ("digits-cnn" if args.data == "digits" else "minilm")
    settings = RunSettings(data=args.data, encoder=encoder, head=args.head, temperature=args.temperature,
                           max_length=args.max_length, dev_per_class=args.dev_per_class,
                           test_per_class=args.test_per_class, train_per_class=args.train_per_class,
                           split_seed=args.split_seed, ood_data=args.ood_data, imbalance=args.imbalance,
                           shift_data=args.shift_data, score_at=tuple(args.score_at),
                           evaluate_every=args.evaluate_every, device=args.device)
    config = TrainConfig(objective=args.objective, steps=args.steps, batch_size=args.batch_size,
                         encoder_lr=args.encoder_lr, head_lr=args.head_lr, train_encoder=not args.freeze_encoder,
                         inner_updates=args.inner_updates, clip_eps=args.clip_eps,
                         accuracy_weight=args.accuracy_weight, uniformity=args.uniformity,
                         uniformity_weight=args.uniformity_weight, prototype_sharpness=args.prototype_sharpness,
                         group_size=args.group_size, policy_weighted=args.policy_weighted,
                         dual_clip=args.dual_clip, seed=args.seed)
    return settings, config


def format_record(record: dict) -> str:
    parts = [f"step {record['step']}"]
    parts += [f"{name} {record[name]:.3f}" for name in LOGGED if name in record]
    if "eval_dev_head_accuracy" in record:
        parts.append(f"dev acc {record['eval_dev_head_accuracy']:.3f}")
    if "seconds" in record:
        parts.append(f"{record['seconds']:.2f} s/step, {record['seconds_left'] / 60:.1f} min left")
    return " | ".join(parts)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.log_every < 1:
        raise SystemExit(f"--log-every must be at least 1, got {args.log_every}")
    settings, config = settings_from_args(args)
    bar = tqdm(total=0 if args.frozen else config.steps, desc=f"{config.objective} training", unit="step")

    def show(record: dict) -> None:
        if record["step"] == 0 or "eval_dev_head_accuracy" in record or record["step"] % args.log_every == 0:
            tqdm.write(format_record(record))
        if record["step"]:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")

    result = run(settings, config, args.output, frozen=args.frozen, save_encoder=args.save_encoder, on_step=show)
    bar.close()
    print(json.dumps({"test": result["test"], **({"ood": result["ood"]} if "ood" in result else {}),
                      "seconds_per_step": result["seconds_per_step"]}, indent=1))
    print(f"wrote {args.output}/result.json and metrics.jsonl")
    return result


if __name__ == "__main__":
    main()
