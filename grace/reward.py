"""GRACE's contrastive reward: one scalar per rollout from pooled embeddings, fully vectorised.

Inputs are [B, H] embeddings of the B rollouts of one step (`main`), of the query rationale that belongs to
each row (`query`; in unsupervised mode the anchor, a second rollout of the same sentence) and, in supervised
mode, of the negative document's rationale (`negative`). `group_ids` [B] says which rows are the rollouts of
one prompt. Similarities are cosines.

variant="reference" reproduces the reference implementation's formulas exactly (spec section 2.5), with
tau = `temperature` and lambda1 / lambda2 = `clustering_weight` / `cross_group_weight`:

  supervised    R_i = (P_i + N_i + lambda1 C_i + lambda2 X_i) / tau
                P_i = cos(q_i, m_i)                     N_i = -cos(q_first(g), n_first(g))
                C_i = mean_{j in g, j != i} cos(m_i, m_j)
                X_i = -mean_{h != g} max_{j in h} cos(q_i, m_j)
  unsupervised  R_i = P_i / tau + lambda1 C_i / tau - lambda2 X_i / tau
                X_i = mean_{h != g} cos(m_i, a_h),  a_h = query (anchor) of the first row of group h

(the division by tau only when `with_scale`). As in the reference: C_i = 0 for a group of one; X_i = 0 when the
batch holds a single group; the cross-group term is stored negative in supervised mode and positive (then
subtracted) in unsupervised mode; and grouping happens only when `enable_clustering`, so without it the
supervised reward is (P_i - cos(q_i, n_i)) / tau per row and the unsupervised one P_i / tau.

variant="infonce" exists because, under GRPO's group-mean baseline, any reward term that is constant within a
group cancels out of the advantage (spec section 2.6). In the reference's supervised mode the query and the
negative are one rationale repeated over the group, so N_i and X_i are (up to noise) the same for every
rollout of a group and the policy never sees the negative or the hard negatives. InfoNCE puts the rollout
itself into every term: with the logits

  l_i = [cos(m_i, q_i), cos(m_i, n_i) (supervised only), cos(m_i, a_h) for every other group h] / tau

its reward is R_i = log_softmax(l_i)[0] + lambda1 * clustering_i, where clustering_i is C_i scaled as in the
reference (divided by tau when `with_scale`). The logits are always divided by tau: it is the softmax
temperature. Its components report the positive, negative and mean other-group logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grace.prompts import token_id_list

MODES = ("supervised", "unsupervised")
VARIANTS = ("reference", "infonce")


@dataclass(frozen=True)
class _Groups:
    index: torch.Tensor  # [B] group number of each row, 0..G-1
    first_row: torch.Tensor  # [G] batch position of each group's first row
    size_of_row: torch.Tensor  # [B] size of each row's group
    count: int

    @classmethod
    def from_ids(cls, group_ids: torch.Tensor) -> "_Groups":
        _, index = torch.unique(group_ids, return_inverse=True)
        count = int(index.max().item()) + 1
        positions = torch.arange(index.numel(), device=index.device)
        first_row = torch.full((count,), index.numel(), device=index.device, dtype=torch.long)
        first_row = first_row.scatter_reduce(0, index, positions, reduce="amin")
        size_of_row = torch.bincount(index, minlength=count)[index]
        return cls(index=index, first_row=first_row, size_of_row=size_of_row, count=count)

    def other_group_mask(self) -> torch.Tensor:
        """[B, G], True where group h is not row i's group."""
        return torch.arange(self.count, device=self.index.device)[None, :] != self.index[:, None]


def _check_inputs(main, query, negative, group_ids, mode, variant, temperature):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if main.dim() != 2 or main.shape[0] == 0:
        raise ValueError(f"main must be a non-empty [B, H] tensor, got shape {tuple(main.shape)}")
    named = {"main": main, "query": query}
    if mode == "supervised":
        if negative is None:
            raise ValueError("supervised mode needs negative embeddings; got None")
        named["negative"] = negative
    elif negative is not None:
        raise ValueError("unsupervised mode takes no negative embeddings (pass negative=None)")
    for name, tensor in named.items():
        if tensor.shape != main.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, main has {tuple(main.shape)}")
        if not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).any(dim=-1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name} embeddings contain NaN or infinite values (rows {bad} ...)")
    if group_ids.dim() != 1 or group_ids.shape[0] != main.shape[0]:
        raise ValueError(f"group_ids must be [B] = [{main.shape[0]}], got shape {tuple(group_ids.shape)}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be integers, got {group_ids.dtype}")


def _mean_similarity_within_group(main: torch.Tensor, groups: _Groups) -> torch.Tensor:
    """C_i: mean cosine between rollout i and the other rollouts of its group; 0 for a group of one."""
    similarity = main @ main.T
    same_group = groups.index[:, None] == groups.index[None, :]
    others_sum = (similarity * same_group).sum(dim=1) - similarity.diagonal()
    others = (groups.size_of_row - 1).to(main.dtype)
    return torch.where(others > 0, others_sum / others.clamp(min=1), torch.zeros_like(others_sum))


def _mean_over_other_groups(per_group: torch.Tensor, groups: _Groups) -> torch.Tensor:
    """Mean of a [B, G] table over the groups other than each row's own; 0 when there is no other group."""
    if groups.count == 1:
        return torch.zeros(per_group.shape[0], dtype=per_group.dtype, device=per_group.device)
    return per_group.masked_fill(~groups.other_group_mask(), 0.0).sum(dim=1) / (groups.count - 1)


