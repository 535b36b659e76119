"""Labelled data for GRPO-RM: the packaged Wikipedia topics, any user file, the bundled digits, and fixed
stratified splits.

- `wiki-topics`: the lead sections of the packaged Wikipedia articles labelled by topic. Only GRACE's training
  articles are used (`grace.data.demo.split_articles`), so GRACE's held-out evaluation articles stay unseen, and the
  articles filed as "Uncategorized" are left out (a bin, not a topic): 11 classes.
- a user file: JSONL, CSV or parquet with a `text` and a `label` column. Bad rows (not JSON, missing or empty
  text, missing label) are skipped and reported with their line numbers (row numbers for parquet), as
  `process_data.py` does; `strict` makes the first one an error.
- `wiki-descriptions`: the same articles, in the same order and with the same labels, as their short Wikidata
  descriptions ("American singer") instead of their lead sections: the same labels in another text domain. An
  article without a description has an empty text here; `split` leaves those out of the shifted test set.
- `sentiment`: the 200 movie-review sentences of gensim's test data labelled positive / negative: the
  out-of-distribution corpus of the comparison (different text, different labels).
- `wordnet-nouns`: WordNet 3.0's noun glosses (Debian package `wordnet-base`, /usr/share/wordnet/data.noun)
  labelled by their lexicographer file (noun.animal, noun.artifact, ...), the 12 largest classes: a second real
  labelled text corpus.
- `digits`: scikit-learn's bundled 8x8 digit images (1,797 images, 10 classes).

`long_tailed` subsamples a training split to an imbalance ratio (the largest class over the smallest).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grace.data.process import BadInputError, BadLineReport

UNCATEGORIZED = "Uncategorized"


@dataclass
class LabelledData:
    """Inputs (a list of texts or an image tensor) with integer labels into `class_names`."""

    inputs: list[str] | torch.Tensor
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_text(self) -> bool:
        return isinstance(self.inputs, list)

    def subset(self, indices) -> "LabelledData":
        indices = np.asarray(indices, dtype=np.int64)
        inputs = [self.inputs[i] for i in indices] if self.is_text else self.inputs[torch.as_tensor(indices)]
        return LabelledData(inputs, self.labels[indices], self.class_names)


def _labelled(texts: list[str], label_values: list[str]) -> LabelledData:
    class_names = sorted(set(label_values))
    index = {name: i for i, name in enumerate(class_names)}
    return LabelledData(texts, np.array([index[v] for v in label_values]), class_names)


def topic_articles() -> list[dict]:
    """GRACE's training articles with an extract and a topic other than "Uncategorized", in their order."""
    from grace.data.assets import load_wiki_articles
    from grace.data.demo import split_articles

    training_articles, _ = split_articles(load_wiki_articles())
    return [a for a in training_articles
            if a.get("extract", "").strip() and a.get("topic") and a["topic"] != UNCATEGORIZED]


def wiki_topics() -> LabelledData:
    kept = topic_articles()
    return _labelled([" ".join(a["extract"].split()) for a in kept], [a["topic"] for a in kept])


def wiki_descriptions() -> LabelledData:
    """`wiki-topics`' articles, in its order and with its labels, as their descriptions (empty where missing)."""
    kept = topic_articles()
    return _labelled([" ".join((a.get("description") or "").split()) for a in kept], [a["topic"] for a in kept])


# WordNet's lexicographer files (lexnames(5WN)) that hold nouns, by number
NOUN_LEXNAMES = {3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
                 10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location",
                 16: "motive", 17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession",
                 22: "process", 23: "quantity", 24: "relation", 25: "shape", 26: "state", 27: "substance",
                 28: "time"}
WORDNET_FOLDER = Path("/usr/share/wordnet")


def wordnet_nouns(folder: Path = WORDNET_FOLDER, classes: int = 12) -> LabelledData:
    """WordNet noun glosses (the definition, without its quoted examples) labelled by lexicographer file, the
    `classes` largest files; raises naming the file of a bad line."""
    path = Path(folder) / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (install the Debian package wordnet-base)")
    texts, labels = [], []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.startswith("  "):  # the licence header
                continue
            fields, bar, gloss = line.partition(" | ")
            parts = fields.split()
            if not bar or len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) not in NOUN_LEXNAMES:
                raise ValueError(f"{path}:{number}: not a WordNet noun synset line")
            definition = gloss.split('; "')[0].strip().strip(";").strip()
            if definition:
                texts.append(definition)
                labels.append("noun." + NOUN_LEXNAMES[int(parts[1])])
    counts = {name: labels.count(name) for name in set(labels)}
    largest = set(sorted(counts, key=lambda name: (-counts[name], name))[:classes])
    kept = [i for i, name in enumerate(labels) if name in largest]
    return _labelled([texts[i] for i in kept], [labels[i] for i in kept])


def sentiment_sentences() -> LabelledData:
    from grace.data.assets import gensim_test_data_folder

    texts, labels = [], []
    # the file is Windows-1252 (its dashes are byte 0x97), not UTF-8
    with open(gensim_test_data_folder() / "pang_lee_polarity.cor", encoding="cp1252") as f:
        for line in f:
            label, _, text = line.strip().partition(" ")
            texts.append(text)
            labels.append(label.removeprefix("__label__"))
    return _labelled(texts, labels)


