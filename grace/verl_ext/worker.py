"""verl's FSDP actor/rollout worker with the three things GRACE needs on the workers.

- `generate_rationales`: one sample per prompt at a given temperature, from the current policy and through the
  configured rollout (HF or vLLM): the query / negative-document rationales and the unsupervised anchor.
- `compute_pooled_embeddings`: a no-grad forward of the current policy over prompt + response, pooled on the
  worker with `grace.pooling` over the span the manager chose (per-row `pool_skip`); only [rows, H] float32 leaves the worker, never per-token hidden states. Rows are
  split into micro-batches by the token budget of verl's log-prob pass
  (`actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu`), whether or not dynamic batching is on.
- `update_actor`: verl's update, plus the batch means of the reward components (the `grace/*` columns the
  `hidden` reward manager returned) in the step metrics, which verl 0.4.1 otherwise never logs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from verl import DataProto
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.device import get_device_id, get_device_name
from verl.utils.fsdp_utils import load_fsdp_model_to_gpu, offload_fsdp_model_to_cpu
from verl.utils.seqlen_balancing import get_reverse_idx, rearrange_micro_batches
from verl.workers.fsdp_workers import ActorRolloutRefWorker
from verl.workers.rollout import HFRollout

from grace.embedding import embed_sequences

REWARD_METRIC_PREFIX = "grace/"


def pooled_embeddings_in_token_budget(model, batch, max_token_len: int) -> torch.Tensor:
    """Embeddings [B, H] of `batch` (input_ids, attention_mask, position_ids, and `pool_skip`: [B] leading valid
    tokens left out of each row's mean), forwarded in micro-batches of at most `max_token_len` valid tokens and
    returned in the original row order."""
    max_token_len = max(max_token_len, batch["attention_mask"].shape[-1])
    micro_batches, indices = rearrange_micro_batches(
        batch.select("input_ids", "attention_mask", "position_ids", "pool_skip"), max_token_len=max_token_len)
    pooled = [embed_sequences(model, mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["pool_skip"])
              for mb in micro_batches]
    order = torch.tensor(get_reverse_idx([i for part in indices for i in part]), device=pooled[0].device)
    return torch.cat(pooled, dim=0)[order]


def reward_component_means(data: DataProto) -> dict[str, float]:
    """Means of the `grace/*` per-row columns the hidden reward manager added to the batch."""
    return {key: float(np.mean(values.astype(np.float64)))
            for key, values in data.non_tensor_batch.items() if key.startswith(REWARD_METRIC_PREFIX)}


class GraceActorRolloutRefWorker(ActorRolloutRefWorker):
    @contextlib.contextmanager
    def _one_sample_per_prompt(self, temperature: float):
        if isinstance(self.rollout, HFRollout):  # reads n from config and temperature from meta_info
            rollout_config, n = self.config.rollout, self.config.rollout.n
            rollout_config.n = 1
            try:
                yield
            finally:
                rollout_config.n = n
        else:  # vLLM keeps both in its SamplingParams
            with self.rollout.update_sampling_params(n=1, temperature=temperature):
                yield

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def generate_rationales(self, prompts: DataProto) -> DataProto:
        """One rationale per prompt, sampled at `prompts.meta_info['temperature']` (greedy at 0)."""
        prompts.meta_info["do_sample"] = prompts.meta_info["temperature"] > 0
        with self._one_sample_per_prompt(prompts.meta_info["temperature"]):
            return self.generate_sequences(prompts)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_pooled_embeddings(self, data: DataProto) -> DataProto:
        """`embeddings` [B, H] float32 of prompt + response rows; each row's first `pool_skip` valid tokens are
        left out of the mean."""
        assert self._is_actor, "pooled embeddings come from the actor (the current policy)"
        if self.ulysses_sequence_parallel_size > 1:
            raise NotImplementedError("GRACE's embedding pass does not support Ulysses sequence parallelism")
        if self._is_offload_param:
            load_fsdp_model_to_gpu(self.actor_module_fsdp)
        module = self.actor_module_fsdp
        was_training = module.training
        module.eval()
        data = data.to(get_device_id())
        try:
            # bf16 like verl's own forward passes; a float32 CPU run turns this autocast off (cpu_compat).
            with torch.autocast(device_type=get_device_name(), dtype=torch.bfloat16):
                embeddings = pooled_embeddings_in_token_budget(
                    module, data.batch, max_token_len=self.config.rollout.log_prob_max_token_len_per_gpu)
        finally:
            module.train(was_training)
            if self._is_offload_param:
                offload_fsdp_model_to_cpu(self.actor_module_fsdp)
        return DataProto.from_dict(tensors={"embeddings": embeddings.cpu()})

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_actor(self, data: DataProto) -> DataProto:
        output = super().update_actor(data)
        output.meta_info["metrics"].update(reward_component_means(data))
        return output
