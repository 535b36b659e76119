"""grace.study: statistics against known answers, per-item scores against mteb, perplexity against the model's own
loss, rationale diversity by hand, the contrastive baseline on a tiny model, headroom's best-of-n, and configuration
errors."""

import json
import math
import zlib

import mteb
import numpy as np
import pytest
import torch
from scipy.stats import linregress, spearmanr
from transformers import AutoModelForCausalLM, AutoTokenizer

from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder
from grace.evaluation.local_tasks import local_tasks
from grace.evaluation.mteb_model import GraceMTEBModel
from grace.evaluation.rationale_cache import RationaleCache, encoder_namespace
from grace.study import contrastive, headroom
from grace.study.archive import archive_arm, restore_arms
from grace.study.config import load_config
from grace.study.contrastive import build_model, read_triples, train_contrastive, train_or_reuse
from grace.study.diversity import loops, rationale_diversity
from grace.study.diversity import main as diversity_main
from grace.study.drift import main as drift_main
from grace.study.drift import rationale_kl
from grace.study.heldout import HeldOutEvaluation, hit_rate_percent, retrieval_per_query, spearman_of_units
from grace.study.perplexity import perplexity
from grace.study.runner import collect_results
from grace.study.stats import (
    _replicates,
    bootstrap_interval,
    linear_trend,
    paired_bootstrap,
    resample_units,
    trend_verdict,
)
from tests.training import write_tiny_dataset


# ---------------------------------------------------------------------------------------------- statistics
def test_linear_trend_against_scipy_and_known_lines():
    assert linear_trend([1.0, 2.0, 3.0, 4.0]) == pytest.approx((1.0, 0.0))
    values, steps = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 2.0, 0.5], [0, 4, 8, 12, 16, 20, 24, 28]
    expected = linregress(steps, values)
    assert linear_trend(values, steps) == pytest.approx((expected.slope, expected.stderr))
    assert math.isnan(linear_trend([1.0, 2.0])[0])
    assert "rose" in trend_verdict(1.0, 0.1) and "fell" in trend_verdict(-1.0, 0.1)
    assert "no clear trend" in trend_verdict(0.1, 0.1) and "too few" in trend_verdict(float("nan"), float("nan"))
    with pytest.raises(ValueError, match="3 values but 2 steps"):
        linear_trend([1, 2, 3], [1, 2])


def test_paired_bootstrap_known_cases():
    rng = np.random.default_rng(0)
    hits = (rng.random(300) < 0.6).astype(float)
    identical = paired_bootstrap(hits, hits.copy())
    assert identical["diff"] == 0 and identical["ci_low"] <= 0 <= identical["ci_high"]
    shifted = paired_bootstrap(hits + 0.25, hits)  # a constant shift of every unit is the difference, exactly
    assert shifted["diff"] == pytest.approx(0.25) and shifted["ci_low"] == pytest.approx(0.25)
    assert shifted["ci_high"] == pytest.approx(0.25) and shifted["n"] == 300
    other = (rng.random(300) < 0.4).astype(float)
    noisy = paired_bootstrap(hits, other)
    assert noisy["ci_low"] < noisy["diff"] < noisy["ci_high"] and noisy["ci_low"] > 0  # 60% vs 40% at n=300
    low, high = bootstrap_interval(hits)
    assert low < hits.mean() < high
    with pytest.raises(ValueError, match="differ in number"):
        paired_bootstrap(hits, hits[:-1])


def test_spearman_bootstrap_resamples_pairs_as_rows():
    gold = np.linspace(0, 1, 50)
    units_a = np.stack([gold + 0.01 * np.sin(np.arange(50)), gold], axis=1)  # nearly perfect ranking
    units_b = np.stack([gold[::-1], gold], axis=1)                            # reversed
    result = paired_bootstrap(units_a, units_b, spearman_of_units, resamples=300)
    assert result["diff"] == pytest.approx(spearman_of_units(units_a) + 100)
    assert result["ci_low"] > 150


def test_spearman_of_units_scores_a_batch_like_scipy():
    rng = np.random.default_rng(3)
    units = np.stack([rng.normal(size=(40, 60)), np.round(rng.normal(size=(40, 60)) * 2)], axis=-1)  # gold ties
    units[0, :, 0] = np.round(units[0, :, 0])  # ties in the predictions too
    expected = [100 * spearmanr(u[:, 0], u[:, 1]).statistic for u in units]
    np.testing.assert_allclose(spearman_of_units(units), expected, rtol=1e-12)
    assert spearman_of_units(units[5]) == pytest.approx(expected[5], rel=1e-12)


def _bootstrap_loop(arms, statistics, resamples, seed, documents):
    """The bootstrap one replicate at a time, with scipy's Spearman: the oracle of the batched one."""
    scipy_statistics = {task: (lambda u: 100 * spearmanr(u[:, 0], u[:, 1]).statistic)
                        if statistic is spearman_of_units else (lambda u: 100 * float(np.mean(u)))
                        for task, statistic in statistics.items()}
    rng = np.random.default_rng(seed)
    replicates = [np.empty(resamples) for _ in arms]
    for r in range(resamples):
        indices = {task: resample_units(rng, len(arms[0][task][0]), documents.get(task)) for task in statistics}
        for values, arm in zip(replicates, arms):
            runs = len(arm[next(iter(statistics))])
            picked = [0] if runs == 1 else rng.integers(0, runs, size=runs)
            values[r] = np.mean([np.mean([scipy_statistics[task](arm[task][k][indices[task]]) for k in picked])
                                 for task in statistics])
    return replicates


def test_the_batched_bootstrap_equals_one_replicate_at_a_time():
    rng = np.random.default_rng(4)
    documents = np.array([(i, j) for i in range(12) for j in range(i + 1, 12)])  # 66 pairs of 12 documents
    statistics = {"sts": spearman_of_units, "hits": hit_rate_percent, "pairs": spearman_of_units}
    arms = [{"sts": [rng.normal(size=(50, 2)) for _ in range(runs)],
             "hits": [(rng.random(80) < 0.5).astype(float) for _ in range(runs)],
             "pairs": [rng.normal(size=(66, 2)) for _ in range(runs)]} for runs in (3, 1)]
    batched = _replicates(arms, statistics, 200, 7, {"pairs": documents})
    for got, expected in zip(batched, _bootstrap_loop(arms, statistics, 200, 7, {"pairs": documents})):
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        assert np.isfinite(got).all()