def digits() -> LabelledData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32)[:, None]
    return LabelledData(images, bunch.target, [str(d) for d in range(10)])


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "a row that is not an object"
    text, label = row.get("text"), row.get("label")
    if text is None:
        return "missing 'text'"
    if not isinstance(text, str):
        return "non-string 'text'"
    if not text.strip():
        return "empty 'text'"
    if label is None or (isinstance(label, str) and not label.strip()):
        return "missing 'label'"
    if isinstance(label, (dict, list, float)):
        return "a 'label' that is not a string or an integer"
    return None


def _rows(path: Path):
    """(line or row number, row or None when unparseable, reason) for every row of the file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    yield number, None, "blank line"
                    continue
                try:
                    yield number, json.loads(line), None
                except json.JSONDecodeError:
                    yield number, None, "invalid JSON"
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
                raise BadInputError(f"{path}: the CSV header must name 'text' and 'label' columns, "
                                    f"got {reader.fieldnames}")
            for row in reader:
                yield reader.line_num, row, None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if not {"text", "label"} <= set(table.column_names):
            raise BadInputError(f"{path}: the parquet file needs 'text' and 'label' columns, "
                                f"got {table.column_names}")
        for number, row in enumerate(table.select(["text", "label"]).to_pylist(), start=1):
            yield number, row, None
    else:
        raise BadInputError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .csv or .parquet)")


def read_labelled_file(path: str | Path, strict: bool = False) -> tuple[LabelledData, BadLineReport]:
    """A user's labelled file; labels may be strings or integers (classes are their sorted string forms)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled data file {path} does not exist")
    report = BadLineReport()
    texts, labels = [], []
    for number, row, reason in _rows(path):
        reason = reason or _row_problem(row)
        if reason:
            if strict:
                raise BadInputError(f"{path}:{number}: {reason}")
            report.add(reason, number)
            continue
        texts.append(" ".join(row["text"].split()))
        labels.append(str(row["label"]).strip())
    if len(set(labels)) < 2:
        raise BadInputError(f"{path}: needs at least 2 classes among its usable rows, found {len(set(labels))} "
                            f"({len(texts)} usable rows; {report.summary()})")
    return _labelled(texts, labels), report


def load_labelled(name: str, strict: bool = False) -> LabelledData:
    """`wiki-topics`, `wiki-descriptions`, `sentiment`, `wordnet-nouns`, `digits`, or a file path (bad rows
    printed)."""
    builtin = {"wiki-topics": wiki_topics, "wiki-descriptions": wiki_descriptions, "sentiment": sentiment_sentences,
               "wordnet-nouns": wordnet_nouns, "digits": digits}
    if name in builtin:
        return builtin[name]()
    data, report = read_labelled_file(name, strict=strict)
    if report.total:
        print(f"{name}: {report.summary()}")
    return data


@dataclass
class Splits:
    train: LabelledData
    dev: LabelledData
    test: LabelledData
    shifted_test: LabelledData | None = None  # the test items in another text domain, with the same labels


def stratified_split(labels: np.ndarray, dev_per_class: int, test_per_class: int, train_per_class: int | None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, dev, test): per class, a seeded permutation gives the first `test_per_class` to test,
    the next `dev_per_class` to dev and up to `train_per_class` (all when None) of the rest to train. Classes too
    small to give every split one example raise."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < dev_per_class + test_per_class + 1:
            raise ValueError(f"class {label} has {len(members)} examples: too few for {dev_per_class} dev, "
                             f"{test_per_class} test and at least 1 training example")
        rest = members[test_per_class + dev_per_class:]
        parts[0].append(rest if train_per_class is None else rest[:train_per_class])
        parts[1].append(members[test_per_class:test_per_class + dev_per_class])
        parts[2].append(members[:test_per_class])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def long_tailed(labels: np.ndarray, ratio: float, seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subsample: with n the smallest class's count, the class of rank r in a seeded
    permutation of the classes keeps its first round(n * ratio^(-r / (C - 1))) examples (at least 1), so the head
    class keeps n and the last keeps n / ratio; ratio 1 keeps n of every class."""
    if ratio < 1:
        raise ValueError(f"the imbalance ratio is the largest class over the smallest: at least 1, got {ratio}")
    classes = np.unique(labels)
    largest = min(int((labels == label).sum()) for label in classes)
    ranks = np.random.default_rng(seed).permutation(len(classes))
    keep = []
    for label, rank in zip(classes, ranks):
        count = max(1, int(round(largest * ratio ** (-rank / max(len(classes) - 1, 1)))))
        keep.append(np.flatnonzero(labels == label)[:count])
    return np.sort(np.concatenate(keep))


def split(data: LabelledData, dev_per_class: int, test_per_class: int, train_per_class: int | None = None,
          seed: int = 0, imbalance: float = 1.0, shifted: LabelledData | None = None) -> Splits:
    """Stratified splits; with `imbalance` > 1 a long-tailed training split (dev and test stay balanced); with
    `shifted` (the same items in another text domain, same labels), its test items with a non-empty text."""
    train, dev, test = stratified_split(data.labels, dev_per_class, test_per_class, train_per_class, seed)
    if imbalance != 1.0:
        train = train[long_tailed(data.labels[train], imbalance, seed)]
    shifted_test = None
    if shifted is not None:
        if len(shifted) != len(data) or not np.array_equal(shifted.labels, data.labels):
            raise ValueError(f"the shifted corpus ({len(shifted)} items) does not align with the data ({len(data)} "
                             "items): it must hold the same items, in the same order, with the same labels")
        shifted_test = shifted.subset([i for i in test if shifted.inputs[i].strip()])
    return Splits(data.subset(train), data.subset(dev), data.subset(test), shifted_test)
