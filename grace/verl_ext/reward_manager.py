"""The `hidden` reward manager: GRACE's contrastive reward on pooled hidden states of the current policy.

Selected with `reward_model.reward_manager=hidden`; its settings come from `+reward_model.reward_kwargs.*`
with the reference's names and defaults (temperature 0.7 when omitted; train.sh passes 0.1). Per call:

1. group the rollouts: by `uid` (in training verl's GRPO groups; in validation the dataset row's own, so that
   duplicate texts stay separate groups); a batch without uids groups rows with the same main prompt;
2. one rationale per group for the query and, in supervised mode, the negative document (unsupervised: a second
   rollout of the main prompt, the anchor), sampled by the actor workers at `rationale_temperature` (0.5; 0 is
   greedy, which the TaskRunner uses for validation so that the validation reward is a fixed measurement);
3. the embeddings on the workers of the rollouts and those rationales, pooled over `pooling_span`
   (`prompt+response`, the reference: system prefix excluded; or `response`: the generated tokens alone). In
   training (`share_log_prob_forward`, off for validation) the rollouts' come from verl's old-log-prob forward,
   whose log-probs and entropies the manager leaves in the batch for the worker's `compute_log_prob` to return:
   one forward over the rollouts a step instead of two;
4. `grace.reward.contrastive_rewards`, then the length penalty, placed on the last valid response token.
5. each rollout row's group, pooling skip and group's query (or anchor) and negative embeddings stay in the batch
   for the update's optional auxiliary contrastive loss (`actor.grace_contrastive_coef`, `grace.rollout_contrastive`).

Besides the reward components, each row carries what GRPO learns from: the standard deviation of the final
reward in its group (`grace/group_reward_std`) and whether all of its group's rewards are equal
(`grace/group_all_equal`); their batch means are the mean within-group spread and the fraction of groups that
give no gradient.

It needs the actor worker group (`attach_worker_group`, done by `GraceRayPPOTrainer.init_workers`), so it cannot
run in verl's async reward task. It never hides a failure: verl 0.4.1 catches reward exceptions and calls the
manager again without `return_dict`; that second call re-raises the first error, which stops training.
"""

from __future__ import annotations

import numpy as np
import torch
from verl import DataProto
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
from verl.workers.reward_manager import register

from grace.pooling import POOLING_SPANS, pooling_skip, system_prefix_length
from grace.prompts import SYSTEM_PROMPT, token_id_list
from grace.reward import apply_length_penalty, contrastive_rewards
from grace.verl_ext.worker import (
    BATCH_METRICS_KEY,
    CONTRASTIVE_KEYS,
    REWARD_METRIC_PREFIX,
    STORED_ENTROPIES,
    STORED_OLD_LOG_PROBS,
)

SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids")


class RewardComputationError(RuntimeError):
    """The GRACE reward failed earlier in this step; verl's silent retry is refused."""


def numbered_by_first_appearance(keys: np.ndarray) -> np.ndarray:
    """[B] ids 0, 1, ... given to equal keys in the order in which each key first appears."""
    _, first, inverse = np.unique(keys.reshape(-1), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.reshape(-1)]


def first_rows_of(ids: np.ndarray) -> np.ndarray:
    """Row of the first occurrence of each id 0, 1, ... (ids numbered by first appearance: rows ascending)."""
    return np.unique(ids, return_index=True)[1]


