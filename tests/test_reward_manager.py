"""The `hidden` reward manager on real dataset rows, with the worker methods run in this process."""

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.reward import compute_reward
from verl.utils.dataset.rl_dataset import collate_fn
from verl.utils.torch_functional import get_response_mask

from grace.embedding import embed_sequences, position_ids_from_mask
from grace.pooling import system_prefix_length
from grace.prompts import SYSTEM_PROMPT
from grace.reward import contrastive_rewards
from grace.verl_ext.dataset import GraceRLDataset
from grace.verl_ext.reward_manager import HiddenRewardManager, group_ids_of
from grace.verl_ext.worker import pooled_embeddings_in_token_budget
from tests.training import write_tiny_dataset

RESPONSE = 8


def with_response(prompt_ids, prompt_mask, prompt_pos, response, eos_ids):
    """A verl rollout batch: left-padded prompts followed by responses, masked up to and including the first EOS."""
    mask = torch.cat([prompt_mask, get_response_mask(response, eos_ids, prompt_mask.dtype)], dim=1)
    positions = torch.cat([prompt_pos, prompt_pos[:, -1:] + torch.arange(1, response.shape[1] + 1)], dim=1)
    return {"prompts": prompt_ids, "responses": response, "input_ids": torch.cat([prompt_ids, response], 1),
            "attention_mask": mask, "position_ids": positions}


class InProcessWorkers:
    """Stands in for the actor worker group: same method names, run on a plain HF model."""

    world_size = 2  # odd batches must be padded to it

    def __init__(self, model, eos_id, seed=0):
        self.model, self.eos_id = model, eos_id
        self.generator = torch.Generator().manual_seed(seed)
        self.generated_rows = []
        self.requests = []
        self.embedded_rows = []
        self.log_prob_rows = []
        self.token_budget = 4096
        self.rationale_temperatures = []
        self.fail_with = None

    def append_response(self, prompt_ids, prompt_mask, prompt_pos):
        response = torch.randint(3, 100, (len(prompt_ids), RESPONSE), generator=self.generator)
        response[::2, 4] = self.eos_id  # half of them stop early
        return with_response(prompt_ids, prompt_mask, prompt_pos, response, self.eos_id)

    def generate_rationales(self, data):
        assert len(data) % self.world_size == 0
        self.generated_rows.append(len(data))
        self.requests.append(data.batch["input_ids"].clone())
        self.rationale_temperatures.append(data.meta_info["temperature"])
        b = data.batch
        return DataProto.from_dict(self.append_response(b["input_ids"], b["attention_mask"], b["position_ids"]))

    def compute_pooled_embeddings(self, data):
        assert len(data) % self.world_size == 0
        if self.fail_with is not None:
            raise self.fail_with
        self.embedded_rows.append(len(data))
        embeddings = pooled_embeddings_in_token_budget(self.model, data.batch, self.token_budget)
        return DataProto.from_dict({"embeddings": embeddings})

    def compute_log_prob_and_embeddings(self, data):
        """The embeddings as above, each row's last bits moved as another micro-batch or rank could move them; for
        log-probs and entropies, numbers that say which row they belong to."""
        assert len(data) % self.world_size == 0
        if self.fail_with is not None:
            raise self.fail_with
        self.log_prob_rows.append(len(data))
        embeddings = pooled_embeddings_in_token_budget(self.model, data.batch, self.token_budget)
        embeddings = embeddings + 1e-7 * torch.arange(len(data))[:, None]
        responses = data.batch["responses"].double()
        return DataProto.from_dict({"embeddings": embeddings, "old_log_probs": -responses, "entropys": responses / 7})


@pytest.fixture(scope="module")
def setup(tiny_model_path, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    data = write_tiny_dataset(tmp_path_factory.mktemp("rm_data"), "supervised", train_rows=3, test_rows=1)
    config = OmegaConf.create({"max_prompt_length": 256, "truncation": "error", "filter_overlong_prompts": False,
                               "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    dataset = GraceRLDataset(str(data / "train.parquet"), tokenizer, config)
    return tokenizer, model, dataset


def rollout_batch(dataset, workers, n=2, with_uid=True):
    """What verl's fit() hands the reward function: rows repeated n times, rollouts joined, order shuffled."""
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    if with_uid:
        batch.non_tensor_batch["uid"] = np.array([f"uid-{i}" for i in range(len(batch))], dtype=object)
    prompt = batch.pop(batch_keys=["input_ids", "attention_mask", "position_ids"])
    batch = batch.repeat(n, interleave=True)
    b = prompt.repeat(n, interleave=True).batch
    batch = batch.union(DataProto.from_dict(workers.append_response(b["input_ids"], b["attention_mask"],
                                                                    b["position_ids"])))
    return batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))]  # verl balances batches


