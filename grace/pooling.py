"""Pool last-layer hidden states into one embedding per sequence, as GRACE's training reward does.

The embedding of a sequence (chat prompt + generated rationale) is the masked mean of its last-layer hidden
states over a span of its valid tokens, in float32, L2-normalised. Two spans (`POOLING_SPANS`):
- `prompt+response` (the reference, the default): every valid token after the system-prompt prefix: the user
  text, the template tokens before the answer, the rationale and its EOS;
- `response`: the rationale tokens alone (and its EOS), so the text's own tokens no longer dominate the mean.
Both are a number of leading valid tokens to skip per row (`pooling_skip`), applied the same way in the
training reward, the encoder and the evaluation.
"""

from __future__ import annotations

import torch

from grace.prompts import SYSTEM_PROMPT

POOLING_SPANS = ("prompt+response", "response")

# Stands in for the user text to find where user content starts in the chat template.
_USER_PLACEHOLDER = "GRACE_USER_CONTENT_PLACEHOLDER"


def system_prefix_length(tokenizer, system_prompt: str = SYSTEM_PROMPT) -> int:
    """Number of tokens before the user content in a chat-templated prompt; 0 when it cannot be found.

    The prompt [system, user=placeholder] is templated and tokenised without special tokens; the prefix is every
    token before the placeholder (for ChatML: `<|im_start|>system\\n{prompt}<|im_end|>\\n<|im_start|>user\\n`).
    Fast tokenizers locate it by character offsets; slow ones by the first occurrence of the placeholder's tokens
    (the reference's method), which gives 0 when a merge across the boundary hides them.
    """
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": _USER_PLACEHOLDER}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = f"{system_prompt}\n\n{_USER_PLACEHOLDER}\n\nAssistant:"
    if getattr(tokenizer, "is_fast", False):
        # Exact: count the tokens that end before the placeholder's first character.
        boundary = text.index(_USER_PLACEHOLDER)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return sum(1 for _, token_end in offsets if token_end <= boundary)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    needle = tokenizer(_USER_PLACEHOLDER, add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(needle) + 1):
        if ids[start : start + len(needle)] == needle:
            return start
    return 0


def pooling_skip(prompt_lengths: torch.Tensor, span: str, prefix_len: int) -> torch.Tensor:
    """[B] leading valid tokens to skip before pooling: the system prefix (`prompt+response`) or each row's whole
    prompt of `prompt_lengths` valid tokens (`response`)."""
    if span not in POOLING_SPANS:
        raise ValueError(f"pooling span must be one of {POOLING_SPANS}, got {span!r}")
    prompt_lengths = torch.as_tensor(prompt_lengths, dtype=torch.long)
    return prompt_lengths.clone() if span == "response" else torch.full_like(prompt_lengths, prefix_len)


def pool_hidden_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor, prefix_len: int | torch.Tensor = 0, normalize: bool = True
) -> torch.Tensor:
    """Masked mean of `hidden` [B, T, H] over valid tokens, skipping each row's first `prefix_len` valid tokens
    (one count for every row, or a [B] tensor of counts).

    Works for any padding side (the skip counts valid tokens, not positions). A row with fewer valid tokens than
    its skip pools all of them, as the reference does when the system prefix is longer than the row. Computed in
    float32 whatever the input dtype; a row with no pooled token gives a zero vector, never NaN. Returns float32
    [B, H].
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [B, T, H] and attention_mask [B, T], got {tuple(hidden.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    skip = torch.as_tensor(prefix_len, device=hidden.device)
    if skip.dim() not in (0, 1) or (skip.dim() == 1 and skip.shape[0] != hidden.shape[0]):
        raise ValueError(f"prefix_len must be one count or one per row ({hidden.shape[0]}), got shape "
                         f"{tuple(skip.shape)}")
    if bool((skip < 0).any()):
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    skip = torch.where(skip > attention_mask.bool().sum(dim=1), 0, skip)
    summed, counts = pooled_sums(hidden, attention_mask, skip)
    return mean_of_sums(summed, counts, normalize)


def pooled_sums(hidden: torch.Tensor, attention_mask: torch.Tensor, skip: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [B, H] sums of `hidden` [B, T, H] over each row's valid tokens after its first `skip` [B] (or one
    count), and [B] float32 numbers of tokens summed: the parts of a mean that can be added up piece by piece (the
    generator pools a sequence as it is generated)."""
    valid = attention_mask.bool()
    rank_among_valid = valid.long().cumsum(dim=1)  # 1 for the first valid token of each row
    weights = (valid & (rank_among_valid > torch.as_tensor(skip, device=hidden.device).reshape(-1, 1))).float()
    return torch.bmm(weights.unsqueeze(1), hidden.to(torch.float32)).squeeze(1), weights.sum(dim=1)


def mean_of_sums(summed: torch.Tensor, counts: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """The masked mean from `pooled_sums`' parts (a row with no token: zeros), L2-normalised when asked."""
    pooled = summed / counts.clamp(min=1.0).unsqueeze(-1)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
    return pooled
