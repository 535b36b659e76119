"""The study's fixed held-out evaluation, scored per item so that arms can be compared with paired intervals.

Every task has a dev part (the only one a choice of settings may look at) and a test part (reported only), split
by written rules:
- WikiDescriptionRetrieval: the short description of a held-out Wikipedia article is the query, the extracts of the
  same part's articles are the corpus, each query has one relevant document. Test articles are every 20th packaged
  article, dev articles those halfway between (`grace.data.demo.split_articles`; never in training data); articles
  whose description is not unique among all packaged articles are left out. Per query: hit at rank 1
  (accuracy@1, the study's main retrieval number), reciprocal rank, nDCG@10.
- LeeSTS (test only: no choice looks at it): the 50 Lee news documents and their 1,225 rated pairs. Per pair:
  (cosine, human rating); the score is the Spearman correlation over pairs, and its bootstrap resamples the
  documents, not the pairs (each document is in 49 pairs).
- MTEB-offline (with a data folder): STS12-16, SICK-R and Banking77Classification from local files, as fixed dev and
  test subsamples (`grace.study.mteb_offline`), and their mean, the "MTEB-offline" average.

The retrieval and Lee items are those of the mteb local tasks of the same names (`grace.evaluation.local_tasks`),
and accuracy@1 equals mteb's hit_rate_at_1 on them (tested). Clustering is left out of the study: its v-measure is
not a mean over items, and a bootstrap would refit k-means for every replicate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from grace.evaluation.local_tasks import description_retrieval_items, lee_items
from grace.study.mteb_offline import STS_TASKS, mteb_offline_items

Embed = Callable[[list[str]], np.ndarray]  # texts -> float32 [N, H], L2-normalised


def retrieval_per_query(query_embeddings: np.ndarray, document_embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """Per query i (relevant document i): hit@1, reciprocal rank and nDCG@10, by cosine of unit vectors.
    A tie with the relevant document counts against it (rank = number of documents scoring at least as high - 1)."""
    similarities = query_embeddings @ document_embeddings.T
    relevant = np.diag(similarities)[:, None]
    others = np.ones_like(similarities, dtype=bool)
    np.fill_diagonal(others, False)
    rank = ((similarities >= relevant) & others).sum(axis=1)  # 0 when the relevant document is first
    return {"hit_at_1": (rank == 0).astype(np.float64), "reciprocal_rank": 1.0 / (rank + 1),
            "ndcg_at_10": np.where(rank < 10, 1.0 / np.log2(rank + 2), 0.0)}


def spearman_of_units(units: np.ndarray) -> np.ndarray | float:
    """Spearman correlation (x100) of column 0 (predicted similarity) against column 1 (human rating) of units
    [..., n, 2]: the Pearson correlation of their ranks (ties share their average rank); nan for a constant column."""
    ranks = rankdata(units, axis=-2)
    ranks = ranks - ranks.mean(axis=-2, keepdims=True)
    predicted, gold = ranks[..., 0], ranks[..., 1]
    return 100 * (predicted * gold).sum(-1) / np.sqrt((predicted ** 2).sum(-1) * (gold ** 2).sum(-1))


def hit_rate_percent(units: np.ndarray) -> np.ndarray | float:
    """Percentage of hits among units [..., n] (0/1)."""
    return 100 * np.mean(units, axis=-1)


@dataclass
class TaskResult:
    """One task of one arm: the headline score, its metric, and the per-item units behind it."""

    metric: str
    score: float
    units: np.ndarray  # [n] for retrieval hits and classification, [n, 2] (prediction, gold) for STS
    extra: dict[str, float]
    documents: np.ndarray | None = None  # [n, 2]: the documents of each pair, where pairs share documents

    @property
    def n(self) -> int:
        return len(self.units)


STATISTICS = {"accuracy@1": hit_rate_percent, "cosine_spearman": spearman_of_units, "accuracy": hit_rate_percent}
GENERATIVE_TASK = "DescriptionChoice"  # generative retention, multiple choice by likelihood (grace.study.generative)
MTEB_AVERAGE = "MTEB-offline"  # the mean over the MTEB-offline tasks, a task of its own in results
DOCUMENTS_KEY = "{task}:documents"  # units.npz: the two documents of each unit, where pairs share documents


class HeldOutEvaluation:
    """The fixed held-out items of one part ("test" or "dev"), loaded once; `evaluate(embed)` scores any embedding
    function on all of them. `retrieval_queries` None: every query of the part; `mteb_items`: MTEB-offline task ->
    items per part, read from `mteb_folder`."""

    def __init__(self, part: str = "test", retrieval_queries: int | None = None, lee_documents: int = 50,
                 mteb_folder=None, mteb_items: dict[str, int] | None = None):
        self.part = part
        self.queries, self.documents = description_retrieval_items(retrieval_queries, part)
        self.lee_documents, self.lee_pairs = lee_items(lee_documents) if part == "test" else ([], [])
        if mteb_items and mteb_folder is None:
            raise ValueError("MTEB-offline tasks need a data folder: the study's evaluation.mteb_folder, or "
                             "python -m grace.study --mteb_folder")
        self.mteb = mteb_offline_items(mteb_folder, mteb_items, part) if mteb_items else {}

    def texts_of_tasks(self) -> dict[str, list[str]]:
        """task -> the texts it embeds."""
        texts = {"WikiDescriptionRetrieval": self.queries + self.documents}
        if self.lee_pairs:
            texts["LeeSTS"] = self.lee_documents
        return texts | {task: items.texts() for task, items in self.mteb.items()}

    def texts(self) -> list[str]:
        """Every text the evaluation embeds (once each)."""
        return list(dict.fromkeys(text for texts in self.texts_of_tasks().values() for text in texts))

    def evaluate(self, embed: Embed) -> dict[str, TaskResult]:
        """Scores of every task; each task's texts are embedded in turn (a text shared with an earlier task is not
        embedded again), so that each task's `extra` carries the seconds its new texts took."""
        vectors, seconds = {}, {}
        for task, texts in self.texts_of_tasks().items():
            new = list(dict.fromkeys(t for t in texts if t not in vectors))
            started = time.perf_counter()
            embedded = embed(new) if new else np.zeros((0, 1), dtype=np.float32)
            seconds[task] = time.perf_counter() - started
            if embedded.shape[0] != len(new):
                raise RuntimeError(f"the embedding function returned {embedded.shape[0]} rows for {len(new)} texts")
            vectors.update(zip(new, embedded))
        pick = lambda items: np.stack([vectors[t] for t in items])  # noqa: E731
        per_query = retrieval_per_query(pick(self.queries), pick(self.documents))
        results = {"WikiDescriptionRetrieval": TaskResult(
            "accuracy@1", hit_rate_percent(per_query["hit_at_1"]), per_query["hit_at_1"],
            {"ndcg_at_10": 100 * float(per_query["ndcg_at_10"].mean()),
             "mrr": 100 * float(per_query["reciprocal_rank"].mean())})}
        if self.lee_pairs:
            lee = pick(self.lee_documents)
            cosines = np.array([float(lee[i] @ lee[j]) for i, j, _ in self.lee_pairs])
            units = np.stack([cosines, np.array([score for _, _, score in self.lee_pairs])], axis=1)
            results["LeeSTS"] = TaskResult("cosine_spearman", spearman_of_units(units), units, {},
                                           documents=np.array([(i, j) for i, j, _ in self.lee_pairs]))
        for task, items in self.mteb.items():
            units = items.units(vectors.__getitem__)
            metric = "cosine_spearman" if task in STS_TASKS else "accuracy"
            results[task] = TaskResult(metric, STATISTICS[metric](units), units, {})
        for task, result in results.items():
            result.extra["embedding_seconds"] = seconds[task]
        return results
