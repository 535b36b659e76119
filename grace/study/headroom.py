"""Reward headroom, without training: is the best of n sampled rationales, by the training reward, a better
embedding than a random sample?

    python -m grace.study.headroom --model PATH --documents 100 --n 8 --out headroom_out

GRPO can only move the policy towards rationales that its reward ranks higher than their group. For each
held-out document (a Wikipedia extract, the positive; its short description is the query) this samples n
rationales at the rollout temperature, as one training group, and gives the query and a hard negative (another
held-out extract of the same topic) greedy rationales. Each sample is scored with the training reward
(`grace.reward.contrastive_rewards`, supervised mode, no length penalty), `--groups_per_batch` documents at a time
as in a training step. Retrieval of the documents from their queries (greedy query rationales) is then scored with
each document embedded from (a) its greedy rationale, (b) one random sample, (c) the sample with the highest
reward: an oracle ceiling, since the reward uses the known pair. If (c) is no better than (b), the reward cannot
teach this task whatever the optimiser does. Reported per reward variant and per pooling span, with the paired
bootstrap interval of (c) - (b) and the prompt-only score for reference; OUT/headroom.md and OUT/headroom.json.

Simplifications: the query and negative rationales are greedy (training samples them at 0.5), and all n samples
of every document are drawn in one seeded generator call (continuous batching).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from grace.embedding import last_hidden_states
from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder, left_pad
from grace.evaluation.local_tasks import retrieval_articles
from grace.evaluation.rationale_cache import RationaleCache, encoder_namespace
from grace.pooling import POOLING_SPANS, pool_hidden_states, pooling_skip
from grace.reward import contrastive_rewards
from grace.study.heldout import retrieval_per_query
from grace.study.stats import paired_bootstrap

VARIANTS = ("reference", "infonce")


def hard_negatives(articles: list[dict], seed: int = 0) -> list[int]:
    """For each article, the index of another article of the same topic (any other when it has no peer)."""
    rng = random.Random(seed)
    negatives = []
    for i, article in enumerate(articles):
        peers = [j for j, other in enumerate(articles) if j != i and other.get("topic") == article.get("topic")]
        negatives.append(rng.choice(peers or [j for j in range(len(articles)) if j != i]))
    return negatives


@torch.no_grad()
def embed_spans(encoder: GraceEncoder, prompts: list[list[int]], rationales: list[list[int]],
                batch_size: int = 16) -> dict[str, np.ndarray]:
    """{span: float32 [N, H]} embeddings of prompt + rationale for every pooling span, one forward per sequence."""
    out = {span: [] for span in POOLING_SPANS}
    for start in range(0, len(prompts), batch_size):
        batch_prompts = prompts[start : start + batch_size]
        sequences = [p + r for p, r in zip(batch_prompts, rationales[start : start + batch_size])]
        ids, mask = left_pad(sequences, encoder.pad_id, encoder.model.device)
        hidden = last_hidden_states(encoder.model, ids, mask)
        lengths = torch.tensor([len(p) for p in batch_prompts])
        for span in POOLING_SPANS:
            skip = pooling_skip(lengths, span, encoder.prefix_len).to(hidden.device)
            out[span].append(pool_hidden_states(hidden, mask, prefix_len=skip).cpu())
    return {span: torch.cat(parts).numpy() for span, parts in out.items()}


def sample_rationales(encoder: GraceEncoder, prompts: list[list[int]], n: int, settings: GenerationSettings
                      ) -> list[list[int]]:
    """n sampled rationales per prompt, [prompt 0's n, prompt 1's n, ...], from one seeded generator call."""
    repeated = [p for p in prompts for _ in range(n)]
    with tqdm(total=len(repeated), desc=f"sampling {n} rationales per document", unit="rationale") as bar:
        return encoder.generator.generate(repeated, settings, on_finished=bar.update)


def sample_rewards(main: np.ndarray, query: np.ndarray, negative: np.ndarray, variant: str,
                   groups_per_batch: int, temperature: float) -> np.ndarray:
    """[D, n] training reward of each sample (main [D, n, H]) against its document's query and negative [D, H]."""
    documents, n, _ = main.shape
    rewards = np.zeros((documents, n))
    for start in range(0, documents, groups_per_batch):
        chunk = slice(start, min(start + groups_per_batch, documents))
        groups = chunk.stop - chunk.start
        group_ids = torch.arange(groups).repeat_interleave(n)
        rows = lambda x, chunk=chunk: torch.from_numpy(np.repeat(x[chunk], n, axis=0))
        parts = contrastive_rewards(torch.from_numpy(main[chunk].reshape(groups * n, -1)), rows(query), rows(negative),
                                    group_ids, mode="supervised", temperature=temperature, variant=variant)
        rewards[chunk] = parts["total"].double().numpy().reshape(groups, n)
    return rewards


