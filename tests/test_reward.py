"""grace.reward against a plain-loop float64 oracle written from the formulas of spec section 2.5."""

import math

import numpy as np
import pytest
import torch

from grace.reward import apply_length_penalty, contrastive_rewards


# ---------------------------------------------------------------- the oracle: loops over rows and groups, float64
def _cos(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def _groups_in_order(group_ids):
    groups = {}
    for row, gid in enumerate(group_ids):
        groups.setdefault(gid, []).append(row)
    return groups


def oracle_rewards(main, query, negative, group_ids, mode, temperature=0.1, with_scale=True,
                   clustering_weight=0.2, cross_group_weight=0.2, enable_clustering=True, variant="reference"):
    """Per-row dicts of reward components; inputs are lists of lists of Python floats."""
    s = 1.0 / temperature if with_scale else 1.0
    groups = _groups_in_order(group_ids)
    rows = []
    for i in range(len(main)):
        members = groups[group_ids[i]]
        others = [g for g in groups if g != group_ids[i]]
        c = 0.0
        if len(members) > 1:
            c = sum(_cos(main[i], main[j]) for j in members if j != i) / (len(members) - 1)
        if variant == "infonce":
            logits = [_cos(main[i], query[i]) / temperature]
            row = {"positive": logits[0]}
            if mode == "supervised":
                logits.append(_cos(main[i], negative[i]) / temperature)
                row["negative"] = logits[1]
            other = [_cos(main[i], query[groups[g][0]]) / temperature for g in others]
            logits += other
            top = max(logits)
            log_softmax_0 = logits[0] - (top + math.log(sum(math.exp(x - top) for x in logits)))
            row["clustering"] = c * s if enable_clustering else 0.0
            row["cross_group"] = sum(other) / len(other) if other else 0.0
            row["total"] = log_softmax_0 + clustering_weight * row["clustering"]
            rows.append(row)
            continue
        p = _cos(query[i], main[i])
        if not enable_clustering:  # the reference groups nothing without clustering
            row = {"positive": p * s, "clustering": 0.0, "cross_group": 0.0}
            if mode == "supervised":
                row["negative"] = -_cos(query[i], negative[i]) * s
                row["total"] = row["positive"] + row["negative"]
            else:
                row["total"] = row["positive"]
            rows.append(row)
            continue
        if mode == "supervised":
            first = members[0]
            n = -_cos(query[first], negative[first])
            x = 0.0
            if others:
                x = -sum(max(_cos(query[i], main[j]) for j in groups[g]) for g in others) / len(others)
            row = {"positive": p * s, "negative": n * s, "clustering": c * s, "cross_group": x * s}
            row["total"] = (p + n + clustering_weight * c + cross_group_weight * x) * s
        else:
            x = sum(_cos(main[i], query[groups[g][0]]) for g in others) / len(others) if others else 0.0
            row = {"positive": p * s, "clustering": c * s, "cross_group": x * s}
            row["total"] = p * s + clustering_weight * c * s - cross_group_weight * x * s
        rows.append(row)
    return rows


# ---------------------------------------------------------------- inputs
def make_batch(group_sizes, hidden, dtype, seed, shuffle=True):
    """Random embeddings with arbitrary group ids whose rows are interleaved (as after verl's batch balancing)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.full((size,), 1000 + 37 * k) for k, size in enumerate(group_sizes)])
    if shuffle:
        ids = ids[torch.randperm(len(ids), generator=g)]
    batch = len(ids)
    make = lambda: torch.randn(batch, hidden, generator=g).to(dtype)  # noqa: E731
    return make(), make(), make(), ids


def as_lists(t):
    return t.to(torch.float64).tolist() if t is not None else None


CASES = [  # (group sizes, hidden)
    ([1], 4),
    ([8], 16),
    ([8, 8, 8], 32),
    ([1, 4, 3, 5], 8),
    ([2] * 12, 64),
    ([8] * 8, 48),
]


@pytest.mark.parametrize("variant", ["reference", "infonce"])
@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_vectorised_equals_loop_oracle(variant, mode, case, dtype):
    sizes, hidden = CASES[case]
    main, query, negative, ids = make_batch(sizes, hidden, dtype, seed=case)
    negative = negative if mode == "supervised" else None
    got = contrastive_rewards(main, query, negative, ids, mode=mode, variant=variant)
    want = oracle_rewards(as_lists(main), as_lists(query), as_lists(negative), ids.tolist(), mode, variant=variant)
    assert set(got) == set(want[0])
    for name in got:
        assert got[name].shape == (len(ids),)
        expected = torch.tensor([row[name] for row in want], dtype=torch.float64)
        torch.testing.assert_close(got[name].to(torch.float64), expected, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("variant", ["reference", "infonce"])
@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("settings", [
    dict(temperature=0.7, with_scale=False, clustering_weight=0.5, cross_group_weight=1.0),
    dict(temperature=0.05, with_scale=True, clustering_weight=0.0, cross_group_weight=0.3),
    dict(enable_clustering=False),
])
def test_settings_match_oracle(variant, mode, settings):
    main, query, negative, ids = make_batch([4, 4, 2, 1], 24, torch.float32, seed=7)
    negative = negative if mode == "supervised" else None
    got = contrastive_rewards(main, query, negative, ids, mode=mode, variant=variant, **settings)
    want = oracle_rewards(as_lists(main), as_lists(query), as_lists(negative), ids.tolist(), mode,
                          variant=variant, **settings)
    for name in got:
        expected = torch.tensor([row[name] for row in want], dtype=torch.float64)
        torch.testing.assert_close(got[name].to(torch.float64), expected, rtol=1e-5, atol=1e-5, msg=name)


def test_zero_embedding_gives_zero_cosine_not_nan():
    main, query, negative, ids = make_batch([3, 3], 8, torch.float32, seed=1)
    main[0] = 0.0
    got = contrastive_rewards(main, query, negative, ids, mode="supervised")
    assert all(torch.isfinite(v).all() for v in got.values())
    assert got["positive"][0] == 0.0


# ---------------------------------------------------------------- what GRPO's mean baseline does with the terms
def grpo_advantages(scores, ids):
    """verl's own GRPO outcome advantage (mean baseline, no std), the estimator GRACE trains with."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    token_rewards = torch.zeros(len(scores), 3)
    token_rewards[:, -1] = scores
    advantages, _ = compute_grpo_outcome_advantage(
        token_rewards, torch.ones(len(scores), 3), np.array(ids.tolist()), norm_adv_by_std_in_grpo=False
    )
    return advantages[:, -1]


def repeated_per_group(rows, ids):
    """Rows of one group share the same vector, as the reference repeats one query / negative rationale."""
    first = {}
    return torch.stack([rows[first.setdefault(int(g), i)] for i, g in enumerate(ids)])


def test_group_constant_terms_cancel_in_reference_but_not_in_infonce():
    main, query, negative, ids = make_batch([8, 8, 8, 8], 32, torch.float32, seed=3)
    query, negative = repeated_per_group(query, ids), repeated_per_group(negative, ids)
    other_negative = repeated_per_group(torch.randn_like(negative), ids)

    reference = [contrastive_rewards(main, query, n, ids, mode="supervised")["total"]
                 for n in (negative, other_negative)]
    assert not torch.allclose(reference[0], reference[1])  # the negative changes the reward ...
    torch.testing.assert_close(grpo_advantages(reference[0], ids), grpo_advantages(reference[1], ids),
                               rtol=1e-5, atol=1e-5)  # ... but not the advantage

    infonce = [contrastive_rewards(main, query, n, ids, mode="supervised", variant="infonce")["total"]
               for n in (negative, other_negative)]
    assert (grpo_advantages(infonce[0], ids) - grpo_advantages(infonce[1], ids)).abs().max() > 1e-3


def test_adding_a_per_group_constant_leaves_advantages_unchanged():
    main, query, negative, ids = make_batch([8, 8, 8], 16, torch.float32, seed=4)
    total = contrastive_rewards(main, query, negative, ids, mode="supervised")["total"]
    constant = {int(g): 5.0 * k for k, g in enumerate(ids.unique())}
    shifted = total + torch.tensor([constant[int(g)] for g in ids])
    torch.testing.assert_close(grpo_advantages(total, ids), grpo_advantages(shifted, ids), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(mode="contrastive"), "unknown mode"),
    (lambda a: a.update(variant="simcse"), "unknown variant"),
    (lambda a: a.update(temperature=0.0), "temperature"),
    (lambda a: a.update(query=a["query"][:, :-1]), "query has shape"),
    (lambda a: a.update(negative=a["negative"][:-1]), "negative has shape"),
    (lambda a: a.update(negative=None), "needs negative"),
    (lambda a: a["main"].__setitem__((2, 0), float("nan")), "NaN or infinite"),
    (lambda a: a["query"].__setitem__((0, 1), float("inf")), "NaN or infinite"),
    (lambda a: a.update(group_ids=a["group_ids"][:-1]), "group_ids must be"),
    (lambda a: a.update(group_ids=a["group_ids"].float()), "must be integers"),
    (lambda a: a.update(main=torch.zeros(0, 4), query=torch.zeros(0, 4)), "non-empty"),
])
def test_bad_input_is_a_clear_error(change, message):
    main, query, negative, ids = make_batch([2, 2], 4, torch.float32, seed=0)
    args = dict(main=main, query=query, negative=negative, group_ids=ids, mode="supervised", variant="reference",
                temperature=0.1)
    change(args)
    with pytest.raises(ValueError, match=message):
        contrastive_rewards(args.pop("main"), args.pop("query"), args.pop("negative"), args.pop("group_ids"), **args)


def test_unsupervised_refuses_a_negative():
    main, query, negative, ids = make_batch([2, 2], 4, torch.float32, seed=0)
    with pytest.raises(ValueError, match="takes no negative"):
        contrastive_rewards(main, query, negative, ids, mode="unsupervised")


# ---------------------------------------------------------------- length penalty
def test_length_penalty_checks_every_eos_id():
    total = torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0])
    lengths = torch.tensor([16, 16, 16, 10, 16])
    last = torch.tensor([7, 151645, 151643, 9, 151643])
    got = apply_length_penalty(total, lengths, last, 16, [151645, 151643])
    assert got.tolist() == [-1.0, 3.0, 3.0, 3.0, 3.0]
    # The reference's single-id check would have penalised the response ending in the second EOS id.
    assert apply_length_penalty(total, lengths, last, 16, 151645).tolist() == [-1.0, 3.0, -1.0, 3.0, -1.0]
