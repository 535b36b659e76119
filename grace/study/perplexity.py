"""Generative retention: perplexity of a causal LM on held-out Wikipedia text.

The text is the lead section of held-out articles (never in training data), as plain text without a chat
template; the perplexity is exp of the mean next-token negative log-likelihood over every predicted token of
every text (token-weighted), in float32.
"""

from __future__ import annotations

import math

import torch

from grace.evaluation.local_tasks import held_out_articles


def held_out_texts(count: int = 100) -> list[str]:
    """The extracts of the last `count` held-out articles (fixed; none is in any training set)."""
    articles = held_out_articles()
    if count > len(articles):
        raise ValueError(f"{count} perplexity texts asked for, only {len(articles)} held-out articles exist")
    return [a["extract"].strip() for a in articles[-count:]]


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 256) -> float:
    """Token-weighted perplexity of `model` on `texts` (each cut to `max_length` tokens)."""
    if not texts:
        raise ValueError("perplexity of no text")
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length]
               for t in texts[start : start + batch_size]]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [0] * (width - len(i)) for i in ids], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets, target_mask = input_ids[:, 1:], mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += float(nll[target_mask].sum())
        total_tokens += int(target_mask.sum())
    if total_tokens == 0:
        raise ValueError("the texts have no token to predict (each needs at least 2 tokens)")
    return math.exp(total_nll / total_tokens)
