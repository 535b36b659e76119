"""Evaluation: task selection, local tasks scored as mteb scores them, eval_mteb.py, the rationale cache."""

import json
import math

import numpy as np
import pytest
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from scipy.stats import spearmanr

import eval_mteb
from grace.evaluation.local_tasks import LeeSTS, WikiDescriptionRetrieval, local_tasks
from grace.evaluation.run import evaluate_tasks, resolve_tasks
from grace.generation import ContinuousBatchGenerator
from tests.mteb_files import tiny_mteb_folder, write_jsonl


class FixedEncoder(AbsEncoder):
    """A deterministic embedding per text (seeded by its characters): an encoder whose outputs we know."""

    def __init__(self, dim=16):
        self.dim = dim
        self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
            name="test/fixed", similarity_fn_name=ScoringFunction.COSINE, embed_dim=dim))

    def vector(self, text):
        seed = sum((i + 1) * ord(c) for i, c in enumerate(text[:200])) % 2**32
        return np.random.default_rng(seed).normal(size=self.dim)

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        return np.array([self.vector(t) for batch in inputs for t in batch["text"]], dtype=np.float32)


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_local_scores_are_what_mteb_computes_for_the_same_embeddings():
    model = FixedEncoder()
    sts, retrieval = LeeSTS(), WikiDescriptionRetrieval()
    retrieval.queries = 40
    rows = {r["task"]: r for r in evaluate_tasks(model, [sts, retrieval], results_folder=None)}

    sts, retrieval = LeeSTS(), WikiDescriptionRetrieval()  # mteb unloads a task's data after evaluating it
    retrieval.queries = 40
    sts.load_data()
    retrieval.load_data()
    data = sts.dataset["default"]["test"]
    predicted = [cosine(model.vector(a), model.vector(b)) for a, b in zip(data["sentence1"], data["sentence2"])]
    assert len(predicted) == 1225
    assert rows["LeeSTS"]["score"] == pytest.approx(100 * spearmanr(predicted, data["score"]).statistic, abs=1e-3)

    split = retrieval.dataset["default"]["test"]
    docs = [model.vector(t) for t in split["corpus"]["text"]]
    hits, ndcg = [], []
    for position, query in enumerate(split["queries"]["text"]):
        scores = [cosine(model.vector(query), d) for d in docs]
        rank = 1 + sum(s > scores[position] for s in scores)  # the relevant document of query i is doc i
        hits.append(rank == 1)
        ndcg.append(1 / math.log2(rank + 1) if rank <= 10 else 0.0)
    assert rows["WikiDescriptionRetrieval"]["hit_rate_at_1"] == pytest.approx(100 * np.mean(hits), abs=1e-3)
    assert rows["WikiDescriptionRetrieval"]["score"] == pytest.approx(100 * np.mean(ndcg), abs=1e-3)


