"""verl's FSDP actor/rollout worker with the three things GRACE needs on the workers.

- `generate_rationales`: one sample per prompt at a given temperature, from the current policy and through the
  configured rollout (HF or vLLM): the query / negative-document rationales and the unsupervised anchor.
- `compute_pooled_embeddings`: a no-grad forward of the current policy over prompt + response, pooled on the
  worker with `grace.pooling` over the span the manager chose (per-row `pool_skip`); only [rows, H] float32 leaves
  the worker, never per-token hidden states. Each forward holds at most the token budget of verl's log-prob pass
  (`actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu`) of positions, valid tokens only, whether or not
  dynamic batching is on.
- `compute_log_prob_and_embeddings`: the training reward's embeddings of the rollouts and verl's old log-probs of
  the same rows from one forward (the policy is the same in both: the update comes after); the reward manager
  leaves the log-probs in the batch and `compute_log_prob` returns them instead of forwarding the rows again.
- the actors: verl's, computing only the positions their log-probs read (`grace.verl_ext.actor`).
- the rollout: verl's HF rollout generates at the right positions with verl's sampling options alone, with GRACE's
  continuous-batching generator on one rank (`grace.verl_ext.rollout`); the vLLM rollout is verl's own.
- the optimizer: verl's AdamW, with the fused step on a CPU (`fused_steps_on_cpu`).
- `update_actor`: verl's update, plus the whole batch's means of the reward components (`grace/*`, which the
  `hidden` reward manager put in the batch's meta_info) in the step metrics, which verl 0.4.1 otherwise never logs;
  with `actor.grace_contrastive_coef` above 0, the auxiliary contrastive loss on the rollouts' pooled hidden states
  (`grace.rollout_contrastive`) joins the update's backward pass, its targets from the reward's embeddings that the
  manager left in the batch (`CONTRASTIVE_KEYS`), and its mean is logged as `grace/contrastive_loss`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from verl import DataProto
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.device import get_device_id, get_device_name
from verl.utils.fsdp_utils import load_fsdp_model_to_gpu, offload_fsdp_model_to_cpu
from verl.workers.fsdp_workers import ActorRolloutRefWorker
from verl.workers.rollout import HFRollout
from verl.workers.sharding_manager.base import BaseShardingManager

from grace.embedding import embed_sequences
from grace.rollout_contrastive import group_candidates
from grace.verl_ext.rollout import grace_rollout

REWARD_METRIC_PREFIX = "grace/"
BATCH_METRICS_KEY = "grace_batch_metrics"  # meta_info: the reward manager's means over the whole batch
# batch keys: the old log-probs and entropies that the training reward's forward computed for these rows
STORED_OLD_LOG_PROBS, STORED_ENTROPIES = "grace_old_log_probs", "grace_entropys"
# batch keys: each rollout row's group, pool_skip and its group's query and hard-negative embeddings (the auxiliary
# contrastive loss's targets; no negative key in unsupervised mode)
CONTRASTIVE_KEYS = GROUP_KEY, POOL_SKIP_KEY, QUERY_KEY, NEGATIVE_KEY = (
    "grace_group", "grace_pool_skip", "grace_query_embeddings", "grace_negative_embeddings")


def token_budget_micro_batches(lengths: list[int], max_token_len: int, count: int = 0) -> list[list[int]]:
    """Row indices of micro-batches, longest rows first, each forwarding at most `max_token_len` positions (rows x
    its longest row; a row longer than the budget goes alone); then the fullest are halved until there are at least
    `count` (so that every rank runs the same number of forwards)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    micro_batches, start = [], 0
    while start < len(order):
        rows = max(1, max_token_len // max(1, lengths[order[start]]))
        micro_batches.append(order[start : start + rows])
        start += rows
    while len(micro_batches) < count:
        fullest = max(range(len(micro_batches)), key=lambda i: len(micro_batches[i]))
        if len(micro_batches[fullest]) < 2:
            raise ValueError(f"{len(lengths)} rows cannot make {count} micro-batches")
        rows = micro_batches.pop(fullest)
        micro_batches[fullest:fullest] = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    return micro_batches


def valid_tokens_left_padded(batch, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of `rows` with each row's valid tokens moved to the right end and
    the columns no row uses dropped: the same tokens at the same positions, in as few columns as they need."""
    mask = batch["attention_mask"][rows]
    width = max(1, int(mask.sum(-1).max()))
    take = torch.argsort(mask, dim=-1, stable=True)[:, -width:]  # padding first, valid tokens in their order
    return (batch["input_ids"][rows].gather(1, take), mask.gather(1, take), batch["position_ids"][rows].gather(1, take))


def pooled_embeddings_in_token_budget(model, batch, max_token_len: int) -> torch.Tensor:
    """Embeddings [B, H] of `batch` (input_ids, attention_mask, position_ids, and `pool_skip`: [B] leading valid
    tokens left out of each row's mean), in the original row order. Each forward holds at most `max_token_len`
    positions: rows of similar length, their valid tokens only; under torch.distributed every rank runs as many
    forwards as the busiest (FSDP gathers parameters in each)."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    micro_batches = token_budget_micro_batches(lengths, max_token_len)
    if dist.is_initialized():
        count = torch.tensor([len(micro_batches)], device=get_device_name())
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        micro_batches = token_budget_micro_batches(lengths, max_token_len, int(count.item()))
    pooled = [None] * len(lengths)
    for rows in micro_batches:
        input_ids, mask, positions = valid_tokens_left_padded(batch, rows)
        for row, embedding in zip(rows, embed_sequences(model, input_ids, mask, positions, batch["pool_skip"][rows])):
            pooled[row] = embedding
    return torch.stack(pooled)


def give_base_sharding_manager_timing() -> None:
    """verl 0.4.1 bug, on CPU and GPU alike: `generate_sequences` reads `rollout_sharding_manager.timing`, which the
    do-nothing `BaseShardingManager` of the HF rollout never sets."""
    if not hasattr(BaseShardingManager, "timing"):
        BaseShardingManager.timing = {}


def fused_steps_on_cpu(optimizer) -> None:
    """On a CPU, the param groups that leave AdamW's implementation to torch take the fused kernel. torch resolves
    an unset `foreach` / `fused` to a per-tensor loop there: 0.83 s a step over SmolLM2's 134.5 M parameters, twice
    a demo step, where the fused kernel runs at memory speed, 0.084 s (docs/benchmarks/optimizer_step_cpu.txt). The
    parameters agree with the loop's to float32 rounding (tested), not bit for bit. On a GPU torch's default (the
    multi-tensor step) stays, as verl has it."""
    for group in optimizer.param_groups:
        on_cpu = all(p.device.type == "cpu" for p in group["params"])
        if on_cpu and group.get("foreach") is None and not group.get("fused"):
            group["fused"] = True


class GraceActorRolloutRefWorker(ActorRolloutRefWorker):
    def __init__(self, *args, **kwargs):
        give_base_sharding_manager_timing()  # in every worker process, whatever the device
        super().__init__(*args, **kwargs)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        # Imported here, as verl imports its own actor: on a GPU host verl's actor module needs flash-attn.
        from grace.verl_ext.actor import ResponseLogitsActor

        super().init_model()
        # verl builds its actors at the end of init_model: the same modules, optimizer and configs, in GRACE's class.
        if self._is_actor:
            fused_steps_on_cpu(self.actor_optimizer)
            self.actor = ResponseLogitsActor(config=self.config.actor, actor_module=self.actor_module_fsdp,
                                             actor_optimizer=self.actor_optimizer)
        if self._is_ref:
            self.ref_policy = ResponseLogitsActor(config=self.config.ref, actor_module=self.ref_module_fsdp)

    def _build_rollout(self, trust_remote_code=False):
        rollout, sharding_manager = super()._build_rollout(trust_remote_code)
        return grace_rollout(rollout, self.world_size, self.rank), sharding_manager

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
    def compute_log_prob_and_embeddings(self, data: DataProto) -> DataProto:
        """verl's `compute_log_prob` of rollout rows (`responses` and the sequence keys) with their `embeddings`
        [B, H] float32 pooled as `compute_pooled_embeddings` pools them (per-row `pool_skip`): from the same forward
        on GRACE's own actor path; on verl's paths (remove-padding, fused kernels, Ulysses, dynamic batch sizes:
        the GPU recipe) from a second forward."""
        if self.actor.forwards_in_row_order(self.config.rollout.log_prob_use_dynamic_bsz):
            with self.actor.pooling_hidden_states(data.batch["pool_skip"]) as pooled:
                output = super().compute_log_prob(data)
            embeddings = torch.cat(pooled)
        else:
            output = super().compute_log_prob(data)
            embeddings = self.compute_pooled_embeddings(data).batch["embeddings"]
        if len(embeddings) != len(data):
            raise RuntimeError(f"pooled {len(embeddings)} rows of the log-prob forward for {len(data)} rollouts")
        output.batch["embeddings"] = embeddings.float().cpu()
        return output

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_log_prob(self, data: DataProto) -> DataProto:
        """verl's, or the old log-probs that the training reward's forward left in the batch for these rows (a LoRA
        reference pass, `is_lora`, always forwards)."""
        stored = (STORED_OLD_LOG_PROBS, STORED_ENTROPIES)
        if data.meta_info.get("is_lora") or not set(stored) <= set(data.batch.keys()):
            return super().compute_log_prob(data)
        return DataProto.from_dict(tensors={"old_log_probs": data.batch[STORED_OLD_LOG_PROBS],
                                            "entropys": data.batch[STORED_ENTROPIES]},
                                   meta_info={"temperature": self.config.rollout.temperature})

    def _rollout_contrastive(self, data: DataProto):
        """The auxiliary loss's settings and targets for this rank's rows, or None when it is off."""
        from grace.verl_ext.actor import RolloutContrastive

        coef = float(self.config.actor.get("grace_contrastive_coef", 0.0))
        if coef == 0:
            return None
        if coef < 0:
            raise ValueError(f"actor.grace_contrastive_coef must be >= 0, got {coef}")
        if not self.actor.forwards_in_row_order(self.config.actor.use_dynamic_bsz):
            raise NotImplementedError("the rollout contrastive loss needs the update's forwards in row order: no "
                                      "remove-padding, fused kernels, Ulysses or dynamic batch sizes")
        missing = [key for key in (GROUP_KEY, POOL_SKIP_KEY, QUERY_KEY) if key not in data.batch.keys()]
        if missing:
            raise KeyError(f"actor.grace_contrastive_coef={coef} needs the hidden reward manager's {missing} in the "
                           "batch (reward_model.reward_manager=hidden)")
        negatives = data.batch[NEGATIVE_KEY] if NEGATIVE_KEY in data.batch.keys() else None  # unsupervised: none
        candidates, targets = group_candidates(data.batch[GROUP_KEY], data.batch[QUERY_KEY], negatives)
        return RolloutContrastive(coef=coef, scale=float(self.config.actor.get("grace_contrastive_scale", 20.0)),
                                  pool_skip=data.batch[POOL_SKIP_KEY], targets=targets, candidates=candidates)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def update_actor(self, data: DataProto) -> DataProto:
        contrastive = self._rollout_contrastive(data)
        if contrastive is None:
            output = super().update_actor(data)
        else:
            with self.actor.contrastive_loss_on_rollouts(contrastive):
                output = super().update_actor(data)
            output.meta_info["metrics"][f"{REWARD_METRIC_PREFIX}contrastive_loss"] = \
                sum(contrastive.losses) / len(contrastive.losses)
        # The whole batch's means, computed by the reward manager in the driver: every rank's chunk carries them, so
        # whichever rank's metrics verl keeps, they describe all rows.
        output.meta_info["metrics"].update(data.meta_info.get(BATCH_METRICS_KEY, {}))
        return output
