"""verl's HF rollout with rollouts that are right on every path, and GRACE's continuous-batching generator on one rank.

verl 0.4.1's `HFRollout._generate_minibatch` builds the sampling options from its config and meta_info, calls
`model.generate`, and pads and masks the result. Its call to `generate` has two defects, both silent:
- it passes the prompts' `position_ids`; transformers 4.x never advances position ids a caller passes (it slices
  their last column at every step), so every generated token after the first sits at the last prompt position
  (frozen positions). Without them the model counts positions from the attention mask, as verl's own position ids
  do, and the rollouts are those of one prompt at a time;
- transformers merges the checkpoint's generation_config.json into verl's options wherever verl's value equals the
  library default (a merged Qwen2.5-Instruct checkpoint brings top_k 20, top_p 0.8, temperature 0.7, repetition
  penalty 1.05), so the same config would sample differently on each path.

`GraceHFRollout` keeps everything of verl's `_generate_minibatch` and swaps only the call to `generate`, through a
stand-in module: positions come from the mask, and verl's options are the whole sampling rule (temperature, top-p,
top-k, or val_kwargs in validation; no repetition penalty; the checkpoint's own sampling fields are not read), and
each generation's sampling seed comes from the rollout's `seed` (vLLM's key; default 0) and the rank: verl seeds
no random generator for its HF rollout, and torch's global one starts from a random seed in every process, so the
same run gave other rollouts each time. On
one rank `generate` is the continuous-batching generator (`grace.generation`: 3.2x faster than `model.generate` on
SmolLM2 on a CPU); with several ranks FSDP needs every rank to run the same number of forwards, which continuous
batching does not, and a model the generator cannot serve exactly (`unsupported_attention`) also goes to
`model.generate`.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import torch
from verl.workers.rollout import HFRollout

from grace.generation import ContinuousBatchGenerator, GenerationSettings, unsupported_attention

logger = logging.getLogger(__name__)


def _as_list(ids) -> list[int]:
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def sampling_settings(generation_config, max_new_tokens: int, seed: int) -> GenerationSettings:
    """verl's sampling options (a transformers GenerationConfig built by `_generate_minibatch`) as the generator's."""
    config = generation_config
    sample = bool(config.do_sample)
    return GenerationSettings(
        max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=config.temperature if sample else 1.0,
        top_p=config.top_p if sample and config.top_p is not None else 1.0,
        top_k=config.top_k if sample and config.top_k else 0,
        seed=seed,
    )


class _RolloutModule:
    """Stands in for the policy inside HFRollout._generate_minibatch: `generate` returns sequences laid out as
    `model.generate`'s (prompt columns as given, each prompt's `num_return_sequences` rows adjacent, responses
    right-padded with the pad id), from the continuous-batching generator or from `model.generate`."""

    def __init__(self, module, continuous_batching: bool, seed: int):
        self.module, self.continuous_batching, self.seed = module, continuous_batching, seed

    def eval(self):
        self.module.eval()
        return self

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, generation_config,
                 position_ids=None, **kwargs):
        # verl's position_ids are dropped: transformers would freeze them (module docstring).
        if self.continuous_batching:
            refusal = unsupported_attention(self.module, input_ids.shape[1] + max_new_tokens)
            if refusal is None:
                return self._continuous_batching(input_ids, attention_mask, max_new_tokens, eos_token_id,
                                                 pad_token_id, generation_config)
            logger.warning("%s: rollouts go through model.generate", refusal)
        with torch.random.fork_rng():  # model.generate samples from the global generators: seeded here, then restored
            torch.manual_seed(self.seed)
            return self.module.generate(input_ids=input_ids, attention_mask=attention_mask,
                                        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                        pad_token_id=pad_token_id, generation_config=generation_config,
                                        use_model_defaults=False, **kwargs)

    def _continuous_batching(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                             generation_config):
        copies = generation_config.num_return_sequences or 1
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        prompts = [prompt for prompt in prompts for _ in range(copies)]
        generator = ContinuousBatchGenerator(self.module, _as_list(eos_token_id), pad_token_id)
        responses = generator.generate(prompts, sampling_settings(generation_config, max_new_tokens, self.seed))
        width = input_ids.shape[1]
        sequences = torch.full((len(prompts), width + max(len(r) for r in responses)), pad_token_id,
                               dtype=input_ids.dtype, device=input_ids.device)
        sequences[:, :width] = input_ids.repeat_interleave(copies, dim=0)
        for row, response in enumerate(responses):
            sequences[row, width:width + len(response)] = torch.tensor(response, dtype=input_ids.dtype)
        return SimpleNamespace(sequences=sequences)


class GraceHFRollout(HFRollout):
    def __init__(self, module, config, continuous_batching: bool, rank: int = 0):
        super().__init__(module=module, config=config)
        self.continuous_batching = continuous_batching
        # one stream of sampling seeds per (rollout seed, rank): a run repeats, and ranks sample apart
        state = np.random.SeedSequence([int(config.get("seed", 0)), rank]).generate_state(1)[0]
        self.sampling_seeds = torch.Generator().manual_seed(int(state))

    def _generate_minibatch(self, prompts):
        policy = self.module
        seed = int(torch.randint(2**31 - 1, (), generator=self.sampling_seeds))
        self.module = _RolloutModule(policy, self.continuous_batching, seed)
        try:
            return super()._generate_minibatch(prompts)
        finally:
            self.module = policy


def grace_rollout(rollout, world_size: int, rank: int = 0):
    """verl's HF rollout as a GraceHFRollout (continuous batching on one rank); any other rollout unchanged."""
    if type(rollout) is HFRollout:
        return GraceHFRollout(module=rollout.module, config=rollout.config, continuous_batching=world_size == 1,
                              rank=rank)
    return rollout