def accuracy(units: np.ndarray) -> float:
    return 100 * float(units.mean())


def headroom(encoder: GraceEncoder, documents: int, n: int, rollout: GenerationSettings, groups_per_batch: int = 4,
             reward_temperature: float = 0.1, batch_size: int = 16, seed: int = 0, part: str = "dev") -> dict:
    """The whole analysis on the held-out `part`'s documents; returns the JSON-ready result (per span and variant),
    with per-document rewards."""
    articles = retrieval_articles(documents, part)
    queries = [a["description"].strip() for a in articles]
    texts = [a["extract"].strip() for a in articles]
    negatives = hard_negatives(articles, seed)
    query_prompts = [encoder.prompt_ids(q) for q in queries]
    document_prompts = [encoder.prompt_ids(t) for t in texts]

    print("greedy rationales of the queries and documents", flush=True)
    greedy = encoder.cached_rationale_ids(queries + texts, query_prompts + document_prompts, True)
    print(f"{n} sampled rationales per document at temperature {rollout.temperature}", flush=True)
    samples = sample_rationales(encoder, document_prompts, n, rollout)
    print("embeddings", flush=True)
    query_emb = embed_spans(encoder, query_prompts, greedy[: len(queries)], batch_size)
    greedy_emb = embed_spans(encoder, document_prompts, greedy[len(queries):], batch_size)
    sample_emb = embed_spans(encoder, [p for p in document_prompts for _ in range(n)], samples, batch_size)
    prompt_only = embed_spans(encoder, query_prompts + document_prompts, [[]] * (2 * documents), batch_size)[
        "prompt+response"]

    rng = np.random.default_rng(seed)
    random_pick = rng.integers(0, n, size=documents)
    lengths = np.array([len(s) for s in samples]).reshape(documents, n)
    result = {"documents": documents, "n": n, "rollout_temperature": rollout.temperature,
              "max_new_tokens": rollout.max_new_tokens, "reward_temperature": reward_temperature,
              "groups_per_batch": groups_per_batch, "seed": seed, "mean_sample_length": float(lengths.mean()),
              "prompt_only_accuracy_at_1": accuracy(
                  retrieval_per_query(prompt_only[:documents], prompt_only[documents:])["hit_at_1"]),
              "spans": {}}
    for span in POOLING_SPANS:
        main = sample_emb[span].reshape(documents, n, -1)
        greedy_units = retrieval_per_query(query_emb[span], greedy_emb[span])["hit_at_1"]
        random_units = retrieval_per_query(query_emb[span], main[np.arange(documents), random_pick])["hit_at_1"]
        entry = {"greedy_accuracy_at_1": accuracy(greedy_units), "random_accuracy_at_1": accuracy(random_units),
                 "greedy_minus_random": paired_bootstrap(100 * greedy_units, 100 * random_units), "variants": {}}
        for variant in VARIANTS:
            rewards = sample_rewards(main, query_emb[span], greedy_emb[span][negatives], variant, groups_per_batch,
                                     reward_temperature)
            best = rewards.argmax(axis=1)
            best_units = retrieval_per_query(query_emb[span], main[np.arange(documents), best])["hit_at_1"]
            entry["variants"][variant] = {
                "best_accuracy_at_1": accuracy(best_units),
                "best_minus_random": paired_bootstrap(100 * best_units, 100 * random_units),  # points
                "mean_within_group_reward_std": float(rewards.std(axis=1, ddof=1).mean()) if n > 1 else 0.0,
                "best_index": best.tolist(), "rewards": rewards.round(6).tolist()}
        result["spans"][span] = entry
    return result


