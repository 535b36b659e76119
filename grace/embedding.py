"""The embedding forward pass shared by the training workers and the encoder.

The model runs without its LM head over the full vocabulary (only the last position's logits are computed)
and without keeping every layer's hidden states: a forward hook on the decoder captures the last layer after
the final norm, which is what `hidden_states[-1]` is for Qwen2, Llama and Qwen3 in transformers. The forward
goes through the top-level module so that FSDP's own hooks (parameter gathering) run as usual.
"""

from __future__ import annotations

import contextlib

import torch

from grace.pooling import pool_hidden_states


def _decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel

    inner = model.module if isinstance(model, FullyShardedDataParallel) else model
    return inner.get_decoder()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over valid tokens (0 for padding before the first), as verl computes them."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


@contextlib.contextmanager
def last_hidden_state_captured(model):
    """Within the block, each forward of `model` leaves its last-layer hidden states [B, T, H] (after the final norm)
    in the yielded dict under "hidden"."""
    captured = {}

    def keep_output(_module, _inputs, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = _decoder_of(model).register_forward_hook(keep_output)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def last_hidden_states(model, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
    """[B, T, H] last-layer hidden states (after the final norm) of a causal LM."""
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    with last_hidden_state_captured(model) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
              logits_to_keep=1)
    return captured["hidden"]


def embed_sequences(model, input_ids, attention_mask, position_ids=None, prefix_len: int | torch.Tensor = 0
                    ) -> torch.Tensor:
    """float32 [B, H] L2-normalised embeddings: the masked mean after the first `prefix_len` valid tokens (one
    count, or [B] counts: see `grace.pooling.pooling_skip`)."""
    hidden = last_hidden_states(model, input_ids, attention_mask, position_ids)
    return pool_hidden_states(hidden, attention_mask, prefix_len=prefix_len, normalize=True)
