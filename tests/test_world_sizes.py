"""The `hidden` reward manager across ranks: verl's own DP_COMPUTE_PROTO dispatch and collect, a worker group whose
ranks each run their chunk alone, rationales that are a deterministic function of the prompt. The rewards must not
depend on the world size or the order the ranks finish in, must follow a permutation of the batch, and every
component must equal a float64 recomputation from the rationales the manager asked for (a mispaired query or
negative would not)."""

import numpy as np
import pytest
import torch
from verl import DataProto
from verl.single_controller.base.decorator import collect_dp_compute_data_proto, dispatch_dp_compute_data_proto
from verl.single_controller.base.worker_group import WorkerGroup

from grace.embedding import embed_sequences
from grace.pooling import system_prefix_length
from grace.verl_ext.reward_manager import HiddenRewardManager
from grace.verl_ext.worker import BATCH_METRICS_KEY, pooled_embeddings_in_token_budget
from tests.test_reward import oracle_rewards
from tests.test_reward_manager import RESPONSE, rollout_batch, setup, with_response  # noqa: F401  (the fixture)


def deterministic_response(prompt_ids, prompt_mask, eos_id):
    """[rows, RESPONSE] tokens that depend only on each row's valid prompt tokens; some rows stop at an EOS."""
    valid_sum = (prompt_ids * prompt_mask).sum(-1, keepdim=True)
    response = (valid_sum * 7 + torch.arange(RESPONSE) * 13) % 97 + 3
    stops = (valid_sum.squeeze(-1) % 3 == 0).nonzero().squeeze(-1)
    response[stops, 5] = eos_id
    return response


class RankedWorkers(WorkerGroup):
    """A worker group of `world_size` ranks in this process: verl's DP_COMPUTE_PROTO dispatch chunks each request,
    every rank runs its chunk alone (in reverse rank order if asked) and verl's collect joins the outputs."""

    def __init__(self, model, eos_id, world_size, reverse=False):  # no super().__init__: it needs a resource pool
        self.model, self.eos_id, self._world_size, self.reverse = model, eos_id, world_size, reverse
        self.requests, self.rationales = [], []

    @property
    def world_size(self):
        return self._world_size

    def _run(self, per_rank, data):
        args, _ = dispatch_dp_compute_data_proto(self, data)
        outputs = [None] * self.world_size
        for rank in (reversed if self.reverse else iter)(range(self.world_size)):
            outputs[rank] = per_rank(args[0][rank])
        return collect_dp_compute_data_proto(self, outputs)

    def generate_rationales(self, data):
        def rank_generates(chunk):
            b = chunk.batch
            response = deterministic_response(b["input_ids"], b["attention_mask"], self.eos_id)
            return DataProto.from_dict(with_response(b["input_ids"], b["attention_mask"], b["position_ids"], response,
                                                     self.eos_id))

        output = self._run(rank_generates, data)
        assert len(output) == len(data)  # one rationale row per request
        self.requests.append(data)
        self.rationales.append(output)
        return output

    def compute_pooled_embeddings(self, data):
        # one row per forward: a row's embedding does not depend on which rank or micro-batch it lands in
        return self._run(lambda chunk: DataProto.from_dict(
            {"embeddings": pooled_embeddings_in_token_budget(self.model, chunk.batch, 1)}), data)

    def compute_log_prob_and_embeddings(self, data):
        # the embeddings as above; log-probs and entropies that name their row's response
        return self._run(lambda chunk: DataProto.from_dict(
            {"embeddings": pooled_embeddings_in_token_budget(self.model, chunk.batch, 1),
             "old_log_probs": -chunk.batch["responses"].double(), "entropys": chunk.batch["responses"] / 7.0}), data)


@pytest.fixture(scope="module")
def scene(setup):  # noqa: F811
    tokenizer, model, dataset = setup

    class Layout:  # only append_response is used by rollout_batch
        def append_response(self, ids, mask, positions):
            response = deterministic_response(ids, mask, tokenizer.eos_token_id)
            return with_response(ids, mask, positions, response, tokenizer.eos_token_id)

    return tokenizer, model, rollout_batch(dataset, Layout(), n=3)


def rewards_at(scene, world_size, reverse=False, batch=None):
    tokenizer, model, default_batch = scene
    workers = RankedWorkers(model, tokenizer.eos_token_id, world_size, reverse)
    manager = HiddenRewardManager(tokenizer, temperature=0.1, eos_token_ids=[tokenizer.eos_token_id])
    manager.attach_worker_group(workers)
    result = manager(default_batch if batch is None else batch, return_dict=True)
    return result, workers


