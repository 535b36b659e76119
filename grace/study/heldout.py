"""The study's fixed held-out evaluation, scored per item so that arms can be compared with paired intervals.

- WikiDescriptionRetrieval: the first `queries` held-out Wikipedia articles with a description; the description
  is the query, the extracts of the same articles are the corpus, each query has one relevant document.
  Per query: hit at rank 1 (accuracy@1, the study's main retrieval number), reciprocal rank, nDCG@10.
- LeeSTS: the 50 Lee news documents and their 1,225 rated pairs. Per pair: (cosine, human rating); the score is
  the Spearman correlation over pairs, so its bootstrap resamples pairs and recomputes the correlation.

The items are those of the mteb local tasks of the same names (`grace.evaluation.local_tasks`), never seen in
training (`grace.data.demo.split_articles`), and accuracy@1 equals mteb's hit_rate_at_1 on them (tested).
Clustering is left out of the study: its v-measure is not a mean over items, and a bootstrap would refit
k-means for every replicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import spearmanr

from grace.evaluation.local_tasks import description_retrieval_items, lee_items

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


def spearman_of_units(units: np.ndarray) -> float:
    """Spearman correlation (x100) of column 0 (predicted similarity) against column 1 (human rating)."""
    return 100 * float(spearmanr(units[:, 0], units[:, 1]).statistic)


def hit_rate_percent(units: np.ndarray) -> float:
    return 100 * float(np.mean(units))


@dataclass
class TaskResult:
    """One task of one arm: the headline score, its metric, and the per-item units behind it."""

    metric: str
    score: float
    units: np.ndarray  # [n] for retrieval hits, [n, 2] (prediction, gold) for STS
    extra: dict[str, float]

    @property
    def n(self) -> int:
        return len(self.units)


STATISTICS = {"accuracy@1": hit_rate_percent, "cosine_spearman": spearman_of_units}


class HeldOutEvaluation:
    """The fixed held-out items, loaded once; `evaluate(embed)` scores any embedding function on all of them."""

    def __init__(self, retrieval_queries: int = 400, lee_documents: int = 50):
        self.queries, self.documents = description_retrieval_items(retrieval_queries)
        self.lee_documents, self.lee_pairs = lee_items(lee_documents)

    def texts(self) -> list[str]:
        """Every text the evaluation embeds (once each)."""
        return list(dict.fromkeys(self.queries + self.documents + self.lee_documents))

    def evaluate(self, embed: Embed) -> dict[str, TaskResult]:
        texts = self.texts()
        vectors = embed(texts)
        if vectors.shape[0] != len(texts):
            raise RuntimeError(f"the embedding function returned {vectors.shape[0]} rows for {len(texts)} texts")
        row = {text: i for i, text in enumerate(texts)}
        pick = lambda items: vectors[[row[t] for t in items]]  # noqa: E731
        per_query = retrieval_per_query(pick(self.queries), pick(self.documents))
        retrieval = TaskResult("accuracy@1", hit_rate_percent(per_query["hit_at_1"]), per_query["hit_at_1"],
                               {"ndcg_at_10": 100 * float(per_query["ndcg_at_10"].mean()),
                                "mrr": 100 * float(per_query["reciprocal_rank"].mean())})
        lee = pick(self.lee_documents)
        cosines = np.array([float(lee[i] @ lee[j]) for i, j, _ in self.lee_pairs])
        units = np.stack([cosines, np.array([score for _, _, score in self.lee_pairs])], axis=1)
        sts = TaskResult("cosine_spearman", spearman_of_units(units), units, {})
        return {"WikiDescriptionRetrieval": retrieval, "LeeSTS": sts}