def manager_for(tokenizer, workers, **kwargs):
    manager = HiddenRewardManager(tokenizer, temperature=0.1, eos_token_ids=[workers.eos_id], **kwargs)
    manager.attach_worker_group(workers)
    return manager


def test_reward_matches_embeddings_computed_directly(setup):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    batch = rollout_batch(dataset, workers)
    result = manager_for(tokenizer, workers)(batch, return_dict=True)

    groups = len(dataset)
    assert workers.generated_rows == [2 * groups]  # one query + one negative rationale per prompt, padded to 2
    rewards = result["reward_tensor"]
    lengths = batch.batch["attention_mask"][:, -RESPONSE:].sum(-1)
    assert torch.count_nonzero(rewards) == len(batch)
    placed = rewards[torch.arange(len(batch)), lengths - 1]

    # Independent recomputation: the documents' rationales are the manager's; embed them here directly.
    prefix = system_prefix_length(tokenizer)
    b = batch.batch
    main = embed_sequences(model, b["input_ids"], b["attention_mask"], b["position_ids"], prefix)
    _, ids = np.unique(batch.non_tensor_batch["uid"].astype(str), return_inverse=True)
    extra = result["reward_extra_info"]
    assert set(extra) == {"grace/total", "grace/positive", "grace/negative", "grace/clustering",
                          "grace/cross_group", "grace/length_penalized", "grace/group_reward_std",
                          "grace/group_all_equal"}
    expected = contrastive_rewards(main, main, main, torch.from_numpy(ids), mode="supervised", temperature=0.1)
    # The clustering term uses only the rollouts, so it can be checked without the documents' random rationales.
    torch.testing.assert_close(torch.tensor(extra["grace/clustering"]), expected["clustering"], rtol=1e-4, atol=1e-4)
    truncated = (lengths == RESPONSE) & (b["responses"][:, -1] != workers.eos_id)
    assert torch.equal(placed[truncated], torch.full_like(placed[truncated], -1.0))
    torch.testing.assert_close(placed[~truncated], torch.tensor(extra["grace/total"])[~truncated])
    assert extra["grace/length_penalized"] == truncated.float().tolist()
    # What GRPO learns from, against a plain loop over the groups of the placed (final) rewards.
    for row, group in enumerate(ids):
        members = placed[torch.from_numpy(ids == group)].double()
        assert extra["grace/group_reward_std"][row] == pytest.approx(float(members.std()), abs=1e-9)
        assert extra["grace/group_all_equal"][row] == float(bool((members == members[0]).all()))


def test_the_log_prob_forward_gives_the_same_rewards_and_leaves_its_log_probs_with_their_rows(setup):
    tokenizer, model, dataset = setup
    results, batches = {}, {}
    for shared in (False, True):
        workers = InProcessWorkers(model, tokenizer.eos_token_id)
        batches[shared] = rollout_batch(dataset, workers, n=3)  # 9 rows: padded to the world size and back
        manager = manager_for(tokenizer, workers, share_log_prob_forward=shared)
        results[shared] = manager(batches[shared], return_dict=True)
        assert workers.log_prob_rows == ([10] if shared else [])
    for name, values in results[False]["reward_extra_info"].items():
        torch.testing.assert_close(torch.tensor(results[True]["reward_extra_info"][name]), torch.tensor(values),
                                   rtol=1e-5, atol=1e-5, msg=name)
    stored, not_stored = batches[True].batch, batches[False].batch
    assert "grace_old_log_probs" not in not_stored.keys() and "grace_entropys" not in not_stored.keys()
    assert torch.equal(stored["grace_old_log_probs"], -stored["responses"].double())  # each row's own
    assert torch.equal(stored["grace_entropys"], stored["responses"].double() / 7)