def test_rewards_are_identical_at_every_world_size_and_rank_order(scene):
    reference, _ = rewards_at(scene, 1)
    for world_size in (2, 3, 4, 8):
        for reverse in (False, True):
            result, _ = rewards_at(scene, world_size, reverse)
            assert torch.equal(result["reward_tensor"], reference["reward_tensor"]), (world_size, reverse)
            assert result["reward_extra_info"] == reference["reward_extra_info"], (world_size, reverse)


def test_the_old_log_probs_stay_with_their_rows_at_every_world_size(scene):
    _, _, default_batch = scene
    for world_size in (1, 3, 8):
        order = torch.randperm(len(default_batch), generator=torch.Generator().manual_seed(world_size))
        batch = default_batch[order]
        rewards_at(scene, world_size, reverse=True, batch=batch)
        assert torch.equal(batch.batch["grace_old_log_probs"], -batch.batch["responses"].double()), world_size
        assert torch.equal(batch.batch["grace_entropys"], batch.batch["responses"] / 7.0), world_size


def test_step_metrics_are_means_over_the_whole_batch(scene):
    tokenizer, model, batch = scene
    batch = batch[torch.arange(len(batch))]  # a copy: the manager writes the means into its meta_info
    result, _ = rewards_at(scene, 4, batch=batch)
    means = batch.meta_info[BATCH_METRICS_KEY]
    for name, values in result["reward_extra_info"].items():
        assert means[name] == pytest.approx(float(np.mean(values)), abs=1e-12)
    assert len(result["reward_extra_info"]["grace/total"]) == len(batch)  # every row, not one rank's chunk


def test_permuting_the_batch_permutes_the_rewards(scene):
    tokenizer, model, batch = scene
    reference, _ = rewards_at(scene, 2)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(3))
    permuted, _ = rewards_at(scene, 2, batch=batch[order])
    torch.testing.assert_close(permuted["reward_tensor"], reference["reward_tensor"][order], rtol=1e-6, atol=1e-6)


def test_every_component_equals_a_recomputation_from_the_requested_rationales(scene):
    tokenizer, model, batch = scene
    result, workers = rewards_at(scene, 3)
    prefix = system_prefix_length(tokenizer)

    def alone(rows):  # each row embedded by itself, at its own layout
        return torch.cat([embed_sequences(model, rows["input_ids"][i : i + 1], rows["attention_mask"][i : i + 1],
                                          rows["position_ids"][i : i + 1], prefix) for i in range(len(rows))])

    # The documents' rationales, found by their prompts: a group's query and negative are the rows of the request
    # whose prompt is that group's query / negative prompt, wherever the manager put them.
    request, rationale = workers.requests[0].batch, workers.rationales[0].batch
    documents = alone(rationale)

    def document_of(prompt_ids):
        matches = [i for i in range(len(request)) if torch.equal(request["input_ids"][i], prompt_ids)]
        assert len(matches) == 1
        return documents[matches[0]]

    b = batch.batch
    query = torch.stack([document_of(row) for row in b["query_input_ids"]])
    negative = torch.stack([document_of(row) for row in b["negative_doc_input_ids"]])
    main = alone(b)
    uids = batch.non_tensor_batch["uid"]
    group_ids = np.unique(uids, return_inverse=True)[1].tolist()
    expected = oracle_rewards(main.double().tolist(), query.double().tolist(), negative.double().tolist(), group_ids,
                              "supervised", temperature=0.1)
    extra = result["reward_extra_info"]
    for name in ("positive", "negative", "clustering", "cross_group", "total"):
        np.testing.assert_allclose(extra[f"grace/{name}"], [row[name] for row in expected], rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    lengths = b["attention_mask"][:, -RESPONSE:].sum(-1)
    truncated = (lengths == RESPONSE) & (b["responses"][:, -1] != tokenizer.eos_token_id)
    placed = result["reward_tensor"][torch.arange(len(batch)), lengths - 1]
    expected_total = torch.tensor([-1.0 if t else row["total"] for t, row in zip(truncated.tolist(), expected)])
    torch.testing.assert_close(placed.double(), expected_total.double(), rtol=1e-4, atol=1e-4)
    assert extra["grace/length_penalized"] == truncated.float().tolist()