def _max_similarity_per_group(query: torch.Tensor, main: torch.Tensor, groups: _Groups) -> torch.Tensor:
    """[B, G]: for row i and group h, max_{j in h} cos(q_i, m_j)."""
    similarity = query @ main.T
    table = torch.full((main.shape[0], groups.count), float("-inf"), dtype=main.dtype, device=main.device)
    return table.scatter_reduce(1, groups.index.expand_as(similarity), similarity, reduce="amax")


def _reference_rewards(m, q, n, groups, mode, scale, clustering_weight, cross_group_weight):
    positive = (q * m).sum(dim=-1)
    zeros = torch.zeros_like(positive)
    if groups is None:  # the reference groups rows only when clustering is enabled
        parts = {"positive": positive, "clustering": zeros, "cross_group": zeros}
        if mode == "supervised":
            parts["negative"] = -(q * n).sum(dim=-1)
    else:
        parts = {"positive": positive, "clustering": _mean_similarity_within_group(m, groups)}
        if mode == "supervised":
            first = groups.first_row[groups.index]
            parts["negative"] = -(q[first] * n[first]).sum(dim=-1)
            parts["cross_group"] = -_mean_over_other_groups(_max_similarity_per_group(q, m, groups), groups)
        else:
            anchors = q[groups.first_row]
            parts["cross_group"] = _mean_over_other_groups(m @ anchors.T, groups)
    parts = {name: value * scale for name, value in parts.items()}
    if mode == "supervised":
        total = parts["positive"] + parts["negative"] + clustering_weight * parts["clustering"]
        total = total + cross_group_weight * parts["cross_group"]
    else:
        total = parts["positive"] + clustering_weight * parts["clustering"] - cross_group_weight * parts["cross_group"]
    return {"total": total, **parts}


def _infonce_rewards(m, q, n, groups, mode, temperature, scale, clustering_weight, enable_clustering):
    positive = (m * q).sum(dim=-1) / temperature
    columns = [positive[:, None]]
    parts = {"positive": positive}
    if mode == "supervised":
        parts["negative"] = (m * n).sum(dim=-1) / temperature
        columns.append(parts["negative"][:, None])
    other_groups = (m @ q[groups.first_row].T) / temperature
    parts["cross_group"] = _mean_over_other_groups(other_groups, groups)
    columns.append(other_groups.masked_fill(~groups.other_group_mask(), float("-inf")))
    log_prob_positive = torch.log_softmax(torch.cat(columns, dim=1), dim=1)[:, 0]
    if enable_clustering:
        parts["clustering"] = _mean_similarity_within_group(m, groups) * scale
    else:
        parts["clustering"] = torch.zeros_like(positive)
    return {"total": log_prob_positive + clustering_weight * parts["clustering"], **parts}


def contrastive_rewards(
    main: torch.Tensor,
    query: torch.Tensor,
    negative: torch.Tensor | None,
    group_ids: torch.Tensor,
    *,
    mode: str,
    temperature: float = 0.1,
    with_scale: bool = True,
    clustering_weight: float = 0.2,
    cross_group_weight: float = 0.2,
    enable_clustering: bool = True,
    variant: str = "reference",
) -> dict[str, torch.Tensor]:
    """Per-rollout reward and its components, each [B]: `total`, `positive`, `clustering`, `cross_group`, and
    `negative` in supervised mode (formulas in the module docstring).

    Embeddings are L2-normalised here, so cosines are exact whatever the caller passed; a zero vector has
    cosine 0 with everything. Computed in float32 (float64 if given float64). `temperature` defaults to 0.1, the
    value train.sh passes; the `hidden` reward manager keeps the reference's own default, 0.7, for a run that
    passes none.
    """
    _check_inputs(main, query, negative, group_ids, mode, variant, temperature)
    dtype = torch.promote_types(main.dtype, torch.float32)
    m = F.normalize(main.to(dtype), dim=-1)
    q = F.normalize(query.to(dtype), dim=-1)
    n = F.normalize(negative.to(dtype), dim=-1) if negative is not None else None
    scale = 1.0 / temperature if with_scale else 1.0
    if variant == "reference":
        groups = _Groups.from_ids(group_ids.to(main.device)) if enable_clustering else None
        return _reference_rewards(m, q, n, groups, mode, scale, clustering_weight, cross_group_weight)
    groups = _Groups.from_ids(group_ids.to(main.device))
    return _infonce_rewards(m, q, n, groups, mode, temperature, scale, clustering_weight, enable_clustering)


def apply_length_penalty(
    total: torch.Tensor,
    response_lengths: torch.Tensor,
    last_token_ids: torch.Tensor,
    max_response_length: int,
    eos_token_ids,
) -> torch.Tensor:
    """Replace the reward of a response that filled the whole budget without ending in EOS by exactly -1.

    Every id in `eos_token_ids` (an int or a list: the generation config's) counts as EOS; the reference
    checked only the tokenizer's.
    """
    eos = torch.as_tensor(token_id_list(eos_token_ids), device=last_token_ids.device)
    truncated = (response_lengths == max_response_length) & ~torch.isin(last_token_ids, eos)
    return torch.where(truncated, torch.full_like(total, -1.0), total)