def test_named_sets_and_language_filter():
    eng = resolve_tasks(benchmark="MTEB(eng, v1)")
    names = [t.metadata.name for t in eng]
    assert len(names) == 56 and "StackExchangeClusteringP2P" in names
    assert len(resolve_tasks(benchmark="subset")) == 9
    assert len(resolve_tasks(benchmark="ablation16")) == 16
    tasks = {t.metadata.name: t for t in resolve_tasks(["MassiveIntentClassification", "STS17", "MSMARCO"])}
    assert tasks["MassiveIntentClassification"].hf_subsets == ["en"]
    assert tasks["STS17"].hf_subsets == ["en-en"]
    assert tasks["MSMARCO"].metadata.eval_splits == ["dev"]  # its own split, not a forced "test"
    assert len(resolve_tasks(["MassiveIntentClassification"], languages=None)[0].hf_subsets) > 50
    assert [t.metadata.name for t in resolve_tasks(["local"])] == ["LeeSTS", "WikiDescriptionRetrieval",
                                                                    "WikiTopicClustering"]


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown task.*NotATask"):
        resolve_tasks(["STS16", "NotATask"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        resolve_tasks(benchmark="MTEB(klingon)")


@pytest.mark.slow
def test_eval_mteb_on_local_tasks_caches_rationales(tiny_model_path, tmp_path, monkeypatch, capsys):
    args = ["--model_path", str(tiny_model_path), "--tasks", "local", "--local_size", "12", "--thinking_max_length",
            "6", "--output_dir", str(tmp_path / "run"), "--batch_size", "4", "--model_name", "tiny"]
    assert eval_mteb.main(args) == 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert [r["task"] for r in summary["tasks"]] == ["LeeSTS", "WikiDescriptionRetrieval", "WikiTopicClustering"]
    assert all(math.isfinite(r["score"]) and r["seconds"] > 0 for r in summary["tasks"])
    assert set(summary["categories"]) == {"STS", "Retrieval", "Clustering"}
    assert "mean_over_categories" in summary["average"] and "Avg column matches neither" in summary["averaging_rule"]
    assert "| LeeSTS | STS | cosine_spearman |" in (tmp_path / "run/summary.md").read_text()
    assert list((tmp_path / "run/mteb").rglob("LeeSTS.json"))

    # A second run finds every rationale in the cache: generating anything now would fail.
    def no_generation(*_args, **_kwargs):
        raise AssertionError("a cached rationale was generated again")

    monkeypatch.setattr(ContinuousBatchGenerator, "_generate", no_generation)  # generate and generate_pooled
    again = args[:-6] + ["--output_dir", str(tmp_path / "again"), "--rationale_cache",
                         str(tmp_path / "run/rationales.sqlite"), "--compare", str(tmp_path / "run/summary.json"),
                         "--batch_size", "4", "--model_name", "tiny"]
    assert eval_mteb.main(again) == 0
    second = json.loads((tmp_path / "again/summary.json").read_text())
    assert [r["score"] for r in second["tasks"]] == pytest.approx([r["score"] for r in summary["tasks"]], abs=1e-6)
    assert "| GRACE/tiny | GRACE/tiny | difference |" in (tmp_path / "again/summary.md").read_text()


def test_generation_failure_stops_the_evaluation(tiny_model_path, tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(ContinuousBatchGenerator, "_generate", broken)  # generate and generate_pooled
    with pytest.raises(RuntimeError, match="rationale generation failed.*CUDA out of memory"):
        eval_mteb.main(["--model_path", str(tiny_model_path), "--tasks", "LeeSTS", "--local_size", "3",
                        "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("args, code, message", [
    (["--model_path", "/no/such/model", "--tasks", "local"], 1, "model path does not exist"),
    (["--model_path", "{model}", "--tasks", "NotATask"], 1, "unknown task"),
    (["--model_path", "{model}", "--tasks", "local", "--pooling_method", "eos"], 2, "eos is not supported"),
])
def test_eval_mteb_errors(tiny_model_path, capsys, args, code, message):
    assert eval_mteb.main([a.format(model=tiny_model_path) for a in args]) == code
    assert message in capsys.readouterr().err


def test_local_task_sizes():
    sts, retrieval, clustering = local_tasks(size=10)
    for task in (sts, retrieval, clustering):
        task.load_data()
    assert len(sts.dataset["default"]["test"]) == 45  # 10 documents, every pair
    assert len(retrieval.dataset["default"]["test"]["queries"]) == 10
    assert len(set(clustering.dataset["default"]["test"]["labels"])) > 3


# ---------------------------------------------------------------- MTEB tasks from a data folder
def test_mteb_scores_offline_tasks_as_an_independent_computation_does(tmp_path):
    from sklearn.linear_model import LogisticRegression

    folder = tiny_mteb_folder(tmp_path / "mteb")
    model = FixedEncoder()
    rows = {r["task"]: r for r in evaluate_tasks(model, resolve_tasks(["STS12", "Banking77Classification"],
                                                                        data_folder=folder), results_folder=None)}
    sts = [json.loads(line) for line in (folder / "STS12/test.jsonl").read_text().splitlines()]
    cosines = [cosine(model.vector(r["sentence1"]), model.vector(r["sentence2"])) for r in sts]
    assert rows["STS12"]["score"] == pytest.approx(100 * spearmanr(cosines, [r["score"] for r in sts]).statistic,
                                                   abs=1e-3)
    # mteb's protocol: logistic regressions on up to 8 training texts per label (here all 4), accuracy on test
    train, test = ([json.loads(line) for line in (folder / f"Banking77Classification/{split}.jsonl").read_text()
                    .splitlines()] for split in ("train", "test"))
    classifier = LogisticRegression(max_iter=100).fit([model.vector(r["text"]) for r in train],
                                                      [r["label"] for r in train])
    accuracy = classifier.score([model.vector(r["text"]) for r in test], [r["label"] for r in test])
    assert rows["Banking77Classification"]["score"] == pytest.approx(100 * accuracy, abs=1e-6)


class UnitEncoder(FixedEncoder):
    """FixedEncoder's vectors scaled to unit length, as the study's embeddings are."""

    def vector(self, text):
        vector = super().vector(text)
        return vector / np.linalg.norm(vector)


@pytest.mark.parametrize("part", ["test", "dev"])
def test_the_studys_per_item_scores_are_mtebs_on_the_same_part(tmp_path, part):
    from grace.evaluation.offline_data import part_rows
    from grace.study.heldout import STATISTICS
    from grace.study.mteb_offline import mteb_offline_items

    folder = tiny_mteb_folder(tmp_path / "mteb")
    items = mteb_offline_items(folder, {"STS12": 6, "Banking77Classification": 4}, part)
    sts, intents = items["STS12"], items["Banking77Classification"]
    assert len(sts.first) == 6 and len(intents.item_texts) == 4 and len(intents.train_texts) == 12  # 4 per intent
    # the same part, scored by mteb (eval_mteb.py --data_items 6 Banking77Classification=4 --data_part PART)
    model = UnitEncoder()
    tasks = resolve_tasks(["STS12", "Banking77Classification"], data_folder=folder,
                          data_items={"*": 6, "Banking77Classification": 4}, data_part=part)
    assert sorted(tasks[0].dataset["test"]["sentence1"]) == sorted(sts.first)
    rows = {r["task"]: r for r in evaluate_tasks(model, tasks, results_folder=None)}
    assert STATISTICS["cosine_spearman"](sts.units(model.vector)) == pytest.approx(rows["STS12"]["score"], abs=1e-3)
    assert STATISTICS["accuracy"](intents.units(model.vector)) == pytest.approx(
        rows["Banking77Classification"]["score"], abs=1e-6)
    # the written rule: disjoint parts, the same rows every time
    test, dev = part_rows(12, 6, "test"), part_rows(12, 6, "dev")
    assert sorted([*test, *dev]) == list(range(12)) and list(test) == list(part_rows(12, 6, "test"))
    with pytest.raises(ValueError, match="STS12/test.jsonl: 7 test and 7 dev items asked for, but the file has 12"):
        resolve_tasks(["STS12"], data_folder=folder, data_items={"STS12": 7})


def test_a_part_of_a_classification_task_trains_on_the_fixed_pool_of_8_texts_per_label(tmp_path):
    from grace.evaluation.offline_data import TRAIN_PER_LABEL, training_pool

    folder = tiny_mteb_folder(tmp_path / "mteb")
    write_jsonl(folder / "Banking77Classification/train.jsonl",
                [{"text": f"text {k}", "label": k % 2} for k in range(20)] + [{"text": "rare", "label": 2}])
    labels = [k % 2 for k in range(20)] + [2]
    pool = training_pool(labels)
    assert sorted(labels[r] for r in pool) == [0] * TRAIN_PER_LABEL + [1] * TRAIN_PER_LABEL + [2]
    task = resolve_tasks(["Banking77Classification"], data_folder=folder, data_items={"*": 4})[0]
    assert task.dataset["train"]["text"] == [f"text {r}" if r < 20 else "rare" for r in pool]
    assert len(resolve_tasks(["Banking77Classification"], data_folder=folder)[0].dataset["train"]) == 21


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "STS12/test.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{oops\n'),
     r"STS12/test.jsonl:2: not a JSON object"),
    (lambda f: (f / "STS12/test.jsonl").write_text('{"sentence1": "a", "score": 1}\n'),
     r"STS12/test.jsonl:1: missing field\(s\) sentence2"),
    (lambda f: (f / "Banking77Classification/train.jsonl").unlink(), r"Banking77Classification/train.jsonl: missing"),
    (lambda f: (f / "STS12/test.jsonl").write_text("\n"), r"STS12/test.jsonl: no rows"),
])
def test_a_bad_data_folder_fails_with_the_file_and_line(tmp_path, damage, message):
    folder = tiny_mteb_folder(tmp_path / "mteb")
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        resolve_tasks(["STS12", "Banking77Classification"], data_folder=folder)


def test_a_task_missing_from_the_data_folder_or_of_another_kind_is_named(tmp_path, capsys):
    folder = tiny_mteb_folder(tmp_path / "mteb")
    with pytest.raises(FileNotFoundError, match="no folder for task STS16"):
        resolve_tasks(["STS16"], data_folder=folder)
    with pytest.raises(ValueError, match="SciFact: Retrieval tasks cannot be read from a data folder"):
        resolve_tasks(["SciFact"], data_folder=folder)
    assert eval_mteb.main(["--model_path", str(tmp_path), "--tasks", "STS16", "--data_folder", str(folder)]) == 1
    assert "no folder for task STS16" in capsys.readouterr().err
    assert eval_mteb.main(["--model_path", str(tmp_path), "--tasks", "STS12", "--data_items", "6"]) == 1
    assert "pass --data_folder too" in capsys.readouterr().err
    assert eval_mteb.main(["--model_path", str(tmp_path), "--tasks", "STS12", "--data_folder", str(folder),
                           "--data_items", "STS12=six"]) == 1
    assert "--data_items 'STS12=six': expected N or TASK=N" in capsys.readouterr().err