def test_seeds_are_resampled_with_the_items():
    hits = (np.random.default_rng(0).random(300) < 0.6).astype(float)
    # two training seeds 0.25 above and below the reference on every item: the score is their mean, and the
    # interval spans the seed-to-seed spread (a replicate draws both seeds from one run with probability 1/2)
    result = paired_bootstrap([hits + 0.25, hits - 0.25], hits, resamples=400)
    assert result["diff"] == pytest.approx(0) and result["n"] == 300
    assert result["ci_low"] == pytest.approx(-0.25) and result["ci_high"] == pytest.approx(0.25)
    low, high = bootstrap_interval([hits + 1, hits])  # seeds 1 apart: the interval spans them
    assert low < hits.mean() + 0.05 and high > hits.mean() + 0.95
    with pytest.raises(ValueError, match="same units"):
        paired_bootstrap([hits, hits[:-1]], hits)


def test_pairs_are_resampled_by_their_documents():
    documents = np.array([(i, j) for i in range(6) for j in range(i + 1, 6)])  # 15 pairs of 6 documents
    for seed in range(20):
        drawn = np.random.default_rng(seed).integers(0, 6, size=6)  # what resample_units draws first
        expected = sorted(tuple(sorted((drawn[p], drawn[q]))) for p in range(6) for q in range(p + 1, 6)
                          if drawn[p] != drawn[q])  # every pair of drawn documents, by position
        kept = resample_units(np.random.default_rng(seed), 15, documents)
        assert sorted(tuple(documents[k]) for k in kept) == expected
    units = np.random.default_rng(1).random((15, 2))
    with pytest.raises(ValueError, match=r"documents must be \[units, 2\]"):
        bootstrap_interval(units, spearman_of_units, documents=documents[:-1])


# ---------------------------------------------------------------------------------------------- held-out scores
def test_retrieval_per_query_by_hand():
    queries = np.eye(3, dtype=np.float32)
    documents = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0.2, 1]], dtype=np.float32)
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    result = retrieval_per_query(queries, documents)
    assert result["hit_at_1"].tolist() == [1.0, 0.0, 1.0]
    # query 1 (the y axis): doc 2 (0.196) beats its relevant doc 1 (0.110), doc 0 (0.0) does not: rank 2
    assert result["reciprocal_rank"].tolist() == pytest.approx([1.0, 1 / 2, 1.0])
    assert result["ndcg_at_10"].tolist() == pytest.approx([1.0, 1 / math.log2(3), 1.0])


def test_held_out_scores_equal_mteb_on_the_same_items(tiny_model_path):
    encoder = GraceEncoder.from_pretrained(tiny_model_path, backend="hf", device="cpu")
    scores = HeldOutEvaluation(retrieval_queries=12, lee_documents=8).evaluate(
        lambda texts: encoder.encode(texts, rationale=False))
    model = GraceMTEBModel(encoder, "tiny", rationale=False)
    for task in local_tasks(["WikiDescriptionRetrieval", "LeeSTS"], size=12):
        if task.metadata.name == "LeeSTS":
            task.documents = 8
        result = mteb.evaluate(model, task, cache=None).task_results[0]  # scores rounded to 5 decimals
        if task.metadata.name == "LeeSTS":
            assert scores["LeeSTS"].score == pytest.approx(100 * result.get_score(), abs=1e-3)
            assert scores["LeeSTS"].n == 28
        else:
            expected = 100 * result.get_score(getter=lambda s: s["hit_rate_at_1"])
            assert scores["WikiDescriptionRetrieval"].score == pytest.approx(expected, abs=1e-3)
            assert scores["WikiDescriptionRetrieval"].extra["ndcg_at_10"] == pytest.approx(
                100 * result.get_score(), abs=1e-3)
    assert scores["WikiDescriptionRetrieval"].n == 12


def test_dev_and_test_parts_are_disjoint_held_out_and_unambiguous(tmp_path):
    from collections import Counter

    from grace.data.assets import load_wiki_articles
    from grace.data.demo import split_articles
    from grace.evaluation.local_tasks import description_retrieval_items
    from tests.mteb_files import tiny_mteb_folder

    articles = load_wiki_articles()
    training, test = split_articles(articles, "test")
    _, dev = split_articles(articles, "dev")
    assert test == articles[::20] and dev == articles[10::20]  # the written rule; test: every earlier study's
    assert len(training) + len(test) + len(dev) == len(articles)
    assert not {id(a) for a in training} & {id(a) for a in test + dev}
    descriptions = Counter((a.get("description") or "").strip() for a in articles)
    queries = {}
    for part in ("test", "dev"):
        queries[part], documents = description_retrieval_items(None, part)
        assert len(queries[part]) >= 400 and len(documents) == len(queries[part])
        assert all(descriptions[q] == 1 for q in queries[part])  # no generic or duplicate description
    assert "Family of birds" not in queries["test"] and not set(queries["test"]) & set(queries["dev"])
    with pytest.raises(ValueError, match="part must be one of"):
        split_articles(articles, "train")

    folder = tiny_mteb_folder(tmp_path / "mteb")
    items = {"STS12": 6, "Banking77Classification": 3}
    calls = []

    def embed(texts):  # a unit vector per text, seeded by the text
        calls.append(len(texts))
        vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    dev_tasks = HeldOutEvaluation("dev", 20, mteb_folder=folder, mteb_items=items).evaluate(embed)
    assert calls == [40, 12, 15]  # task by task: retrieval, STS12's 6 pairs, Banking77's 12 + 3 texts
    assert all(result.extra["embedding_seconds"] >= 0 for result in dev_tasks.values())
    test_tasks = HeldOutEvaluation("test", 20, mteb_folder=folder, mteb_items=items).evaluate(embed)
    assert set(dev_tasks) == {"WikiDescriptionRetrieval", "STS12", "Banking77Classification"}  # Lee: test only
    assert set(test_tasks) == set(dev_tasks) | {"LeeSTS"}
    assert test_tasks["LeeSTS"].documents.shape == (1225, 2) and test_tasks["STS12"].units.shape == (6, 2)
    with pytest.raises(ValueError, match="need a data folder"):
        HeldOutEvaluation("test", 20, mteb_items=items)


