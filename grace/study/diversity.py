"""Whether a policy still writes a rationale per text: distinct and looping rationales on held-out texts.

A collapsed policy writes the same rationale whatever the text (every embedding is then alike) or loops on a
phrase; KL and entropy say that the policy moved, not into what. Over an arm's greedy rationales of every text the
held-out evaluation embeds: the share of distinct rationales, the share of the most common one, and the share that
loop (one 4-token sequence occurring 4 times or more, overlaps counted).

    python -m grace.study.diversity MODEL --rationale_cache study_out/NAME/rationales.sqlite
                                    [--record study_out/NAME/arms/ARM/result.json]

Simplification: the command line counts the retrieval and Lee texts of a part, not a study's MTEB-offline texts
(the study itself counts every text it embeds).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from grace.study.rationale_cli import add_rationale_flags, load_encoder, record_value

LOOP_NGRAM, LOOP_REPEATS = 4, 4


def loops(ids: list[int], ngram: int = LOOP_NGRAM, repeats: int = LOOP_REPEATS) -> bool:
    """True when one `ngram`-token sequence occurs at least `repeats` times in `ids`."""
    counts = Counter(tuple(ids[start:start + ngram]) for start in range(len(ids) - ngram + 1))
    return max(counts.values(), default=0) >= repeats


def rationale_diversity(rationales: list[list[int]]) -> dict[str, float]:
    """Percentages over the rationales (token ids, one list per text): distinct, most common, looping."""
    if not rationales:
        raise ValueError("rationale_diversity needs at least one rationale")
    counts = Counter(tuple(ids) for ids in rationales)
    n = len(rationales)
    return {"texts": n, "distinct_percent": 100 * len(counts) / n,
            "most_common_percent": 100 * max(counts.values()) / n,
            "looping_percent": 100 * sum(loops(ids) for ids in rationales) / n}


def held_out_rationale_diversity(encoder, texts: list[str]) -> dict[str, float]:
    """The diversity of the encoder's rationales of `texts` (from its rationale cache where the evaluation put them)."""
    prompts = [encoder.prompt_ids(text) for text in texts]
    return rationale_diversity(encoder.cached_rationale_ids(texts, prompts, show_progress_bar=False))


def main(argv=None) -> int:
    from grace.study.heldout import HeldOutEvaluation

    parser = argparse.ArgumentParser(prog="python -m grace.study.diversity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="the model whose rationales count (a Hugging Face folder)")
    parser.add_argument("--part", default="test", choices=["test", "dev"], help="the study's evaluation.part")
    parser.add_argument("--retrieval_queries", type=int, default=None,
                        help="the study's evaluation.retrieval_queries (default: every query of the part)")
    parser.add_argument("--lee_documents", type=int, default=50, help="the study's evaluation.lee_documents")
    add_rationale_flags(parser, record_key="rationale_diversity")
    args = parser.parse_args(argv)
    texts = HeldOutEvaluation(args.part, args.retrieval_queries, args.lee_documents).texts()
    diversity = held_out_rationale_diversity(load_encoder(args.model, args), texts)
    print(f"{diversity['texts']} held-out rationales: {diversity['distinct_percent']:.1f}% distinct, the most common "
          f"{diversity['most_common_percent']:.1f}%, {diversity['looping_percent']:.1f}% looping")
    record_value(args, "rationale_diversity", diversity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