def identical_row_ids(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """[B] ids numbered by first appearance, equal for rows with the same valid tokens at the same positions and
    the same `pool_skip`. Identical rows (a group's identical rollouts) must get one embedding: the same sequence
    forwarded in micro-batches of other shapes or on other ranks can differ in the last bits, which std
    normalisation would turn into advantages of +-1 for rollouts that are the same."""
    content = torch.cat([tensors["input_ids"] * tensors["attention_mask"], tensors["attention_mask"],
                         tensors["position_ids"], tensors["pool_skip"][:, None]], dim=1)
    return numbered_by_first_appearance(torch.unique(content, dim=0, return_inverse=True)[1].numpy())


def group_ids_of(data: DataProto) -> torch.Tensor:
    """[B] int64 group ids numbered by first appearance in the batch: from verl's `uid`, or from identical main
    prompts when there is none. Numbering by appearance, not by the random uid strings, keeps the order of the
    rationale requests (and so a seeded run) reproducible."""
    if "uid" in data.non_tensor_batch:
        keys = np.unique(data.non_tensor_batch["uid"].astype(str), return_inverse=True)[1]
    else:
        keys = torch.unique(data.batch["prompts"], dim=0, return_inverse=True)[1].numpy()
    return torch.from_numpy(numbered_by_first_appearance(keys).astype(np.int64))


def place_rewards(total: torch.Tensor, response_lengths: torch.Tensor, response_width: int) -> torch.Tensor:
    """[B, R] float32 token-level rewards: each row's reward on its last valid response token, zeros elsewhere (the
    reference's placement; index -1 for an empty response)."""
    reward_tensor = torch.zeros(len(total), response_width, dtype=torch.float32)
    reward_tensor[torch.arange(len(total)), response_lengths - 1] = total.float()
    return reward_tensor


def group_reward_spread(rewards: torch.Tensor, group_of_row: torch.Tensor, groups: int):
    """Per row: the (unbiased, as GRPO normalises) std of the rewards of its group, 0 for a group of one, and
    1.0 where every reward of its group is equal, else 0.0."""
    rewards = rewards.to(torch.float64)
    counts = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_of_row, torch.ones_like(rewards))
    means = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_of_row, rewards) / counts
    squares = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_of_row, (rewards - means[group_of_row]) ** 2)
    std = torch.where(counts > 1, squares / (counts - 1).clamp(min=1), torch.zeros_like(squares)).sqrt()
    highest = torch.full((groups,), -torch.inf, dtype=torch.float64).scatter_reduce(0, group_of_row, rewards, "amax")
    lowest = torch.full((groups,), torch.inf, dtype=torch.float64).scatter_reduce(0, group_of_row, rewards, "amin")
    return std[group_of_row], (highest == lowest).to(torch.float64)[group_of_row]


def _prompt_lengths(rows) -> torch.Tensor:
    """Valid prompt tokens of verl prompt + response rows."""
    return rows["attention_mask"][:, : rows["prompts"].shape[1]].sum(dim=-1)