def test_description_choice_scores_each_option_as_it_would_be_scored_alone(tiny_model_path):
    from grace.study.generative import OPTIONS, PROMPT, choice_units, description_choice_items, option_scores

    items = description_choice_items(6, "dev")
    assert all(len(set(item["options"])) == OPTIONS and 0 <= item["answer"] < OPTIONS for item in items)
    assert description_choice_items(6, "dev") == items  # fixed by its seed
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    scores = option_scores(model, tokenizer, items, batch_size=5)  # batches that cut across items, padded
    for i, item in enumerate(items):
        for k, option in enumerate(item["options"]):
            prompt = tokenizer(PROMPT.format(context=item["context"]), add_special_tokens=False)["input_ids"]
            answer = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            log_probs = torch.log_softmax(logits, -1)
            expected = np.mean([float(log_probs[len(prompt) - 1 + t, token]) for t, token in enumerate(answer)])
            assert scores[i, k] == pytest.approx(expected, abs=1e-5)  # scored in float32
    units = choice_units(model, tokenizer, items)
    assert units.tolist() == [float(row.argmax() == item["answer"]) for row, item in zip(scores, items)]


def test_perplexity_equals_the_models_own_loss(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    texts = ["The cat sat on the mat and looked outside.", "Paris is the capital of France.", "Short text here."]
    total, count = 0.0, 0
    for text in texts:  # the oracle: the model's built-in loss, one text at a time, weighted by predicted tokens
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(math.exp(total / count), rel=1e-5)
    with pytest.raises(ValueError, match="no text"):
        perplexity(model, tokenizer, [])


def test_rationale_kl_against_a_float64_loop(tiny_model_path):
    trained = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    sequences = [([5, 6, 7, 8, 9], [10, 11, 12]), ([13, 14], [15, 16, 17, 18, 19, 20]), ([21, 22, 23], [24]),
                 ([25, 26], [])]  # an empty rationale has no token to count
    total, count = 0.0, 0
    for prompt, rationale in sequences:  # the oracle: one unpadded sequence at a time, float64, full logits
        ids = torch.tensor([prompt + rationale])
        with torch.no_grad():
            log_p, log_q = (torch.log_softmax(m(input_ids=ids).logits[0].double(), -1) for m in (trained, base))
        for position in range(len(prompt) - 1, len(prompt) + len(rationale) - 1):
            total += float((log_p[position].exp() * (log_p[position] - log_q[position])).sum())
            count += 1
    expected = total / count
    assert expected > 1e-4  # the perturbation moved the model
    assert rationale_kl(trained, base, sequences, pad_id=0, batch_size=3) == pytest.approx(expected, rel=1e-4)
    assert rationale_kl(base, base, sequences, pad_id=0) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="non-empty rationale"):
        rationale_kl(trained, base, [([1, 2], [])], pad_id=0)