def response_span_reward(setup):
    """A rollout batch rewarded with the rationale pooled alone: the batch after the call, and the reward's parts."""
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    batch = rollout_batch(dataset, workers)
    extra = manager_for(tokenizer, workers, pooling_span="response")(batch, return_dict=True)["reward_extra_info"]
    return batch, extra, workers


def test_response_pooling_span_pools_only_the_generated_tokens(setup):
    tokenizer, model, _ = setup
    batch, extra, workers = response_span_reward(setup)
    b = batch.batch
    prompt_lengths = b["attention_mask"][:, : b["prompts"].shape[1]].sum(-1)
    main = embed_sequences(model, b["input_ids"], b["attention_mask"], b["position_ids"], prompt_lengths)
    _, ids = np.unique(batch.non_tensor_batch["uid"].astype(str), return_inverse=True)
    expected = contrastive_rewards(main, main, main, torch.from_numpy(ids), mode="supervised", temperature=0.1)
    torch.testing.assert_close(torch.tensor(extra["grace/clustering"]), expected["clustering"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="pooling_span"):
        manager_for(tokenizer, workers, pooling_span="prompt")


def test_the_rewards_targets_stay_in_the_batch_for_the_rollout_contrastive_loss(setup):
    model = setup[1]
    batch, extra, _ = response_span_reward(setup)
    b = batch.batch
    _, ids = np.unique(batch.non_tensor_batch["uid"].astype(str), return_inverse=True)
    groups = b["grace_group"]
    assert all((groups == groups[row]).tolist() == (ids == ids[row]).tolist() for row in range(len(ids)))
    assert torch.equal(b["grace_pool_skip"], b["attention_mask"][:, : b["prompts"].shape[1]].sum(-1))  # the prompt
    # the stored query and negative embeddings are the ones the reward used: with the rollouts' own, they give it
    main = embed_sequences(model, b["input_ids"], b["attention_mask"], b["position_ids"], b["grace_pool_skip"])
    recomputed = contrastive_rewards(main, b["grace_query_embeddings"], b["grace_negative_embeddings"], groups,
                                     mode="supervised", temperature=0.1)
    for name in ("positive", "negative", "total"):
        torch.testing.assert_close(recomputed[name].float(), torch.tensor(extra[f"grace/{name}"]), rtol=1e-4,
                                   atol=1e-4, msg=name)


def test_zero_rationale_temperature_asks_for_greedy_rationales(setup):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    manager_for(tokenizer, workers, rationale_temperature=0.0)(rollout_batch(dataset, workers), return_dict=True)
    assert workers.rationale_temperatures == [0.0]


def test_query_terms_are_constant_within_a_group(setup):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    batch = rollout_batch(dataset, workers, n=3)
    extra = manager_for(tokenizer, workers)(batch, return_dict=True)["reward_extra_info"]
    uid = batch.non_tensor_batch["uid"]
    for group in set(uid):
        rows = np.flatnonzero(uid == group)
        assert len({round(extra["grace/negative"][r], 5) for r in rows}) == 1


def test_rationale_requests_do_not_depend_on_how_uids_are_spelled(setup):
    tokenizer, model, dataset = setup
    requests = []
    reversed_order = lambda uid: f"g{999 - int(uid.split('-')[1])}"  # noqa: E731  sorts the groups backwards
    for spelling in (str, reversed_order):
        workers = InProcessWorkers(model, tokenizer.eos_token_id)
        batch = rollout_batch(dataset, workers)
        batch.non_tensor_batch["uid"] = np.array([spelling(u) for u in batch.non_tensor_batch["uid"]], dtype=object)
        manager_for(tokenizer, workers)(batch, return_dict=True)
        requests.append(workers.requests[0])
    assert torch.equal(requests[0], requests[1])
    uids = np.array(["zz", "b", "zz", "a", "b"], dtype=object)
    numbered = group_ids_of(DataProto.from_dict(tensors={"prompts": torch.zeros(5, 1)}, non_tensors={"uid": uids}))
    assert numbered.tolist() == [0, 1, 0, 2, 1]  # by first appearance
    by_prompt = group_ids_of(DataProto.from_dict(tensors={"prompts": torch.tensor([[5], [3], [5], [1], [3]])}))
    assert by_prompt.tolist() == [0, 1, 0, 2, 1]


@pytest.mark.parametrize("shared", [False, True], ids=["own embedding pass", "log-prob forward"])
def test_identical_rollouts_get_one_embedding_and_zero_advantage(setup, shared):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    batch = rollout_batch(dataset, workers, n=4)
    uids = batch.non_tensor_batch["uid"]
    group = np.flatnonzero(uids == uids[0])
    for key in ("responses", "input_ids", "attention_mask", "position_ids"):
        value = batch.batch[key].clone()
        value[group] = value[group[0]].clone()
        batch.batch[key] = value
    workers.token_budget = 1  # one row per micro-batch: a copy would be forwarded in another shape than its twin
    # no length penalty: it would give this group's truncated rollouts -1 each whatever their embeddings
    manager = manager_for(tokenizer, workers, share_log_prob_forward=shared, enable_length_penalty=False)
    result = manager(batch, return_dict=True)
    if shared:  # every rollout is forwarded (each needs its log-probs); the documents are embedded once each
        assert workers.log_prob_rows == [len(batch) + len(batch) % workers.world_size]
        assert workers.embedded_rows == [2 * len(dataset) + 2 * len(dataset) % workers.world_size]
    else:
        unique_rows = len(batch) - (len(group) - 1) + 2 * len(dataset)  # and a query and a negative per group
        assert workers.embedded_rows == [unique_rows + unique_rows % workers.world_size]  # padded to the world size
    placed = result["reward_tensor"].sum(-1)
    assert len(set(placed[group].tolist())) == 1
    response_mask = batch.batch["attention_mask"][:, -RESPONSE:]
    advantages, _ = compute_grpo_outcome_advantage(result["reward_tensor"], response_mask, uids)
    assert torch.count_nonzero(advantages[group]) == 0


def test_batch_without_uid_groups_by_prompt(setup):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    batch = rollout_batch(dataset, workers, n=2, with_uid=False)
    batch.non_tensor_batch.pop("uid")  # the dataset's own
    manager_for(tokenizer, workers)(batch, return_dict=True)
    assert workers.generated_rows == [2 * len(dataset)]


def test_failure_stops_training_with_the_original_error(setup):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    batch = rollout_batch(dataset, workers)
    workers.fail_with = MemoryError("out of memory in the embedding pass")
    manager = manager_for(tokenizer, workers)
    # verl's compute_reward catches the error and retries without return_dict; the retry must not return zeros.
    with pytest.raises(Exception) as raised:
        compute_reward(batch, manager)
    chain = [raised.value, raised.value.__cause__, raised.value.__context__]
    assert any(isinstance(e, MemoryError) and "embedding pass" in str(e) for e in chain)


def test_unattached_manager_explains_itself(setup):
    tokenizer, model, dataset = setup
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    manager = HiddenRewardManager(tokenizer)
    with pytest.raises(RuntimeError, match="no worker group"):
        manager(rollout_batch(dataset, workers), return_dict=True)


def test_dataset_builds_intact_query_and_negative_prompts(setup):
    tokenizer, _, dataset = setup
    row = dataset[0]
    for prefix, field in (("query", "query"), ("negative_doc", "negative_document")):
        ids = row[f"{prefix}_input_ids"][row[f"{prefix}_attention_mask"].bool()]
        text = tokenizer.decode(ids)
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert row["multi_input"][field] in text
        torch.testing.assert_close(row[f"{prefix}_position_ids"],
                                   position_ids_from_mask(row[f"{prefix}_attention_mask"]))


def test_a_custom_system_prompt_changes_every_prompt_and_the_pooled_prefix(setup, tiny_model_path, tmp_path):
    tokenizer, _, dataset = setup
    custom = "Summarise the text in one line."
    config = OmegaConf.create({"max_prompt_length": 256, "truncation": "error", "filter_overlong_prompts": False,
                               "cache_dir": str(tmp_path)})
    custom_dataset = GraceRLDataset(dataset.data_files, tokenizer, config, system_prompt=custom)
    row, default_row = custom_dataset[0], dataset[0]
    prefix_len = HiddenRewardManager(tokenizer, custom_prompt=custom).prefix_len
    assert prefix_len == system_prefix_length(tokenizer, custom) != system_prefix_length(tokenizer)
    for prefix in ("", "query_", "negative_doc_"):
        ids = row[f"{prefix}input_ids"][row[f"{prefix}attention_mask"].bool()]
        text = tokenizer.decode(ids)
        assert custom in text and SYSTEM_PROMPT not in text, prefix
        # The prefix the reward leaves out is exactly the custom system message, up to the user's content.
        assert tokenizer.decode(ids[:prefix_len]) == f"<|im_start|>system\n{custom}<|im_end|>\n<|im_start|>user\n"
        default_ids = default_row[f"{prefix}input_ids"][default_row[f"{prefix}attention_mask"].bool()]
        assert SYSTEM_PROMPT in tokenizer.decode(default_ids)


def test_reward_temperature_defaults_are_the_references():
    assert inspect.signature(HiddenRewardManager).parameters["temperature"].default == 0.7  # reference manager
    assert inspect.signature(contrastive_rewards).parameters["temperature"].default == 0.1  # train.sh's value
    assert "+reward_model.reward_kwargs.temperature=0.1" in (Path(__file__).parents[1] / "train.sh").read_text()


def test_duplicate_validation_texts_stay_separate_groups(setup, tmp_path):
    tokenizer, _, dataset = setup
    frame = pd.read_parquet(dataset.data_files[0])
    duplicated = tmp_path / "duplicated.parquet"
    pd.concat([frame.iloc[[0]], frame.iloc[[0]], frame.iloc[[1]]]).to_parquet(duplicated)
    config = OmegaConf.create({"max_prompt_length": 256, "truncation": "error", "filter_overlong_prompts": False,
                               "cache_dir": str(tmp_path)})
    rows = GraceRLDataset(str(duplicated), tokenizer, config)
    batch = DataProto.from_single_dict(collate_fn([rows[i] for i in range(3)]))
    assert torch.equal(batch.batch["input_ids"][0], batch.batch["input_ids"][1])  # the same text twice
    batch = batch.repeat(2, interleave=True)  # validation's val_kwargs.n samples per row share their group
    assert group_ids_of(batch).tolist() == [0, 0, 1, 1, 2, 2]


def test_a_pad_token_that_is_also_an_eos_ends_the_response_and_is_pooled_once(setup):
    tokenizer, model, dataset = setup
    end = tokenizer.pad_token_id  # <|endoftext|>: the pad token and an EOS of the generation config (Qwen3-style)
    eos_ids = [tokenizer.eos_token_id, end]

    class EndingInPad:
        def append_response(self, ids, mask, positions):
            response = torch.randint(3, 100, (len(ids), RESPONSE), generator=torch.Generator().manual_seed(0))
            response[:, 3:] = end  # three tokens, the end token, then padding with the same id
            return with_response(ids, mask, positions, response, eos_ids)

    batch = rollout_batch(dataset, EndingInPad(), n=2)
    workers = InProcessWorkers(model, tokenizer.eos_token_id)
    manager = HiddenRewardManager(tokenizer, temperature=0.1, eos_token_ids=eos_ids)
    manager.attach_worker_group(workers)
    extra = manager(batch, return_dict=True)["reward_extra_info"]
    b = batch.batch
    assert b["attention_mask"][:, -RESPONSE:].sum(-1).eq(4).all()  # the first end token is in, the padding out
    prefix = system_prefix_length(tokenizer)
    alone = torch.cat([embed_sequences(model, ids[None], torch.ones(1, len(ids)), prefix_len=prefix)
                       for ids in (row[mask.bool()] for row, mask in zip(b["input_ids"], b["attention_mask"]))])
    _, ids = np.unique(batch.non_tensor_batch["uid"].astype(str), return_inverse=True)
    expected = contrastive_rewards(alone, alone, alone, torch.from_numpy(ids), mode="supervised", temperature=0.1)
    torch.testing.assert_close(torch.tensor(extra["grace/clustering"]), expected["clustering"], rtol=1e-4, atol=1e-4)
    assert extra["grace/length_penalized"] == [0.0] * len(batch)  # ended by an EOS, not by the budget


def test_more_than_one_rationale_per_request_is_refused(setup):
    tokenizer, model, dataset = setup

    class TwoPerRequest(InProcessWorkers):
        def generate_rationales(self, data):
            one = super().generate_rationales(data)
            return DataProto.concat([one, one])  # as a rollout that ignored n=1 would

    workers = TwoPerRequest(model, tokenizer.eos_token_id)
    with pytest.raises(RuntimeError, match=r"returned \d+ rationale rows for \d+ requests"):
        manager_for(tokenizer, workers)(rollout_batch(dataset, workers), return_dict=True)
