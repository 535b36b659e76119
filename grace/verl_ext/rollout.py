"""verl's HF rollout with GRACE's continuous-batching generator (grace.generation) in place of `model.generate`.

The demo and the study train with verl's HF rollout on a CPU, where `model.generate` spends most of its time
copying key/value heads and growing its cache (issue 16: 3.2x slower than `ContinuousBatchGenerator` on
SmolLM2). `ContinuousBatchHFRollout` keeps everything of verl's `HFRollout._generate_minibatch` (sampling options
from the config and meta_info, padding to response_length, masks, positions) and swaps only the call to
`generate`, through a stand-in module. It is used on one rank only: with several ranks, FSDP needs every rank to
run the same number of forwards, and continuous batching stops each rank at its own pace.
A sampling option the generator does not have (top-k) goes to `model.generate` unchanged.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from verl.workers.rollout import HFRollout

from grace.generation import ContinuousBatchGenerator, GenerationSettings


def _as_list(ids) -> list[int]:
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


class _ContinuousBatchModule:
    """Stands in for the policy inside HFRollout._generate_minibatch: `generate` runs the continuous-batching
    generator on the real module and returns sequences laid out as `model.generate`'s (prompt columns as given,
    each prompt's `num_return_sequences` rows adjacent, responses right-padded with the pad id)."""

    def __init__(self, module):
        self.module = module

    def eval(self):
        self.module.eval()
        return self

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, generation_config,
                 **kwargs):
        config = generation_config
        if config.do_sample and (config.top_k or 0) > 0:
            return self.module.generate(input_ids=input_ids, attention_mask=attention_mask,
                                        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                        pad_token_id=pad_token_id, generation_config=config, **kwargs)
        copies = config.num_return_sequences or 1
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        prompts = [prompt for prompt in prompts for _ in range(copies)]
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=bool(config.do_sample),
            temperature=config.temperature if config.do_sample else 1.0,
            top_p=config.top_p if config.do_sample and config.top_p is not None else 1.0,
            seed=int(torch.randint(2**31 - 1, ())),  # from torch's global RNG, which verl seeds
        )
        generator = ContinuousBatchGenerator(self.module, _as_list(eos_token_id), pad_token_id)
        responses = generator.generate(prompts, settings)
        width = input_ids.shape[1]
        sequences = torch.full((len(prompts), width + max(len(r) for r in responses)), pad_token_id,
                               dtype=input_ids.dtype, device=input_ids.device)
        sequences[:, :width] = input_ids.repeat_interleave(copies, dim=0)
        for row, response in enumerate(responses):
            sequences[row, width:width + len(response)] = torch.tensor(response, dtype=input_ids.dtype)
        return SimpleNamespace(sequences=sequences)


class ContinuousBatchHFRollout(HFRollout):
    def _generate_minibatch(self, prompts):
        policy = self.module
        self.module = _ContinuousBatchModule(policy)
        try:
            return super()._generate_minibatch(prompts)
        finally:
            self.module = policy


def continuous_batching_rollout(rollout, world_size: int):
    """`rollout` as a ContinuousBatchHFRollout when it is verl's HF rollout on one rank; otherwise unchanged."""
    if type(rollout) is HFRollout and world_size == 1:
        return ContinuousBatchHFRollout(module=rollout.module, config=rollout.config)
    return rollout