def _right_pad(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


@register("hidden")
class HiddenRewardManager:
    def __init__(
        self,
        tokenizer,
        num_examine: int = 0,
        compute_score=None,
        reward_fn_key: str = "data_source",
        temperature: float = 0.7,
        with_scale: bool = True,
        clustering_weight: float = 0.2,
        cross_group_weight: float = 0.2,
        enable_clustering: bool = True,
        exclude_system_prompt: bool = True,
        custom_prompt: str | None = None,
        enable_length_penalty: bool = True,
        variant: str = "reference",
        rationale_temperature: float = 0.5,
        pooling_span: str = "prompt+response",
        eos_token_ids=None,
        share_log_prob_forward: bool = True,
    ):
        del compute_score, reward_fn_key  # accepted for verl's loader; the reward is not per-sample
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.reward_settings = dict(temperature=temperature, with_scale=with_scale, variant=variant,
                                    clustering_weight=clustering_weight, cross_group_weight=cross_group_weight,
                                    enable_clustering=enable_clustering)
        self.enable_length_penalty = enable_length_penalty
        self.rationale_temperature = rationale_temperature
        self.eos_token_ids = token_id_list(eos_token_ids if eos_token_ids is not None else tokenizer.eos_token_id)
        if pooling_span not in POOLING_SPANS:
            raise ValueError(f"reward_kwargs.pooling_span must be one of {POOLING_SPANS}, got {pooling_span!r}")
        self.pooling_span = pooling_span
        self.share_log_prob_forward = share_log_prob_forward
        system_prompt = custom_prompt or SYSTEM_PROMPT
        self.prefix_len = system_prefix_length(tokenizer, system_prompt) if exclude_system_prompt else 0
        self.worker_group = None
        self._failure: BaseException | None = None

    def attach_worker_group(self, worker_group) -> None:
        """The actor/rollout worker group that generates rationales and computes embeddings."""
        self.worker_group = worker_group

    def __call__(self, data: DataProto, return_dict: bool = False):
        if self._failure is not None:
            raise RewardComputationError("the GRACE reward failed on this batch; see the error above") \
                from self._failure
        try:
            reward_tensor, extra_info = self._compute(data)
        except BaseException as error:
            self._failure = error
            raise
        if return_dict:
            return {"reward_tensor": reward_tensor, "reward_extra_info": extra_info}
        return reward_tensor

    # ------------------------------------------------------------------ worker calls, padded to the world size
    def _call_workers(self, method: str, data: DataProto) -> DataProto:
        if self.worker_group is None:
            raise RuntimeError("the hidden reward manager has no worker group: it must be built by grace.train "
                               "(GraceRayPPOTrainer), and reward_model.launch_reward_fn_async must stay False")
        padded, pad_size = pad_dataproto_to_divisor(data, self.worker_group.world_size)
        return unpad_dataproto(getattr(self.worker_group, method)(padded), pad_size)

    def _generate_rationales(self, prompts: dict[str, torch.Tensor]) -> DataProto:
        request = DataProto.from_dict(tensors=prompts, meta_info={"temperature": self.rationale_temperature})
        return self._call_workers("generate_rationales", request)

    def _sequences(self, streams) -> dict[str, torch.Tensor]:
        """The sequence keys of verl prompt + response rows (each stream a batch with `prompts` and SEQUENCE_KEYS),
        right-padded to one width, and each row's `pool_skip`."""
        width = max(s["input_ids"].shape[1] for s in streams)
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "position_ids": 0}
        tensors = {key: torch.cat([_right_pad(s[key], width, pad_values[key]) for s in streams])
                   for key in SEQUENCE_KEYS}
        prompt_lengths = torch.cat([_prompt_lengths(s) for s in streams])
        tensors["pool_skip"] = pooling_skip(prompt_lengths, self.pooling_span, self.prefix_len)
        return tensors

    def _embed(self, streams) -> tuple[torch.Tensor, int]:
        """Embeddings of verl prompt + response rows, and the number of tokens the workers embedded."""
        tensors = self._sequences(streams)
        row_ids = identical_row_ids(tensors)
        first_rows = torch.from_numpy(first_rows_of(row_ids))
        request = DataProto.from_dict(tensors={key: value[first_rows] for key, value in tensors.items()})
        embeddings = self._call_workers("compute_pooled_embeddings", request).batch["embeddings"].float()
        return embeddings[torch.from_numpy(row_ids)], int(request.batch["attention_mask"].sum())

    def _embed_rollouts_with_log_probs(self, data: DataProto) -> tuple[torch.Tensor, int]:
        """The rollouts' embeddings from verl's old-log-prob forward, whose log-probs and entropies go into
        `data`'s batch; and the number of tokens forwarded."""
        tensors = {**self._sequences([data.batch]), "responses": data.batch["responses"]}
        output = self._call_workers("compute_log_prob_and_embeddings", DataProto.from_dict(tensors=tensors)).batch
        data.batch[STORED_OLD_LOG_PROBS] = output["old_log_probs"]
        data.batch[STORED_ENTROPIES] = output["entropys"]
        row_ids = identical_row_ids(tensors)  # every row is forwarded (each needs its log-probs); copies agree after
        embeddings = output["embeddings"].float()[torch.from_numpy(first_rows_of(row_ids))]
        return embeddings[torch.from_numpy(row_ids)], int(tensors["attention_mask"].sum())

    # ------------------------------------------------------------------ the reward
    def _compute(self, data: DataProto):
        batch = data.batch
        if "rm_scores" in batch.keys():
            return batch["rm_scores"], {}
        responses = batch["responses"]
        size, response_width = responses.shape
        response_lengths = batch["attention_mask"][:, -response_width:].sum(dim=-1)
        group_of_row = group_ids_of(data)  # 0..G-1 by first appearance
        first_rows = torch.from_numpy(first_rows_of(group_of_row.numpy()))
        supervised = "negative_doc_input_ids" in batch.keys()
        mode = "supervised" if supervised else "unsupervised"

        if supervised:
            documents = [{key: batch[f"{prefix}_{key}"][first_rows] for key in SEQUENCE_KEYS}
                         for prefix in ("query", "negative_doc")]
        else:  # the anchor: another rollout of the main prompt
            prompt_width = batch["prompts"].shape[1]
            documents = [{"input_ids": batch["prompts"][first_rows],
                          "attention_mask": batch["attention_mask"][first_rows, :prompt_width],
                          "position_ids": batch["position_ids"][first_rows, :prompt_width]}]
        stacked = {key: torch.cat([d[key] for d in documents]) for key in SEQUENCE_KEYS}
        rationales = self._generate_rationales(stacked).batch
        if len(rationales) != len(stacked["input_ids"]):  # n rows per request would pair groups with wrong rationales
            raise RuntimeError(f"the workers returned {len(rationales)} rationale rows for "
                               f"{len(stacked['input_ids'])} requests; expected one each")
        groups = len(first_rows)
        if self.share_log_prob_forward:
            rollouts, log_prob_tokens = self._embed_rollouts_with_log_probs(data)
            documents, embedded_tokens = self._embed([rationales])
            embeddings = torch.cat([rollouts, documents])
        else:
            embeddings, embedded_tokens = self._embed([batch, rationales])
            log_prob_tokens = 0
        main = embeddings[:size]
        query = embeddings[size : size + groups][group_of_row]
        negative = embeddings[size + groups :][group_of_row] if supervised else None
        # the targets of the update's optional auxiliary contrastive loss (grace.rollout_contrastive)
        rollout_skip = pooling_skip(_prompt_lengths(batch), self.pooling_span, self.prefix_len)
        targets = (group_of_row, rollout_skip, query, negative)
        for key, value in zip(CONTRASTIVE_KEYS, targets):
            if value is not None:
                batch[key] = value

        parts = contrastive_rewards(main, query, negative, group_of_row, mode=mode, **self.reward_settings)
        total = parts["total"]
        if self.enable_length_penalty:
            last_tokens = responses.gather(1, (response_lengths - 1).clamp(min=0)[:, None]).squeeze(1)
            total = apply_length_penalty(total, response_lengths, last_tokens, response_width, self.eos_token_ids)
        reward_tensor = place_rewards(total, response_lengths, response_width)

        extra_info = {f"{REWARD_METRIC_PREFIX}{name}": value.tolist() for name, value in parts.items()}
        extra_info[f"{REWARD_METRIC_PREFIX}length_penalized"] = (total != parts["total"]).float().tolist()
        spread, all_equal = group_reward_spread(total, group_of_row, groups)
        extra_info[f"{REWARD_METRIC_PREFIX}group_reward_std"] = spread.tolist()
        extra_info[f"{REWARD_METRIC_PREFIX}group_all_equal"] = all_equal.tolist()
        # verl keeps one rank's update_actor metrics; the means travel with the batch to every rank instead
        data.meta_info[BATCH_METRICS_KEY] = {name: float(np.mean(values)) for name, values in extra_info.items()}
        # the reward's work, for a step's floor (benchmarks/step_phases.py)
        prompt_tokens = int(stacked["attention_mask"].sum())
        data.meta_info[BATCH_METRICS_KEY].update({
            f"{REWARD_METRIC_PREFIX}work/rationale_prompt_tokens": prompt_tokens,
            f"{REWARD_METRIC_PREFIX}work/rationale_tokens": int(rationales["attention_mask"].sum()) - prompt_tokens,
            f"{REWARD_METRIC_PREFIX}work/embedded_tokens": embedded_tokens,
            f"{REWARD_METRIC_PREFIX}work/log_prob_tokens": log_prob_tokens})
        self._print_examples(data, rationales, first_rows, group_of_row, parts, total)
        return reward_tensor, extra_info

    def _print_examples(self, data, rationales, first_rows, group_of_row, parts, total):
        """Decode and print `num_examine` rows (only those rows are decoded)."""
        for row in range(min(self.num_examine, len(total))):
            decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
            group = int(group_of_row[row])
            print(f"[grace reward] row {row}: rollout: {decode(data.batch['responses'][row])!r}")
            print(f"[grace reward] query/anchor rationale: {decode(rationales['responses'][group])!r}")
            print("[grace reward] " + ", ".join(f"{k}={v[row].item():.4f}" for k, v in parts.items())
                  + f", final={total[row].item():.4f}")
