"""The workers' embedding pass: micro-batches within the token budget, valid tokens only, same embeddings."""

import pytest
import torch
from tensordict import TensorDict
from transformers import AutoModelForCausalLM

import grace.verl_ext.worker as worker
from grace.embedding import embed_sequences, position_ids_from_mask
from grace.verl_ext.worker import pooled_embeddings_in_token_budget, token_budget_micro_batches

PROMPT, RESPONSE, BUDGET = 40, 24, 100


def verl_layout(lengths, generator):
    """Rows as verl lays them out: prompt left-padded to PROMPT, response right-padded to RESPONSE."""
    ids = torch.zeros(len(lengths), PROMPT + RESPONSE, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, response) in enumerate(lengths):
        span = slice(PROMPT - prompt, PROMPT + response)
        ids[row, span] = torch.randint(3, 400, (prompt + response,), generator=generator)
        mask[row, span] = 1
    return TensorDict({"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask),
                       "pool_skip": torch.tensor([p // 3 for p, _ in lengths])}, batch_size=len(lengths))


def test_each_forward_stays_in_the_token_budget_and_embeddings_do_not_change(tiny_model_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [(int(torch.randint(5, PROMPT + 1, (1,), generator=generator)),
                int(torch.randint(0, RESPONSE + 1, (1,), generator=generator))) for _ in range(13)]
    batch = verl_layout(lengths, generator)
    shapes = []

    def recording(model, input_ids, attention_mask, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        assert attention_mask.sum(-1).max() == input_ids.shape[1]  # no column that every row pads
        return embed_sequences(model, input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(worker, "embed_sequences", recording)
    pooled = pooled_embeddings_in_token_budget(model, batch, BUDGET)
    assert sum(rows for rows, _ in shapes) == len(lengths)
    assert all(rows * width <= BUDGET for rows, width in shapes), shapes
    for row in range(len(lengths)):  # against the row alone, at its verl layout
        alone = embed_sequences(model, batch["input_ids"][row : row + 1], batch["attention_mask"][row : row + 1],
                                batch["position_ids"][row : row + 1], batch["pool_skip"][row : row + 1])
        torch.testing.assert_close(pooled[row], alone[0], rtol=1e-5, atol=1e-5)


def test_micro_batches_are_split_to_the_count_every_rank_runs():
    lengths = [30, 5, 12, 30, 7, 1, 19]
    alone = token_budget_micro_batches(lengths, 60)
    assert sorted(i for rows in alone for i in rows) == list(range(7))
    assert all(len(rows) * max(lengths[i] for i in rows) <= 60 for rows in alone)
    for count in (len(alone), len(alone) + 2, 7):
        split = token_budget_micro_batches(lengths, 60, count)
        assert len(split) == count and sorted(i for rows in split for i in rows) == list(range(7))
    with pytest.raises(ValueError, match="7 rows cannot make 8 micro-batches"):
        token_budget_micro_batches(lengths, 60, 8)
    assert token_budget_micro_batches([500, 3], 60) == [[0], [1]]  # a row over the budget goes alone
