"""Golden cases from the reference's own reward manager (tests/fixtures/reference_reward/README.md): its inputs
through GRACE's grouping, pooling, reward, length penalty and placement give every component it computed."""

from pathlib import Path

import numpy as np
import pytest
import torch
from verl import DataProto

from grace.pooling import pool_hidden_states
from grace.reward import apply_length_penalty, contrastive_rewards
from grace.verl_ext.reward_manager import group_ids_of, place_rewards

CASES = sorted((Path(__file__).parent / "fixtures" / "reference_reward").glob("case-*.npz"))


def test_every_golden_case_is_present():
    assert len(CASES) == 6


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_grace_reproduces_the_reference_reward_manager(path):
    case = {key: torch.from_numpy(value) for key, value in np.load(path).items()}
    supervised, prefix = bool(case["supervised"]), int(case["system_prefix_length"])
    prompts, responses = case["prompts"], case["responses"]
    response_width = responses.shape[1]

    def pooled(hidden, mask):
        return pool_hidden_states(hidden, mask, prefix_len=prefix)

    main = pooled(case["main_hidden_states"], case["attention_mask"])
    query = pooled(case["query_hidden_states"], case["query_attention_mask"])
    negative = pooled(case["neg_hidden_states"], case["negative_doc_attention_mask"]) if supervised else None
    group_ids = group_ids_of(DataProto.from_dict(tensors={"prompts": prompts}))  # groups: identical prompt rows
    parts = contrastive_rewards(main, query, negative, group_ids, mode="supervised" if supervised else "unsupervised",
                                temperature=0.1, with_scale=True, clustering_weight=0.2, cross_group_weight=0.2)
    names = ["positive", "clustering", "total"] + (["negative", "cross_group"] if supervised else [])
    for name in names:
        torch.testing.assert_close(parts[name].float(), case[f"reference_{name}"], rtol=0, atol=2e-6, msg=name)

    lengths = case["attention_mask"][:, -response_width:].sum(-1)
    last_tokens = responses.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    total = apply_length_penalty(parts["total"], lengths, last_tokens, response_width, int(case["eos_token_id"]))
    torch.testing.assert_close(place_rewards(total, lengths, response_width), case["reference_reward_tensor"],
                               rtol=0, atol=2e-6)