def test_drift_cli_records_kl_of_a_model_to_itself(tiny_model_path, tmp_path, capsys):
    record = tmp_path / "result.json"
    record.write_text(json.dumps({"kind": "grace"}))
    assert drift_main([str(tiny_model_path), str(tiny_model_path), "--texts", "3", "--rationale_length", "4",
                       "--rationale_cache", str(tmp_path / "rationales.sqlite"), "--record", str(record)]) == 0
    assert json.loads(record.read_text())["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert "on 3 held-out rationales" in capsys.readouterr().out


def test_rationale_diversity_by_hand():
    assert loops([1, 2, 3, 4] * 4) and not loops([1, 2, 3, 4] * 3 + [1, 2, 3])  # (1, 2, 3, 4) at 0, 4, 8 (, 12)
    assert loops([7] * 7) and not loops([7] * 6)  # overlapping occurrences count: 4 of (7, 7, 7, 7) in 7 tokens
    assert not loops([1, 2, 3])
    measured = rationale_diversity([[5, 6], [5, 6], [5, 6], [1, 2, 3, 4] * 4])
    assert measured == {"texts": 4, "distinct_percent": 50.0, "most_common_percent": 75.0, "looping_percent": 25.0}
    with pytest.raises(ValueError, match="at least one"):
        rationale_diversity([])


def test_rationales_are_cached_apart_for_each_backend_dtype_and_device(tiny_model_path):
    settings = EncoderSettings(generation=GenerationSettings(max_new_tokens=4))
    encoder = GraceEncoder.from_pretrained(tiny_model_path, backend="hf", settings=settings)
    namespace = encoder_namespace(tiny_model_path, encoder)
    assert encoder_namespace(tiny_model_path, encoder) == namespace  # a re-run finds its rationales
    others = [GraceEncoder.from_pretrained(tiny_model_path, backend="hf", settings=settings, dtype=torch.bfloat16),
              GraceEncoder(encoder.model, encoder.tokenizer, settings, generator=object())]  # another backend
    meta = GraceEncoder.from_pretrained(tiny_model_path, backend="hf", settings=settings)
    meta.model.to("meta")  # another device type (no GPU here)
    others.append(meta)
    assert len({namespace} | {encoder_namespace(tiny_model_path, other) for other in others}) == 4


def test_diversity_cli_reads_the_studys_cached_rationales(tiny_model_path, tmp_path, capsys):
    # Rationales planted in the cache under the namespace the evaluation uses: the CLI generates none and measures
    # exactly these (all texts but one get the same rationale).
    cache = tmp_path / "rationales.sqlite"
    settings = EncoderSettings(generation=GenerationSettings(max_new_tokens=4))
    texts = HeldOutEvaluation("test", 3, 2).texts()
    planted = {text: [11, 12, 13] for text in texts[1:]} | {texts[0]: [9, 9, 9, 9, 9, 9, 9]}
    encoder = GraceEncoder.from_pretrained(tiny_model_path, backend="hf", settings=settings)  # as the CLI loads it
    RationaleCache(cache, encoder_namespace(tiny_model_path, encoder)).put_many(planted)
    record = tmp_path / "result.json"
    record.write_text(json.dumps({"kind": "base"}))
    assert diversity_main([str(tiny_model_path), "--retrieval_queries", "3", "--lee_documents", "2",
                           "--rationale_length", "4", "--rationale_cache", str(cache), "--record", str(record)]) == 0
    n = len(texts)
    assert json.loads(record.read_text())["rationale_diversity"] == pytest.approx(
        {"texts": n, "distinct_percent": 200 / n, "most_common_percent": 100 * (n - 1) / n, "looping_percent": 100 / n})
    assert f"{n} held-out rationales" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- contrastive baseline
def test_contrastive_baseline_trains_every_parameter_and_lowers_its_loss(tiny_model_path, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", "supervised", train_rows=8, test_rows=1)
    triples = read_triples(data / "train.parquet", examples=8, seed=0)
    assert len(triples) == 8 and all(len(t) == 3 and all(isinstance(x, str) and x for x in t) for t in triples)
    initial = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict().items()}
    summary = train_contrastive(tiny_model_path, triples, tmp_path / "out", epochs=3, lr=1e-3, batch_size=4)
    assert summary["loss_after"] < summary["loss_before"] and summary["optimizer_steps"] == 6
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    unchanged = [k for k, v in trained.state_dict().items() if torch.equal(v, initial[k])]
    assert unchanged == []
    # The saved model embeds through GraceEncoder exactly as the trained sentence-transformers model did.
    encoder = GraceEncoder.from_pretrained(tmp_path / "out", backend="hf", device="cpu")
    st_model = build_model(tmp_path / "out")
    texts = [t[0] for t in triples[:3]]
    np.testing.assert_allclose(encoder.encode(texts, rationale=False), st_model.encode(texts), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="9 training examples asked for"):
        read_triples(data / "train.parquet", examples=9)


def test_a_finished_contrastive_run_is_kept_only_for_the_same_settings_and_triples(tiny_model_path, tmp_path,
                                                                                   monkeypatch):
    data = write_tiny_dataset(tmp_path / "data", "supervised", train_rows=8, test_rows=1)
    triples, out = read_triples(data / "train.parquet", examples=8, seed=0), tmp_path / "out"
    summary = train_contrastive(tiny_model_path, triples, out, epochs=1, lr=1e-3, batch_size=4, seed=3)
    retrained = []
    monkeypatch.setattr(contrastive, "train_contrastive", lambda *args: retrained.append(args[3:]) or {})
    assert train_or_reuse(tiny_model_path, triples, out, 1, 1e-3, 4, 3) == summary and retrained == []
    train_or_reuse(tiny_model_path, triples, out, 1, 1e-3, 4, 4)  # another seed
    train_or_reuse(tiny_model_path, triples, out, 2, 1e-3, 4, 3)  # more epochs
    train_or_reuse(tiny_model_path, triples[::-1], out, 1, 1e-3, 4, 3)  # the same triples in another order
    (out / contrastive.SUMMARY_FILE).unlink()  # an interrupted run: its model may be incomplete
    train_or_reuse(tiny_model_path, triples, out, 1, 1e-3, 4, 3)
    assert retrained == [(1, 1e-3, 4, 4), (2, 1e-3, 4, 3), (1, 1e-3, 4, 3), (1, 1e-3, 4, 3)]


def test_an_interrupted_contrastive_run_resumes_to_the_same_model(tiny_model_path, tmp_path, monkeypatch, capsys):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    data = write_tiny_dataset(tmp_path / "data", "supervised", train_rows=8, test_rows=1)
    triples = read_triples(data / "train.parquet", examples=8, seed=0)
    run = dict(epochs=3, lr=1e-3, batch_size=4, seed=1)
    plain = train_contrastive(tiny_model_path, triples, tmp_path / "plain", checkpoint_steps=None, **run)
    weights = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").state_dict()
    # Keeping checkpoints changes nothing, and they are gone once the model is written.
    kept = train_contrastive(tiny_model_path, triples, tmp_path / "kept", checkpoint_steps=2, **run)
    assert kept["losses"] == plain["losses"] and not (tmp_path / "kept" / contrastive.CHECKPOINTS_DIR).exists()
    # A process killed during optimizer step 4 (checkpoints after steps 2 and 4, every 2): it resumes after step 2.
    forward, training_calls = MultipleNegativesRankingLoss.forward, []

    def killed_at_step_4(self, *args, **kwargs):
        training_calls.append(torch.is_grad_enabled())
        if sum(training_calls) == 4:
            raise KeyboardInterrupt("killed")
        return forward(self, *args, **kwargs)

    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(MultipleNegativesRankingLoss, "forward", killed_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            train_contrastive(tiny_model_path, triples, out, checkpoint_steps=2, **run)
    assert [f.name for f in (out / contrastive.CHECKPOINTS_DIR).iterdir()] == ["checkpoint-2"]
    resumed = train_contrastive(tiny_model_path, triples, out, checkpoint_steps=2, **run)
    assert "resuming contrastive training from checkpoint-2" in capsys.readouterr().out
    assert resumed["resumed_from_step"] == 2 and resumed["optimizer_steps"] == 6
    assert resumed["losses"] == plain["losses"]
    for name, value in AutoModelForCausalLM.from_pretrained(out).state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)


def test_only_complete_checkpoints_of_the_same_run_are_resumed(tmp_path):
    settings = {"examples": 8, "triples_sha256": "ab", "epochs": 3, "lr": 1e-3, "batch_size": 4, "seed": 1}
    checkpoints = tmp_path / "checkpoints"
    for step, recorded in ((2, settings), (4, settings), (6, None), (10, {**settings, "seed": 2})):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        if recorded is not None:
            (checkpoints / f"checkpoint-{step}" / contrastive.PROGRESS_FILE).write_text(
                json.dumps({"settings": recorded, "train_seconds": 10.0 * step}))
    assert contrastive.latest_checkpoint(checkpoints, settings) == (checkpoints / "checkpoint-4", 40.0)
    assert sorted(f.name for f in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]  # 6 incomplete, 10 other
    assert contrastive.latest_checkpoint(checkpoints, {**settings, "lr": 2e-3}) == (None, 0.0)
    assert list(checkpoints.iterdir()) == []


# ---------------------------------------------------------------------------------------------- headroom
def test_headroom_best_of_n_is_the_highest_reward_sample(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "headroom"
    assert headroom.main(["--model", str(tiny_model_path), "--documents", "6", "--n", "3", "--rationale_length", "5",
                          "--batch_size", "6", "--out", str(out)]) == 0
    result = json.loads((out / "headroom.json").read_text())
    assert set(result["spans"]) == {"prompt+response", "response"}
    for span in result["spans"].values():
        for variant in ("reference", "infonce"):
            entry = span["variants"][variant]
            rewards = np.array(entry["rewards"])
            assert rewards.shape == (6, 3) and np.isfinite(rewards).all()
            assert entry["best_index"] == rewards.argmax(axis=1).tolist()
            assert 0 <= entry["best_accuracy_at_1"] <= 100
    assert "| response | infonce |" in (out / "headroom.md").read_text()
    # The sampled rewards are the training reward of each sample in batches of documents.
    main = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    query, negative = main[:, 0] + 0.1, main[:, 1] - 0.1
    got = headroom.sample_rewards(main, query, negative, "reference", groups_per_batch=2, temperature=0.1)
    from grace.reward import contrastive_rewards

    first = contrastive_rewards(torch.from_numpy(main[:2].reshape(6, 5)), torch.from_numpy(np.repeat(query[:2], 3, 0)),
                                torch.from_numpy(np.repeat(negative[:2], 3, 0)), torch.arange(2).repeat_interleave(3),
                                mode="supervised", temperature=0.1)["total"]
    np.testing.assert_allclose(got[:2].reshape(-1), first.double().numpy(), rtol=1e-6)


def test_headroom_hard_negatives_share_the_topic():
    articles = [{"topic": t} for t in ["a", "a", "b", "b", "b", "c"]]
    negatives = headroom.hard_negatives(articles, seed=1)
    for i, j in enumerate(negatives):
        assert i != j
        if i != 5:
            assert articles[i]["topic"] == articles[j]["topic"]


# ---------------------------------------------------------------------------------------------- configuration
def write_config(tmp_path, text: str):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_study_config_loads_and_reports_mistakes(tmp_path):
    arms = ("arms:\n  - {name: base_rationale, kind: base}\n"
            "  - {name: g, kind: grace, pooling_span: response, settings: {steps: 3, lr: 0.001}}\n")
    config = load_config(write_config(tmp_path, "name: s\n" + arms))
    assert config.arm("g").settings == {"steps": 3, "lr": 0.001} and config.evaluation.retrieval_queries is None
    assert config.evaluation.part == "test" and config.arm("g").runs() == [("g", None)]
    mistakes = {
        "name: s\nunknown: 1\n" + arms: "unknown key",
        "name: s\narms:\n  - {name: a, kind: magic}\ncompare_to: a\n": "kind must be one of",
        "name: s\narms:\n  - {name: base_rationale, kind: grace, settings: {speed: 3}}\n": "speed",
        "name: s\narms:\n  - {name: base_rationale, kind: grace, settings: {train_triples: 3}}\n": "train_triples",
        "name: s\narms:\n  - {name: base_rationale, kind: base}\n  - {name: base_rationale, kind: base}\n": "unique",
        "name: s\narms:\n  - {name: a, kind: base}\n": "compare_to",
        "name: s\narms:\n  - {name: base_rationale, kind: base, compare_to: nope}\n": "'nope' is not another arm",
        "name: s\narms:\n  - {name: base_rationale, kind: base}\n"
        "  - {name: b, kind: base, compare_to: [base_rationale, x]}\n":
            "'x' is not another arm",
        "name: s\narms:\n  - {name: base_rationale, kind: base, compare_to: base_rationale}\n": "not another arm",
        "name: s\narms:\n  - {name: base_rationale, kind: base, rationale: false, pooling_span: response}\n":
            "needs rationale",
        "name: s\nevaluation: {queries: 3}\n" + arms: "evaluation: unknown key",
        "name: s\nevaluation: {part: train}\n" + arms: "part must be 'test' or 'dev'",
        "name: s\nevaluation: {mteb_items: {STS99: 5}}\n" + arms: r"unknown task\(s\) \['STS99'\]",
        "name: s\nevaluation: {rationale_samples: 4}\n" + arms: "set rationale_temperature above 0",
        "name: s\nevaluation: {rationale_temperature: -1}\n" + arms: "rationale_temperature must be >= 0",
        "name: s\narms:\n  - {name: base_rationale, kind: base, seeds: [0, 1]}\n": "takes no seeds",
        "name: s\narms:\n  - {name: base_rationale, kind: base}\n  - {name: g, kind: grace, seeds: [1, 1]}\n":
            "distinct integers",
        "name: s\narms:\n  - {name: base_rationale, kind: base}\n  - {name: g, kind: grace, settings: {seed: 1}}\n":
            "as the arm's `seeds`",
        # Evaluation levers: another trained arm's model, the arm's own rationale generation.
        "name: s\n" + arms + "  - {name: e, kind: grace, model_from: nope}\n": r"'nope' is not an arm listed before it",
        "name: s\narms:\n  - {name: e, kind: grace, model_from: g}\n  - {name: base_rationale, kind: base}\n"
        "  - {name: g, kind: grace}\n": "'g' is not an arm listed before it",
        "name: s\n" + arms + "  - {name: e, kind: base, model_from: base_rationale}\n": "does not train a model",
        "name: s\n" + arms + "  - {name: e, kind: contrastive, model_from: g}\n": "give this arm the same kind",
        "name: s\n" + arms + "  - {name: e, kind: grace, model_from: g, settings: {lr: 0.1}}\n": "remove its settings",
        "name: s\n" + arms + "  - {name: e, kind: grace, model_from: g}\n"
        "  - {name: f, kind: grace, model_from: e}\n":
            "itself from 'g'",
        "name: s\n" + arms + "  - {name: e, kind: grace, model_from: g, evaluation: {part: dev}}\n":
            r"\['part'\] are the study's",
        "name: s\n" + arms + "  - {name: e, kind: grace, model_from: g, evaluation: {rationale_samples: 2}}\n":
            "arm 'e': evaluation: rationale_samples=2 averages sampled",
        "name: s\n" + arms + "  - {name: e, kind: base, evaluation: {rationale_length: 0}}\n":
            "rationale_length must be >= 1",
    }
    for text, message in mistakes.items():
        with pytest.raises(ValueError, match=message):
            load_config(write_config(tmp_path, text))
    sampled = load_config(write_config(tmp_path, "name: s\nevaluation: {rationale_temperature: 1.0, "
                                                  "rationale_samples: 4}\n" + arms))
    from grace.study.runner import encoder_settings

    greedy = encoder_settings(config, config.arm("g"))
    assert not greedy.generation.do_sample and greedy.rationale_samples == 1 and greedy.pooling_span == "response"
    assert greedy.generation.max_new_tokens == config.evaluation.rationale_length
    sampling = encoder_settings(sampled, sampled.arm("g")).generation
    assert (sampling.do_sample, sampling.temperature, encoder_settings(sampled, sampled.arm("g")).rationale_samples
            ) == (True, 1.0, 4)
    seeded = load_config(write_config(tmp_path, "name: s\n" + arms
                                      + "  - {name: c, kind: contrastive, seeds: [3, 5]}\n"
                                      + "  - {name: c_long, kind: contrastive, model_from: c, "
                                        "evaluation: {rationale_length: 96, rationale_temperature: 0.7, "
                                        "rationale_samples: 3}}\n"))
    assert seeded.arm("c").runs() == [("c@seed3", 3), ("c@seed5", 5)]
    assert seeded.arm("c_long").runs() == [("c_long@seed3", 3), ("c_long@seed5", 5)]  # seed for seed
    lever = encoder_settings(seeded, seeded.arm("c_long"))
    assert (lever.generation.max_new_tokens, lever.generation.temperature, lever.rationale_samples) == (96, 0.7, 3)
    assert seeded.arm_evaluation(seeded.arm("c")) == seeded.evaluation  # the other arms keep the study's


def test_committed_study_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("studies/*.yaml")):
        assert load_config(path).arms


def write_finished_arm(arms_dir, name, hits, **record):
    """An evaluated arm as the runner leaves it: result.json and the per-query hits of one retrieval task."""
    arm_dir = arms_dir / name
    arm_dir.mkdir(parents=True)
    np.savez(arm_dir / "units.npz", WikiDescriptionRetrieval=np.array(hits, dtype=float))
    task = {"metric": "accuracy@1", "score": 100 * float(np.mean(hits)), "n": len(hits)}
    (arm_dir / "result.json").write_text(json.dumps({"kind": "base", "tasks": {"WikiDescriptionRetrieval": task},
                                                     **record}))
    return arm_dir


def write_run(arms_dir, name, units: dict, **record):
    """An evaluated run with several tasks: `units` task -> per-item units (hits or (cosine, gold) rows)."""
    from grace.study.heldout import STATISTICS

    metrics = {"WikiDescriptionRetrieval": "accuracy@1", "STS12": "cosine_spearman",
               "Banking77Classification": "accuracy", "DescriptionChoice": "accuracy"}
    arm_dir = arms_dir / name
    arm_dir.mkdir(parents=True)
    np.savez(arm_dir / "units.npz", **{task: np.asarray(u, dtype=float) for task, u in units.items()})
    tasks = {task: {"metric": metrics[task], "score": STATISTICS[metrics[task]](np.asarray(u, dtype=float)),
                    "n": len(u)} for task, u in units.items()}
    (arm_dir / "result.json").write_text(json.dumps({"kind": "base", "rationale": True, "pooling_span": "response",
                                                     "perplexity": 20.0, "eval_seconds": 1.0, "tasks": tasks,
                                                     **record}))


def test_seeded_arms_score_the_mean_of_their_runs_and_mteb_offline_is_the_mean_of_its_tasks(tmp_path):
    from grace.study.heldout import MTEB_AVERAGE
    from grace.study.report import comparisons_made, results_table, tasks_by_arm

    config = load_config(write_config(tmp_path, (
        "name: s\nprimary: grace vs base_rationale on MTEB-offline\nevaluation: {bootstrap_resamples: 300, "
        "mteb_folder: unused, mteb_items: {STS12: 30, Banking77Classification: 40}}\narms:\n"
        "  - {name: base_rationale, kind: base}\n  - {name: grace, kind: grace, seeds: [0, 1]}\n")))
    rng = np.random.default_rng(0)
    gold = rng.random(30)

    def units(noise, accuracy):
        return {"WikiDescriptionRetrieval": (rng.random(25) < accuracy).astype(float),
                "STS12": np.stack([gold + noise * rng.normal(size=30), gold], axis=1),
                "Banking77Classification": (rng.random(40) < accuracy).astype(float)}

    arms = tmp_path / "run/arms"
    write_run(arms, "base_rationale", units(0.5, 0.4))
    write_run(arms, "grace@seed0", units(0.1, 0.8), kind="grace", seed=0, perplexity=21.0)
    assert "grace" in collect_results(config, tmp_path / "run")["not_run"]  # one seed of two: not an arm yet
    write_run(arms, "grace@seed1", units(0.3, 0.7), kind="grace", seed=1, perplexity=23.0)
    results = collect_results(config, tmp_path / "run")
    grace, base = results["arms"]["grace"], results["arms"]["base_rationale"]
    runs = [json.loads((arms / f"grace@seed{s}/result.json").read_text())["tasks"] for s in (0, 1)]
    for task, values in grace["tasks"].items():
        if task != MTEB_AVERAGE:
            assert values["score"] == pytest.approx((runs[0][task]["score"] + runs[1][task]["score"]) / 2)
        assert values["score_ci"][0] <= values["score"] <= values["score_ci"][1]
    assert grace["perplexity"] == 22.0 and grace["runs"]["grace@seed1"]["tasks"]["STS12"] == runs[1]["STS12"]["score"]
    for arm in (grace, base):
        average = arm["tasks"][MTEB_AVERAGE]
        assert average["score"] == pytest.approx((arm["tasks"]["STS12"]["score"]
                                                  + arm["tasks"]["Banking77Classification"]["score"]) / 2)
        assert average["n"] == 2
    paired = grace["tasks"][MTEB_AVERAGE]["vs_base_rationale"]
    assert paired["diff"] == pytest.approx(grace["tasks"][MTEB_AVERAGE]["score"] - base["tasks"][MTEB_AVERAGE]["score"])
    assert 0 < paired["ci_low"] < paired["diff"] < paired["ci_high"] and paired["n"] == 70
    assert grace["tasks"][MTEB_AVERAGE]["vs_best_base"]["arm"] == "base_rationale"
    assert comparisons_made(results)[0].startswith("Primary comparison (named in the configuration before the study "
                                                   "ran): grace vs base_rationale on MTEB-offline")
    assert "makes 8 paired comparisons" in comparisons_made(results)[1]  # 4 tasks x (study reference, best base)
    assert any(line.startswith("| grace |") for line in results_table(results))
    table = tasks_by_arm(results)
    assert table[0] == "| task | base_rationale | grace (2 seeds) |" and table[-1] == "| perplexity | 20.00 | 22.00 |"
    average = grace["tasks"][MTEB_AVERAGE]
    assert f"| {MTEB_AVERAGE} | " in table[-2] and table[-2].endswith(
        f"| {average['score']:.1f} [{average['score_ci'][0]:.1f}, {average['score_ci'][1]:.1f}] |")


def test_a_task_added_after_some_runs_is_paired_and_averaged_only_where_every_run_has_it(tmp_path):
    from grace.study.report import _arm_details, results_table, verdict

    config = load_config(write_config(tmp_path, (
        "name: s\nevaluation: {bootstrap_resamples: 200, mteb_folder: unused, mteb_items: {STS12: 30}}\narms:\n"
        "  - {name: base_rationale, kind: base}\n  - {name: grace, kind: grace, seeds: [0, 1]}\n"
        "  - {name: c, kind: contrastive}\n")))
    rng = np.random.default_rng(1)
    gold = rng.random(30)

    def units(*tasks):
        every = {"STS12": np.stack([gold + rng.normal(size=30), gold], axis=1),
                 "WikiDescriptionRetrieval": (rng.random(25) < 0.5).astype(float)}
        return {task: every[task] for task in tasks}

    arms = tmp_path / "run/arms"
    # evaluated before retrieval was added; the generative task is the base model's, paired with every trained arm's
    write_run(arms, "base_rationale", {**units("STS12"), "DescriptionChoice": [1] * 20 + [0] * 20})
    write_run(arms, "grace@seed0", units("STS12"), kind="grace", seed=0)
    write_run(arms, "grace@seed1", units("STS12", "WikiDescriptionRetrieval"), kind="grace", seed=1)
    write_run(arms, "c", {**units("STS12", "WikiDescriptionRetrieval"), "DescriptionChoice": [1] * 36 + [0] * 4},
              kind="contrastive")
    results = collect_results(config, tmp_path / "run")
    grace, contrastive_arm = results["arms"]["grace"], results["arms"]["c"]
    assert list(grace["tasks"]) == ["STS12", "MTEB-offline"]
    assert grace["tasks_not_in_every_run"] == ["WikiDescriptionRetrieval"]
    assert "WikiDescriptionRetrieval" in grace["runs"]["grace@seed1"]["tasks"]
    assert any("left out of its means" in line and line.endswith("WikiDescriptionRetrieval")
               for line in _arm_details("grace", grace))
    assert "vs_base_rationale" in contrastive_arm["tasks"]["STS12"]
    assert "vs_base_rationale" not in contrastive_arm["tasks"]["WikiDescriptionRetrieval"]
    table = results_table(results)
    header, cells = table[0].split(" | "), next(line for line in table if line.startswith("| c |")).split(" | ")
    retrieval_delta, sts_delta = (header.index(f"{task} ") + 1 for task in ("WikiDescriptionRetrieval", "STS12"))
    assert header[retrieval_delta] == header[sts_delta] == "Δ vs base_rationale"
    assert cells[retrieval_delta] == "-"  # the reference was not scored on it
    assert cells[sts_delta][0] in "+-" and "[" in cells[sts_delta]
    assert sum("(reference)" in line for line in results_table(results)) == 1
    best = contrastive_arm["tasks"]["DescriptionChoice"]["vs_best_base"]
    assert best["arm"] == "base_rationale" and best["diff"] == pytest.approx(40.0) and best["ci_low"] > 0
    assert [line for line in verdict(results) if "DescriptionChoice" in line] == [
        "- c on DescriptionChoice (generative retention): better than the base model (base_rationale): 90.0 against "
        f"50.0 (accuracy, paired difference +40.0 [{best['ci_low']:+.1f}, {best['ci_high']:+.1f}], n = 40)."]


def test_the_verdict_names_the_strongest_untrained_embedding_not_only_the_same_span_one(tmp_path):
    """Made-up per-query hits where the base model pooled as GRACE pools (the rationale alone) is the weakest base
    and the base model without a rationale the strongest: GRACE beats the first and not the second."""
    from grace.demo import training_verdict
    from grace.study.report import verdict

    config = load_config(write_config(tmp_path, (
        "name: s\nevaluation: {bootstrap_resamples: 500}\narms:\n"
        "  - {name: base_prompt_only, kind: base, rationale: false}\n  - {name: base_rationale, kind: base}\n"
        "  - {name: base_rationale_response, kind: base, pooling_span: response}\n"
        "  - {name: grace, kind: grace, pooling_span: response, compare_to: base_rationale_response}\n")))
    arms = tmp_path / "run/arms"
    prompt_only = [1] * 24 + [0] * 16  # 60%
    write_finished_arm(arms, "base_prompt_only", prompt_only, rationale=False, pooling_span="prompt+response")
    write_finished_arm(arms, "base_rationale", [1] * 20 + [0] * 20, rationale=True, pooling_span="prompt+response")
    write_finished_arm(arms, "base_rationale_response", [1] * 10 + [0] * 30, rationale=True, pooling_span="response")
    grace = [1] * 22 + [0] * 2 + [1] * 2 + [0] * 14  # 60%, on other queries than the prompt-only base in places
    write_finished_arm(arms, "grace", grace, kind="grace", rationale=True, pooling_span="response", perplexity=18.0,
                       kl_to_base=0.1)
    (arms / "base_prompt_only/result.json").write_text(json.dumps(
        {**json.loads((arms / "base_prompt_only/result.json").read_text()), "perplexity": 17.5}))
    results = collect_results(config, tmp_path / "run")
    task = results["arms"]["grace"]["tasks"]["WikiDescriptionRetrieval"]
    best = task["vs_best_base"]
    assert best["arm"] == "base_prompt_only" and best["diff"] == 0.0 and best["ci_low"] < 0 < best["ci_high"]
    assert task["vs_base_rationale"]["diff"] == pytest.approx(10.0)  # the study's compare_to, kept
    assert task["vs_base_rationale_response"]["ci_low"] > 0  # beats the base pooled the same way
    assert all("vs_best_base" not in t for name, arm in results["arms"].items() if arm["kind"] == "base"
               for t in arm["tasks"].values())
    lines = verdict(results)
    assert lines[0].startswith("- grace on WikiDescriptionRetrieval: no better than the base model without a "
                           "rationale, the strongest untrained embedding (base_prompt_only): 60.0 against 60.0")
    assert lines[1].startswith("  Pooled the same way (the base model with a rationale pooled over the rationale "
                               "alone, base_rationale_response), training moved it by +35.0")
    assert lines[1].endswith(": better.") and len(lines) == 2
    assert training_verdict(results)[:2] == lines  # the demo says the same, then generative retention
    assert "held-out perplexity 18.00 after training against 17.50 before" in training_verdict(results)[2]

    # The strongest base's per-item scores lost (an archived arm): still named the strongest, never replaced by the
    # strongest of those that can be paired, and no interval is made up.
    record = json.loads((arms / "base_prompt_only/result.json").read_text())
    (arms / "base_prompt_only/result.json").write_text(json.dumps({**record, "units_lost": "machine replaced"}))
    (arms / "base_prompt_only/units.npz").unlink()
    unpaired = collect_results(config, tmp_path / "run")["arms"]["grace"]["tasks"]["WikiDescriptionRetrieval"]
    assert unpaired["vs_best_base"] == {"arm": "base_prompt_only", "not_paired": "its per-item scores were lost"}
    assert verdict(collect_results(config, tmp_path / "run"))[0] == (
        "- grace on WikiDescriptionRetrieval: 60.0 against 60.0 for the base model without a rationale, the strongest "
        "untrained embedding (base_prompt_only); not paired: its per-item scores were lost.")


def test_archived_arms_rebuild_the_same_results_and_lost_units_are_never_paired(tmp_path):
    config = load_config(write_config(tmp_path, (
        "name: s\nevaluation: {bootstrap_resamples: 200}\narms:\n  - {name: base_rationale, kind: base}\n"
        "  - {name: old, kind: base}\n  - {name: new, kind: base, compare_to: old}\n")))
    run, archive = tmp_path / "run", tmp_path / "archive"
    write_finished_arm(run / "arms", "base_rationale", [1, 0, 0, 1, 0, 1, 0, 0])
    write_finished_arm(run / "arms", "new", [1, 1, 0, 1, 1, 1, 0, 1])
    (run / "arms/new/metrics.jsonl").write_text('{"step": 1}\n')
    before = collect_results(config, run)
    for name in ("base_rationale", "new"):
        archive_arm(run / "arms" / name, archive)
    assert sorted(p.name for p in (archive / "new").iterdir()) == ["metrics.jsonl", "result.json", "units.npz"]
    with pytest.raises(FileNotFoundError, match="not finished"):
        archive_arm(run / "arms" / "old", archive)

    # A new machine: the run folder is gone, the archive rebuilds the same results, files byte for byte.
    fresh = tmp_path / "fresh"
    assert restore_arms(archive, fresh / "arms", [arm.name for arm in config.arms]) == ["base_rationale", "new"]
    assert (fresh / "arms/new/units.npz").read_bytes() == (run / "arms/new/units.npz").read_bytes()
    assert collect_results(config, fresh) == before
    assert before["arms"]["new"]["tasks"]["WikiDescriptionRetrieval"]["vs_base_rationale"]["diff"] == 37.5
    # A finished arm in the run folder is newer than the archive's: never overwritten.
    (fresh / "arms/new/result.json").write_text("{}")
    assert restore_arms(archive, fresh / "arms", ["new"]) == [] and (fresh / "arms/new/result.json").read_text() == "{}"

    # An arm whose per-item scores were lost keeps the intervals it was recorded with; nothing is paired with it.
    stored = {"metric": "accuracy@1", "score": 50.0, "n": 8, "score_ci": [12.5, 87.5],
              "vs_base_rationale": {"diff": 12.5, "ci_low": -25.0, "ci_high": 50.0, "n": 8, "resamples": 200}}
    (archive / "old").mkdir()
    (archive / "old/result.json").write_text(json.dumps({"kind": "base", "units_lost": "machine replaced",
                                                         "tasks": {"WikiDescriptionRetrieval": stored}}))
    assert restore_arms(archive, run / "arms", [arm.name for arm in config.arms]) == ["old"]
    results = collect_results(config, run)
    assert results["arms"]["old"]["tasks"]["WikiDescriptionRetrieval"] == stored and results["not_run"] == []
    assert set(results["arms"]["new"]["tasks"]["WikiDescriptionRetrieval"]) == {"metric", "score", "n", "score_ci",
                                                                                "vs_base_rationale"}
    (run / "arms/new/units.npz").unlink()
    with pytest.raises(FileNotFoundError, match="units.npz is missing"):
        collect_results(config, run)


def test_tradeoff_plot_reads_averages_and_tasks_outside_them_against_perplexity(tmp_path):
    from grace.study.report import plot_tradeoff, tradeoff_tasks

    def arm(kind, perplexity, **scores):
        tasks = {task: {"score": score, "score_ci": [score - 1, score + 1]} for task, score in scores.items()}
        return {"kind": kind, "perplexity": perplexity, "tasks": tasks}

    scores = {"STS12": 40.0, "DescriptionChoice": 50.0, "MTEB-offline": 45.0, "WikiDescriptionRetrieval": 60.0}
    results = {"arms": {"base": arm("base", 17.0, **scores), "grace": arm("grace", 17.5, **scores),
                        "minilm": {"kind": "sentence_transformer", "tasks": {"LeeSTS": {"score": 70.0}}}}}
    # LeeSTS is scored only by an arm without a perplexity, the generative task is retention, STS12 is averaged.
    assert tradeoff_tasks(results) == ["MTEB-offline", "WikiDescriptionRetrieval"]
    assert plot_tradeoff(results, tmp_path / "tradeoff.png") and (tmp_path / "tradeoff.png").stat().st_size > 0
    del results["arms"]["base"], results["arms"]["grace"]
    assert not plot_tradeoff(results, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