def headroom_markdown(result: dict, settings: dict) -> str:
    lines = ["# Reward headroom (no training)", "",
             f"{result['documents']} held-out documents, {result['n']} rationales sampled per document at temperature "
             f"{result['rollout_temperature']} (at most {result['max_new_tokens']} tokens, mean "
             f"{result['mean_sample_length']:.1f}); reward temperature {result['reward_temperature']}, "
             f"{result['groups_per_batch']} documents per reward batch. Retrieval accuracy@1 (%) of the documents from "
             f"their descriptions; prompt-only embedding: {result['prompt_only_accuracy_at_1']:.1f}.", "",
             "| span | variant | greedy | random sample | best of n by reward | best - random, points [95% CI] | "
             "mean within-group reward std |", "|---|---|---|---|---|---|---|"]
    for span, entry in result["spans"].items():
        for variant, v in entry["variants"].items():
            ci = v["best_minus_random"]
            lines.append(f"| {span} | {variant} | {entry['greedy_accuracy_at_1']:.1f} | "
                         f"{entry['random_accuracy_at_1']:.1f} | {v['best_accuracy_at_1']:.1f} | "
                         f"{ci['diff']:+.1f} [{ci['ci_low']:+.1f}, {ci['ci_high']:+.1f}] | "
                         f"{v['mean_within_group_reward_std']:.4f} |")
    lines += ["", "If best-of-n is not above a random sample (interval including 0), the reward does not rank "
              "rationales by how well they retrieve, and GRPO has nothing to learn on this task.", "",
              "Command: `python -m grace.study.headroom " + " ".join(f"--{k} {v}" for k, v in settings.items()) + "`"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="policy folder (default: the packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--documents", type=int, default=100, help="held-out documents (retrieval queries)")
    parser.add_argument("--part", default="dev", choices=["dev", "test"],
                        help="held-out part: dev (a measurement that chooses settings) or test")
    parser.add_argument("--n", type=int, default=8, help="rationales sampled per document (a training group)")
    parser.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    parser.add_argument("--rationale_length", type=int, default=48, help="max rationale tokens")
    parser.add_argument("--reward_temperature", type=float, default=0.1,
                        help="the reward's temperature (train.sh's 0.1)")
    parser.add_argument("--groups_per_batch", type=int, default=4, help="documents per reward batch (prompts per step)")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per embedding forward")
    parser.add_argument("--seed", type=int, default=0, help="sampling, negative and random-pick seed")
    parser.add_argument("--rationale_cache", type=Path, default=None, help="SQLite cache of greedy rationales")
    parser.add_argument("--out", type=Path, default=Path("headroom_out"), help="output folder")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 2:
        raise SystemExit("--n must be at least 2: best-of-n needs a choice")
    if args.model is None:
        from grace.data.assets import smollm2_hf_folder

        args.model = str(smollm2_hf_folder())
    settings = EncoderSettings(generation=GenerationSettings(max_new_tokens=args.rationale_length))
    encoder = GraceEncoder.from_pretrained(args.model, backend="hf", device="cpu", settings=settings)
    args.out.mkdir(parents=True, exist_ok=True)
    encoder.rationale_cache = RationaleCache(args.rationale_cache or args.out / "rationales.sqlite",
                                             encoder_namespace(args.model, encoder))
    rollout = GenerationSettings(max_new_tokens=args.rationale_length, do_sample=True, temperature=args.temperature,
                                 seed=args.seed)
    started = time.perf_counter()
    result = headroom(encoder, args.documents, args.n, rollout, args.groups_per_batch, args.reward_temperature,
                      args.batch_size, args.seed, args.part)
    result["wall_seconds"] = time.perf_counter() - started
    result["model"] = args.model
    (args.out / "headroom.json").write_text(json.dumps(result, indent=1))
    shown = {k: v for k, v in vars(args).items() if k not in ("out", "rationale_cache")}
    (args.out / "headroom.md").write_text(headroom_markdown(result, shown))
    print((args.out / "headroom.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
