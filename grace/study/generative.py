"""Generative retention in miniature: which of four short descriptions fits a Wikipedia extract, by the model's own
likelihood (multiple choice, as lm-evaluation-harness scores such tasks).

An item is a held-out article's lead sentences (`leading_sentences`, at most `max_chars`) and four options: its
own short description and the descriptions of three other held-out articles of the same part, drawn with a fixed
seed, in a seeded order. The model's choice is the option with the highest mean log-probability per token as the
continuation of `"{extract}\nIn short:"` (plain text, no chat template: the base capability, as perplexity reads it).
Chance is 25%. Per item: 1 when the choice is the article's own description. The articles are the retrieval task's
(`grace.evaluation.local_tasks.retrieval_articles`: unique descriptions only), so no option is ambiguous.

    python -m grace.study.generative MODEL --items 200 --part dev
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from grace.data.demo import leading_sentences
from grace.embedding import position_ids_from_mask
from grace.evaluation.local_tasks import retrieval_articles

OPTIONS = 4
PROMPT = "{context}\nIn short:"


def description_choice_items(count: int | None = None, part: str = "test", seed: int = 0,
                             max_chars: int = 300) -> list[dict]:
    """[{"context", "options", "answer"}] for the first `count` retrieval articles of `part` (all for None)."""
    articles = retrieval_articles(None, part)
    chosen = articles[:count]
    if len(articles) < OPTIONS:
        raise ValueError(f"{len(articles)} articles cannot give {OPTIONS} options")
    rng = random.Random(seed)
    items = []
    for index, article in enumerate(chosen):
        others = rng.sample([j for j in range(len(articles)) if j != index], OPTIONS - 1)
        options = [article["description"].strip()] + [articles[j]["description"].strip() for j in others]
        order = list(range(OPTIONS))
        rng.shuffle(order)
        items.append({"context": leading_sentences(article["extract"], max_chars),
                      "options": [options[k] for k in order], "answer": order.index(0)})
    return items


@torch.no_grad()
def option_scores(model, tokenizer, items: list[dict], batch_size: int = 16) -> np.ndarray:
    """[items, options] mean log-probability per token of each option after its item's prompt, in float32."""
    model.eval()
    device = next(model.parameters()).device
    rows = []  # (prompt ids, option ids) for every option of every item
    for item in items:
        prompt = tokenizer(PROMPT.format(context=item["context"]), add_special_tokens=False)["input_ids"]
        for option in item["options"]:
            rows.append((prompt, tokenizer(" " + option, add_special_tokens=False)["input_ids"]))
    scores = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        sequences = [p + o for p, o in batch]
        width, tail = max(len(s) for s in sequences), max(len(o) for _, o in batch)
        # left-padded, so that every option ends the row and only the last `tail + 1` positions need logits
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       logits_to_keep=tail + 1).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)  # [batch, tail + 1, vocab]: position -1 predicts nothing
        for row, (_, option) in enumerate(batch):
            positions = torch.arange(tail - len(option), tail, device=device)
            targets = torch.tensor(option, device=device)
            scores.append(float(log_probs[row, positions, targets].mean()))
    return np.array(scores).reshape(len(items), OPTIONS)


def choice_units(model, tokenizer, items: list[dict], batch_size: int = 16) -> np.ndarray:
    """[items]: 1.0 where the most likely option is the right description."""
    chosen = option_scores(model, tokenizer, items, batch_size).argmax(axis=1)
    return (chosen == np.array([item["answer"] for item in items])).astype(np.float64)


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grace.data.assets import smollm2_hf_folder

    parser = argparse.ArgumentParser(prog="python -m grace.study.generative", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, default=None,
                        help="a causal LM folder (default: the packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--items", type=int, default=200, help="items (articles) to score")
    parser.add_argument("--part", default="dev", choices=["dev", "test"], help="held-out part of the articles")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per forward")
    args = parser.parse_args(argv)
    folder = args.model or smollm2_hf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    units = choice_units(model, tokenizer, description_choice_items(args.items, args.part), args.batch_size)
    print(f"{folder}: description choice accuracy {100 * units.mean():.1f}% on {len(units)} {args.part} items "
          f"(chance {100 / OPTIONS:.0f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
