"""GRPO-RM: the exact properties of docs/grpo_rm.md on tiny encoders, the data readers, the evaluation against
brute-force oracles, the command line; one slow run on the packaged MiniLM."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from grace.data.process import BadInputError
from grace.grpo_rm import objective
from grace.grpo_rm.data import (
    LabelledData,
    load_labelled,
    long_tailed,
    read_labelled_file,
    split,
    stratified_split,
    wordnet_nouns,
)
from grace.grpo_rm.evaluate import knn_predictions, probe_predictions
from grace.grpo_rm.loop import TrainConfig, batch_order, ce_step, grpo_rm_step, make_optimizer, train
from grace.grpo_rm.policy import DigitsConvEncoder, TextEncoder, build_policy, make_head
from tests.tiny_model import build_tiny_encoder


@pytest.fixture(scope="module")
def tiny_encoder_folder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="module")
def digits_data():
    return load_labelled("digits")


def text_batch():
    texts = ["The cat sat on the mat.", "Paris is the capital of France.", "Photosynthesis turns light into sugar.",
             "The Roman Empire fell in 476.", "Prime numbers have two divisors.", "Jazz began in New Orleans."]
    return texts, torch.tensor([0, 1, 2, 1, 2, 0])


# ---- advantages -------------------------------------------------------------------------------------------------

def test_advantage_rows_sum_to_zero_and_ignore_a_per_input_constant():
    rewards = torch.randn(5, 7, dtype=torch.float64)
    advantages = objective.group_advantages(rewards)
    assert torch.allclose(advantages.sum(-1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    shifted = objective.group_advantages(rewards + torch.randn(5, 1, dtype=torch.float64))
    assert torch.allclose(shifted, advantages, atol=1e-12)


def test_one_hot_reward_gives_the_closed_form_advantages():
    num_classes = 6
    advantages = objective.group_advantages(objective.accuracy_reward(torch.tensor([2]), num_classes).double())
    # population std of a one-hot row is sqrt(C - 1) / C; the 1e-6 in the denominator moves the result by ~1e-5
    assert advantages[0, 2].item() == pytest.approx(math.sqrt(num_classes - 1), rel=1e-5)
    wrong = advantages[0, [0, 1, 3, 4, 5]]
    assert torch.allclose(wrong, torch.full_like(wrong, -1 / math.sqrt(num_classes - 1)), rtol=1e-5)


def test_constant_rewards_give_zero_advantages_not_nan():
    advantages = objective.group_advantages(torch.full((3, 4), 0.7))
    assert torch.equal(advantages, torch.zeros(3, 4))


# ---- the objective's gradient and clipping ---------------------------------------------------------------------

def ratio_one_batch():
    """Float64 logits of 4 inputs over 5 classes (requiring grad), their log-probabilities and `prob` rewards."""
    torch.manual_seed(0)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    log_probs = torch.log_softmax(logits, -1)
    rewards = objective.class_rewards(torch.tensor([0, 3, 1, 4]), log_probs.exp().detach(), "prob").double()
    return logits, log_probs, rewards


def test_gradient_at_ratio_one_is_minus_advantage_over_batch_times_classes():
    logits, log_probs, rewards = ratio_one_batch()
    batch, num_classes = logits.shape
    advantages = objective.group_advantages(rewards)
    loss, stats = objective.grpo_rm_loss(log_probs, log_probs.detach(), advantages, clip_eps=0.2)
    loss.backward()
    expected = -advantages / (batch * num_classes)  # d log pi_j / d z_k = delta_jk - pi_k and sum_j A_j = 0
    assert torch.allclose(logits.grad, expected, atol=1e-15)
    assert stats["clip_fraction"] == 0.0 and stats["ratio_max_deviation"] == 0.0


def test_policy_weighted_gradient_is_the_expected_sampled_policy_gradient():
    logits, log_probs, rewards = ratio_one_batch()
    batch, num_classes = logits.shape
    probs = log_probs.exp().detach()
    advantages = objective.policy_weighted_advantages(rewards, probs)
    assert torch.allclose((probs * advantages).sum(-1), torch.zeros(batch, dtype=torch.float64), atol=1e-12)
    loss, _ = objective.grpo_rm_loss(log_probs, log_probs.detach(), advantages, weights=probs)
    loss.backward()
    # the oracle: E_{j ~ pi}[A_j grad log pi_j], enumerated over j with autograd, averaged over the batch
    expected = torch.zeros(batch, num_classes, dtype=torch.float64)
    for j in range(num_classes):
        z = logits.detach().clone().requires_grad_(True)
        torch.log_softmax(z, -1)[:, j].sum().backward()
        expected += probs[:, j:j + 1] * advantages[:, j:j + 1] * z.grad
    assert torch.allclose(logits.grad, -expected / batch, atol=1e-15)
    assert torch.allclose(logits.grad, -probs * advantages / batch, atol=1e-15)  # closed form: pi_old * A


def test_policy_weighted_gradient_damps_as_the_head_grows_confident_and_the_uniform_one_does_not():
    def logit_gradient_norm(true_prob, weighted):
        probs = torch.tensor([[true_prob] + [(1 - true_prob) / 10] * 10], dtype=torch.float64)  # 11 classes
        logits = probs.log().clone().requires_grad_(True)
        log_probs = torch.log_softmax(logits, -1)
        rewards = objective.accuracy_reward(torch.tensor([0]), 11).double()
        advantages = (objective.policy_weighted_advantages(rewards, probs) if weighted
                      else objective.group_advantages(rewards))
        loss, _ = objective.grpo_rm_loss(log_probs, log_probs.detach(), advantages,
                                         weights=probs if weighted else None)
        loss.backward()
        return float(logits.grad.norm())

    uniform = [logit_gradient_norm(p, weighted=False) for p in (0.09, 0.94, 0.9995)]
    weighted = [logit_gradient_norm(p, weighted=True) for p in (0.09, 0.94, 0.9995)]
    assert uniform == pytest.approx([uniform[0]] * 3)  # -A / C whatever the policy's probabilities
    # binary reward: A_y = sqrt((1 - p) / p), so pi_y A_y = sqrt(p (1 - p)); each of the 10 wrong classes gets
    # -sqrt(p (1 - p)) / 10: the norm is sqrt(1.1 p (1 - p))
    assert weighted == pytest.approx([math.sqrt(1.1 * p * (1 - p)) for p in (0.09, 0.94, 0.9995)], rel=1e-4)
    assert weighted[0] > weighted[1] > 10 * weighted[2]


def test_dual_clip_bounds_the_term_of_a_negative_advantage():
    old_log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))
    advantages = torch.tensor([[1.0, -0.5, -0.5]], dtype=torch.float64)
    logits = torch.log(torch.tensor([[0.05, 0.9, 0.05]], dtype=torch.float64)).requires_grad_(True)  # rho_1 = 3.6
    plain, _ = objective.grpo_rm_loss(torch.log_softmax(logits, -1), old_log_probs, advantages)
    bounded, stats = objective.grpo_rm_loss(torch.log_softmax(logits, -1), old_log_probs, advantages, dual_clip=3.0)
    # class 0: rho 0.1, A > 0: min(0.1, 0.8) * 1; class 1: plain rho A = -1.8, dual clip max(-1.8, 3 * -0.5) = -1.5;
    # class 2: rho 0.2, A < 0: min(-0.1, -0.4) = -0.4
    assert plain.item() == pytest.approx(-(0.1 - 1.8 - 0.4) / 3, abs=1e-12)
    assert bounded.item() == pytest.approx(-(0.1 - 1.5 - 0.4) / 3, abs=1e-12)
    bounded.backward()
    ratio_one = torch.autograd.grad(torch.log_softmax(logits, -1)[0, 1], logits)[0]
    assert stats["clip_fraction"] == pytest.approx(2 / 3)  # class 1 (dual clip) and class 2 (below 1 - eps)
    # the bounded term has no gradient: only class 0's unclipped term moves the logits
    probs = torch.tensor([0.05, 0.9, 0.05], dtype=torch.float64)
    expected = -(probs[0] / 0.5) * (torch.eye(3, dtype=torch.float64)[0] - probs) / 3
    assert torch.allclose(logits.grad[0], expected, atol=1e-12) and ratio_one.abs().sum() > 0
    with pytest.raises(ValueError, match="dual_clip must exceed 1"):
        objective.grpo_rm_loss(torch.log_softmax(logits, -1), old_log_probs, advantages, dual_clip=0.5)


def test_gradient_is_exactly_zero_once_every_term_is_clipped():
    labels = torch.tensor([1, 0])
    old_log_probs = torch.log(torch.tensor([[0.3, 0.4, 0.3], [0.5, 0.25, 0.25]], dtype=torch.float64))
    # true class probability up by more than 1 + eps, every wrong class down by more than 1 - eps
    new_probs = torch.tensor([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]], dtype=torch.float64)
    logits = new_probs.log().clone().requires_grad_(True)
    advantages = objective.group_advantages(objective.accuracy_reward(labels, 3).double())
    loss, stats = objective.grpo_rm_loss(torch.log_softmax(logits, -1), old_log_probs, advantages, clip_eps=0.2)
    loss.backward()
    assert stats["clip_fraction"] == 1.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_sampled_group_takes_the_loss_over_the_sampled_classes_only():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    log_probs = torch.log_softmax(logits, -1)
    group = objective.sample_group(log_probs.exp(), 4, torch.Generator().manual_seed(0))
    assert group.shape == (3, 4) and group.min() >= 0 and group.max() < 6
    advantages = torch.randn(3, 4, dtype=torch.float64)
    loss, _ = objective.grpo_rm_loss(log_probs, log_probs.detach(), advantages, group=group)
    expected = -(advantages * torch.ones(3, 4, dtype=torch.float64)).mean()  # rho = 1 at theta_old
    assert loss.item() == pytest.approx(expected.item(), abs=1e-15)
    with pytest.raises(ValueError, match="advantages of shape"):
        objective.grpo_rm_loss(log_probs, log_probs.detach(), torch.zeros(3, 6), group=group)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a CPU generator with CUDA probabilities")
def test_sampled_group_draws_with_the_loops_cpu_generator_from_cuda_probabilities():
    probs = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(1)), -1)
    on_cpu = objective.sample_group(probs, 4, torch.Generator().manual_seed(0))
    on_cuda = objective.sample_group(probs.cuda(), 4, torch.Generator().manual_seed(0))
    assert on_cuda.device.type == "cuda" and torch.equal(on_cuda.cpu(), on_cpu)  # the same seed, the same groups

# ---- uniformity rewards ------------------------------------------------------------------------------------------

def test_prob_uniformity_gives_the_more_probable_wrong_class_the_lower_advantage():
    old_probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    labels = torch.tensor([0])
    advantages = objective.group_advantages(objective.class_rewards(labels, old_probs, "prob"))
    assert advantages[0, 1] < advantages[0, 2] < advantages[0, 3]
    assert advantages[0, 0] == advantages[0].max()


def test_uniformity_rewards_are_zero_for_the_true_class_and_vary_across_wrong_classes():
    torch.manual_seed(0)
    labels = torch.tensor([2, 0])
    old_probs = torch.softmax(torch.randn(2, 4), -1)
    embeddings, prototypes = torch.randn(2, 8), torch.randn(4, 8)
    for kind in ("prob", "complement", "prototype"):
        u = objective.uniformity_reward(kind, labels, old_probs, embeddings, prototypes)
        assert u[0, 2] == 0 and u[1, 0] == 0, kind
        assert (u <= 0).all(), kind
        assert u[0, [0, 1, 3]].std() > 0, kind
    assert torch.equal(objective.uniformity_reward("none", labels, old_probs), torch.zeros(2, 4))


def test_complement_uniformity_is_zero_on_flat_wrong_classes_and_prototype_is_minus_one_on_its_class():
    flat = torch.tensor([[0.4, 0.2, 0.2, 0.2]])
    assert torch.allclose(objective.uniformity_reward("complement", torch.tensor([0]), flat), torch.zeros(1, 4),
                          atol=1e-7)
    prototypes = torch.eye(3)
    u = objective.uniformity_reward("prototype", torch.tensor([0]), torch.full((1, 3), 1 / 3),
                                    embeddings=torch.tensor([[0.0, 5.0, 0.0]]), prototypes=prototypes)
    assert u[0, 1].item() == pytest.approx(-1.0)  # the embedding points at class 1's prototype
    assert u[0, 2].item() == pytest.approx(-math.exp(-2 * 2.0))  # orthogonal unit vectors: squared distance 2


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="uniformity must be one of"):
        objective.uniformity_reward("entropy", torch.tensor([0]), torch.ones(1, 2) / 2)
    with pytest.raises(ValueError, match="labels must lie in"):
        objective.accuracy_reward(torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="prototype uniformity needs"):
        objective.uniformity_reward("prototype", torch.tensor([0]), torch.ones(1, 2) / 2)
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="ppo")
    with pytest.raises(ValueError, match="clip_eps"):
        TrainConfig(clip_eps=1.5)
    with pytest.raises(ValueError, match="group_size"):
        TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="cannot be combined with group_size"):
        TrainConfig(policy_weighted=True, group_size=4)
    with pytest.raises(ValueError, match="dual_clip must exceed 1"):
        TrainConfig(dual_clip=1.0)
    with pytest.raises(ValueError, match="head must be one of"):
        make_head("mlp", 4, 2)


# ---- the policy and the loop -------------------------------------------------------------------------------------

def _parameters(policy):
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("objective_name", ["grpo_rm", "ce"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_one_step_changes_every_trainable_parameter_of_a_text_encoder_and_head(tiny_encoder_folder,
                                                                              objective_name, head):
    policy = build_policy(str(tiny_encoder_folder), 3, head=head, max_length=32, seed=0)
    texts, labels = text_batch()
    before = _parameters(policy)
    assert any(name.startswith("encoder.") for name in before) and any(name.startswith("head.") for name in before)
    config = TrainConfig(objective=objective_name, encoder_lr=1e-3, head_lr=1e-2, uniformity="prototype")
    optimizer = make_optimizer(policy, config)
    if objective_name == "grpo_rm":
        grpo_rm_step(policy, optimizer, texts, labels, config)
    else:
        ce_step(policy, optimizer, texts, labels)
    unchanged = [name for name, p in policy.named_parameters() if p.requires_grad and torch.equal(p, before[name])]
    assert unchanged == []


@pytest.mark.parametrize("uniformity, group", [("none", {}), ("prob", {}), ("complement", {}), ("prototype", {}),
                                               ("prob", {"policy_weighted": True, "dual_clip": 3.0}),
                                               ("prob", {"group_size": 4})])
def test_one_grpo_rm_step_raises_the_true_class_probability_on_its_batch(digits_data, uniformity, group):
    policy = build_policy("digits-cnn", 10, head="cosine", temperature=0.1, seed=0)
    batch = digits_data.subset(np.arange(64))
    labels = torch.as_tensor(batch.labels)

    def mean_true_probability():
        with torch.no_grad():
            return torch.softmax(policy(batch.inputs)[1], -1).gather(1, labels[:, None]).mean().item()

    config = TrainConfig(encoder_lr=1e-3, head_lr=1e-2, uniformity=uniformity, **group)
    before = mean_true_probability()
    grpo_rm_step(policy, make_optimizer(policy, config), batch.inputs, labels, config, torch.Generator().manual_seed(0))
    assert mean_true_probability() > before


def test_ratio_is_one_at_the_first_inner_update_and_each_update_runs_one_forward(digits_data, monkeypatch):
    policy = build_policy("digits-cnn", 10, seed=0)
    forwards = []
    original = DigitsConvEncoder.forward
    monkeypatch.setattr(DigitsConvEncoder, "forward", lambda self, x: forwards.append(1) or original(self, x))
    batch = digits_data.subset(np.arange(32))
    config = TrainConfig(inner_updates=3, encoder_lr=1e-3)
    seen = []
    real_loss = objective.grpo_rm_loss
    monkeypatch.setattr(objective, "grpo_rm_loss", lambda *a, **k: seen.append(real_loss(*a, **k)[1]) or
                        real_loss(*a, **k))
    grpo_rm_step(policy, make_optimizer(policy, config), batch.inputs, torch.as_tensor(batch.labels), config)
    assert len(forwards) == 3  # one encoder forward per inner update, no extra pass for pi_old
    assert seen[0]["ratio_max_deviation"] == 0.0 and seen[1]["ratio_max_deviation"] > 0
    forwards.clear()
    ce_step(policy, make_optimizer(policy, config), batch.inputs, torch.as_tensor(batch.labels))
    assert len(forwards) == 1


def test_exactly_one_model_is_built_and_the_optimizer_holds_its_parameters(digits_data, monkeypatch):
    built = []
    original_init = DigitsConvEncoder.__init__
    monkeypatch.setattr(DigitsConvEncoder, "__init__",
                        lambda self, *a, **k: built.append(1) or original_init(self, *a, **k))
    policy = build_policy("digits-cnn", 10, seed=0)
    config = TrainConfig(steps=3, batch_size=16)
    optimizer = make_optimizer(policy, config)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in policy.parameters()}
    train(policy, digits_data.subset(np.arange(200)), config)
    assert len(built) == 1  # no reference or old-policy copy


def test_same_seed_same_losses_and_arms_share_initialisation_and_batches(digits_data):
    data = digits_data.subset(np.arange(300))
    losses = [[r["loss"] for r in train(build_policy("digits-cnn", 10, seed=3), data,
                                        TrainConfig(steps=5, batch_size=16, seed=3))] for _ in range(2)]
    assert losses[0] == losses[1]
    first_a, first_b = build_policy("digits-cnn", 10, seed=3), build_policy("digits-cnn", 10, seed=3)
    assert all(torch.equal(v, first_b.state_dict()[k]) for k, v in first_a.state_dict().items())
    assert [b.tolist() for b in batch_order(300, 5, 16, 3)] == [b.tolist() for b in batch_order(300, 5, 16, 3)]


def test_dropout_is_off_so_the_text_policy_is_deterministic_in_training_mode(tiny_encoder_folder):
    policy = build_policy(str(tiny_encoder_folder), 3, max_length=32, seed=0)
    policy.train()
    texts, _ = text_batch()
    assert torch.equal(policy(texts)[1], policy(texts)[1])


def test_saved_text_encoder_loads_in_sentence_transformers_with_the_same_embeddings(tiny_encoder_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = TextEncoder(tiny_encoder_folder, max_length=32)
    texts, _ = text_batch()
    encoder.save(tmp_path / "saved")
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    with torch.no_grad():
        expected = encoder(texts)
    assert torch.allclose(reloaded.encode(texts, convert_to_tensor=True), expected, atol=1e-5)


def test_missing_encoder_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(tmp_path / "nowhere")


# ---- data ---------------------------------------------------------------------------------------------------------

def test_jsonl_bad_rows_are_reported_with_their_line_numbers(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([json.dumps({"text": "a b", "label": "x"}), "{broken", json.dumps({"label": "y"}),
                               json.dumps({"text": "  ", "label": "y"}), json.dumps({"text": "c", "label": 3}),
                               json.dumps({"text": "d"}), ""]) + "\n")
    data, report = read_labelled_file(path)
    assert data.inputs == ["a b", "c"] and data.class_names == ["3", "x"] and data.labels.tolist() == [1, 0]
    assert report.first_lines == {"invalid JSON": [2], "missing 'text'": [3], "empty 'text'": [4],
                                  "missing 'label'": [6], "blank line": [7]}
    with pytest.raises(BadInputError, match="labels.jsonl:2: invalid JSON"):
        read_labelled_file(path, strict=True)


def test_csv_and_parquet_files_are_read_and_bad_rows_numbered(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text('text,label\n"first, with comma",a\n,b\nthird,b\n')
    data, report = read_labelled_file(csv_path)
    assert data.inputs == ["first, with comma", "third"] and report.first_lines == {"empty 'text'": [3]}
    parquet_path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"text": ["one", None, "three"], "label": [1, 2, 2]}), parquet_path)
    data, report = read_labelled_file(parquet_path)
    assert data.labels.tolist() == [0, 1] and report.first_lines == {"missing 'text'": [2]}
    (tmp_path / "bad.csv").write_text("sentence,label\nx,y\n")
    with pytest.raises(BadInputError, match="must name 'text' and 'label'"):
        read_labelled_file(tmp_path / "bad.csv")
    with pytest.raises(BadInputError, match="unsupported file type"):
        (tmp_path / "labels.txt").write_text("x")
        read_labelled_file(tmp_path / "labels.txt")


def test_stratified_split_is_disjoint_deterministic_and_balanced():
    labels = np.repeat(np.arange(3), [10, 12, 30])
    train_idx, dev_idx, test_idx = stratified_split(labels, 2, 3, train_per_class=4, seed=1)
    assert not (set(train_idx) & set(dev_idx)) and not (set(train_idx) & set(test_idx))
    assert not (set(dev_idx) & set(test_idx))
    assert np.bincount(labels[dev_idx]).tolist() == [2, 2, 2] and np.bincount(labels[test_idx]).tolist() == [3, 3, 3]
    assert np.bincount(labels[train_idx]).tolist() == [4, 4, 4]
    again = stratified_split(labels, 2, 3, train_per_class=4, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train_idx, dev_idx, test_idx), again))
    with pytest.raises(ValueError, match="class 0 has 10 examples"):
        stratified_split(labels, 5, 5, None)


def test_long_tailed_keeps_the_written_share_of_each_class():
    labels = np.repeat(np.arange(5), [40, 30, 50, 45, 60])
    kept = long_tailed(labels, 10.0, seed=2)
    ranks = np.random.default_rng(2).permutation(5)
    expected = [max(1, round(30 * 10.0 ** (-rank / 4))) for rank in ranks]  # n = 30, the smallest class
    assert np.bincount(labels[kept]).tolist() == expected and max(expected) == 30 and min(expected) == 3
    for label in range(5):  # each class's first examples, in order
        assert kept[labels[kept] == label].tolist() == np.flatnonzero(labels == label)[:expected[label]].tolist()
    assert np.bincount(labels[long_tailed(labels, 1.0)]).tolist() == [30] * 5
    with pytest.raises(ValueError, match="at least 1, got 0.5"):
        long_tailed(labels, 0.5)


def test_a_shifted_corpus_gives_the_test_items_in_its_domain_or_is_refused_when_it_does_not_align():
    labels = np.repeat(np.arange(3), 8)
    data = LabelledData([f"long text {i}" for i in range(24)], labels, ["a", "b", "c"])
    shifted = LabelledData(["" if i == 5 else f"short {i}" for i in range(24)], labels, ["a", "b", "c"])
    splits = split(data, 2, 3, None, seed=1, imbalance=2.0, shifted=shifted)
    _, _, test = stratified_split(labels, 2, 3, None, seed=1)
    assert splits.shifted_test.inputs == [f"short {i}" for i in test if i != 5]
    assert splits.shifted_test.labels.tolist() == [labels[i] for i in test if i != 5]
    assert sorted(np.bincount(splits.train.labels).tolist()) == [2, 2, 3]  # 3 per class, ratio 2: 3, 2, 1.5 -> 2
    assert np.bincount(splits.test.labels).tolist() == [3, 3, 3]  # the test stays balanced
    with pytest.raises(ValueError, match="does not align"):
        split(data, 2, 3, shifted=LabelledData(shifted.inputs, np.roll(labels, 1), ["a", "b", "c"]))


def test_wordnet_noun_glosses_are_labelled_by_lexicographer_file(tmp_path):
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    synsets = [("00015388", "05", "animal", "a living organism characterized by voluntary movement"),
               ("02084071", "05", "dog", 'a member of the genus Canis; "the dog barked all night"'),
               ("02958343", "06", "car", 'a motor vehicle with four wheels; "he needs a car to get to work"'),
               ("09918248", "18", "child", "a young person of either sex")]
    lines = [f"{offset} {lexfile} n 01 {word} 0 000 | {gloss}  \n" for offset, lexfile, word, gloss in synsets]
    (tmp_path / "data.noun").write_text(header + "".join(lines))
    data = wordnet_nouns(tmp_path, classes=2)  # the two largest files: noun.animal (2), then noun.artifact by name
    assert data.class_names == ["noun.animal", "noun.artifact"]
    assert data.inputs == ["a living organism characterized by voluntary movement", "a member of the genus Canis",
                           "a motor vehicle with four wheels"]
    assert [data.class_names[label] for label in data.labels] == ["noun.animal", "noun.animal", "noun.artifact"]
    (tmp_path / "data.noun").write_text(header + lines[0] + "not a synset line\n")
    with pytest.raises(ValueError, match=r"data.noun:3: not a WordNet noun synset line"):
        wordnet_nouns(tmp_path)
    with pytest.raises(FileNotFoundError, match="install the Debian package wordnet-base"):
        wordnet_nouns(tmp_path / "missing")


def test_packaged_corpora_load_with_their_classes():
    topics = load_labelled("wiki-topics")
    assert topics.num_classes == 11 and "Uncategorized" not in topics.class_names and len(topics) > 8000
    sentiment = load_labelled("sentiment")
    assert sentiment.class_names == ["neg", "pos"] and np.bincount(sentiment.labels).tolist() == [100, 100]


# ---- evaluation ---------------------------------------------------------------------------------------------------

def test_knn_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    train_x, train_y, test_x = rng.normal(size=(60, 5)), rng.integers(0, 4, 60), rng.normal(size=(15, 5))
    predicted = knn_predictions(train_x, train_y, test_x, k=7)
    for i, query in enumerate(test_x):
        sims = [float(query @ t / np.linalg.norm(query) / np.linalg.norm(t)) for t in train_x]
        nearest = sorted(range(60), key=lambda j: -sims[j])[:7]
        counts, weights = [0] * 4, [0.0] * 4
        for j in nearest:
            counts[train_y[j]] += 1
            weights[train_y[j]] += sims[j]
        assert predicted["majority"][i] == counts.index(max(counts))
        assert predicted["weighted"][i] == weights.index(max(weights))
    with pytest.raises(ValueError, match="k = 70 neighbours"):
        knn_predictions(train_x, train_y, test_x, k=70)


def test_probe_separates_separable_classes_and_not_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    features = rng.normal(size=(300, 8)) + 6 * np.eye(3, 8)[labels]
    assert (probe_predictions(features[:200], labels[:200], features[200:]) == labels[200:]).mean() == 1.0
    noise = rng.normal(size=(300, 8))
    assert (probe_predictions(noise[:200], labels[:200], noise[200:]) == labels[200:]).mean() < 0.6


# ---- command line -------------------------------------------------------------------------------------------------

def test_command_line_trains_digits_and_writes_metrics_and_result(tmp_path, capsys):
    from grace.grpo_rm.train import main

    out = tmp_path / "run"
    result = main(["--data", "digits", "--steps", "12", "--batch-size", "32", "--evaluate-every", "5",
                   "--encoder-lr", "1e-3", "--output", str(out), "--log-every", "4"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(13))
    for name in ("reward", "true_class_advantage", "clip_fraction", "logit_norm", "accuracy", "seconds_left"):
        assert all(name in r for r in records[1:]), name
    assert [r["step"] for r in records if "eval_dev_head_accuracy" in r] == [0, 5, 10, 12]
    saved = json.loads((out / "result.json").read_text())
    assert saved["test"] == result["test"] and set(saved["test"]) == {"sr", "knn_majority", "knn_weighted", "head"}
    assert saved["sizes"] == {"train": 1797 - 700, "dev": 200, "test": 500}
    assert "step 4 | loss" in capsys.readouterr().out


def test_a_score_at_an_earlier_step_is_the_score_of_a_run_that_stops_there(tmp_path):
    from grace.grpo_rm.run import RunSettings, run

    settings = RunSettings(data="digits", encoder="digits-cnn", dev_per_class=10, test_per_class=20,
                           train_per_class=40, evaluate_every=3, imbalance=4.0, ood_data=None)
    config = TrainConfig(steps=6, batch_size=32, encoder_lr=1e-3, seed=1)
    long = run(RunSettings(**{**settings.to_dict(), "score_at": (3,)}), config, tmp_path / "long")
    short = run(settings, TrainConfig(**{**config.to_dict(), "steps": 3}), tmp_path / "short")
    assert long["test_at"]["3"]["test"] == short["test"] and long["test"] != short["test"]
    assert long["test_at"]["3"]["test_per_class"] == short["test_per_class"]
    # the balanced test: the overall accuracy is the mean of the per-class ones
    assert np.mean(long["test_per_class"]["head"]) == pytest.approx(long["test"]["head"])
    assert long["train_class_counts"] == [max(1, round(40 * 4.0 ** (-r / 9)))
                                          for r in np.random.default_rng(0).permutation(10)]
    with pytest.raises(ValueError, match=r"score_at steps \[4\] are not evaluation steps"):
        run(RunSettings(**{**settings.to_dict(), "score_at": (4,)}), config, tmp_path / "bad")


def test_command_line_refuses_a_missing_data_file(tmp_path):
    from grace.grpo_rm.train import main

    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--data", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "out")])


# ---- the real encoder ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_grpo_rm_on_the_packaged_minilm_learns_wiki_topics(tmp_path):
    """Only what is robust: the head is far above chance (1/11) after a short run, and the reward rises."""
    from grace.grpo_rm.run import RunSettings, run

    settings = RunSettings(max_length=32, dev_per_class=5, test_per_class=10, train_per_class=40, evaluate_every=0)
    result = run(settings, TrainConfig(steps=30, batch_size=16, encoder_lr=3e-5, head_lr=3e-3), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.1
    assert result["test"]["head"] > 0.4 and result["test"]["knn_weighted"] > 0.4


# ---- the comparison -----------------------------------------------------------------------------------------------

def test_comparison_selects_on_dev_runs_every_seed_resumes_and_reports(tmp_path, monkeypatch):
    from grace.grpo_rm import compare

    output = tmp_path / "cmp"
    argv = ["--data", "digits", "--arms", "frozen", "ce", "grpo_rm_prob", "grpo_rm_prob_policy_weighted",
            "--lr-grid", "1e-4", "1e-3",
            "--seeds", "0", "1", "--steps", "6", "--batch-size", "32", "--evaluate-every", "3",
            "--train-per-class", "40", "--output", str(output)]
    summary = compare.main(argv)
    for arm in ("ce", "grpo_rm_prob", "grpo_rm_prob_policy_weighted"):
        entry = summary["arms"][arm]
        grid = {float(lr): acc for lr, acc in entry["dev_grid"].items()}
        assert entry["chosen_lr"] == max(sorted(grid), key=lambda lr: (grid[lr], -lr))
        assert entry["seeds"] == 2 and entry["test"]["sr"]["n"] == 2
        for lr in grid:  # every rate ran with the selection seed; only the chosen one with the test seeds
            assert (output / "runs" / arm / f"lr{lr:g}" / "seed100" / "result.json").exists()
            for seed in ("seed0", "seed1"):
                assert (output / "runs" / arm / f"lr{lr:g}" / seed).exists() == (lr == entry["chosen_lr"])
    assert summary["missing"] == [] and summary["arms"]["frozen"]["chosen_lr"] is None
    report = (output / "report.md").read_text()
    assert "| grpo_rm_prob |" in report and "Result: on head" in report and (output / "accuracy.png").stat().st_size
    # a second call finds every run done and trains nothing
    monkeypatch.setattr(compare, "run", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert compare.main(argv)["arms"]["ce"]["test"] == summary["arms"]["ce"]["test"]
    # an unfinished grid is reported, not chosen from
    (output / "runs" / "ce" / "lr0.001" / "seed100" / "result.json").unlink()
    partial = compare.main(argv + ["--report-only"])
    assert "ce" not in partial["arms"] and str(output / "runs" / "ce" / "lr0.001" / "seed100") in partial["missing"]
    with pytest.raises(SystemExit, match="must not be counted"):
        compare.main(argv + ["--selection-seed", "1"])


def test_each_budget_chooses_its_rate_on_dev_at_that_step_and_is_scored_there(tmp_path):
    from grace.grpo_rm import compare

    output = tmp_path / "cmp"
    argv = ["--data", "digits", "--arms", "frozen", "ce", "grpo_rm_prob", "--lr-grid", "1e-4", "3e-3",
            "--seeds", "0", "1", "--steps", "6", "--score-at", "3", "--batch-size", "32", "--evaluate-every", "3",
            "--train-per-class", "40", "--imbalance", "4", "--output", str(output)]
    summary = compare.main(argv)
    for arm in ("ce", "grpo_rm_prob"):
        entry, grid = summary["arms"][arm], {}
        for lr in (1e-4, 3e-3):
            selection = json.loads((output / "runs" / arm / f"lr{lr:g}" / "seed100" / "result.json").read_text())
            grid[lr] = dict(selection["dev_curve"])[3]
        at_three = max(sorted(grid), key=lambda lr: (grid[lr], -lr))
        budget = entry["budgets"]["3"]
        assert budget["chosen_lr"] == at_three and budget["seeds"] == 2
        runs = [json.loads((output / "runs" / arm / f"lr{at_three:g}" / f"seed{seed}" / "result.json").read_text())
                for seed in (0, 1)]
        assert budget["test"]["head"]["values"] == [r["test_at"]["3"]["test"]["head"] for r in runs]
    frozen = summary["arms"]["frozen"]
    assert frozen["budgets"]["3"]["test"] == frozen["test"]  # nothing trains: the same at every budget
    report = (output / "report.md").read_text()
    assert "## Accuracy by budget" in report and "| 3 steps | 6 steps |" in report
    assert "## Per class (long-tailed training split, ratio 4" in report and (output / "convergence.png").exists()
