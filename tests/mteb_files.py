"""Tiny copies of real MTEB tasks in the data folder's layout (`grace.evaluation.offline_data`), for tests."""

import json


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def tiny_mteb_folder(folder):
    """Tiny copies of two real MTEB tasks in the data folder's layout: STS12 (12 scored pairs) and
    Banking77Classification (3 intents, 4 training and 3 test texts each)."""
    words = ["river", "bank", "loan", "card", "stone", "music", "train", "cloud", "paper", "glass", "salt", "wind"]
    write_jsonl(folder / "STS12/test.jsonl", [
        {"sentence1": f"the {w} is near", "sentence2": f"a {words[(i * 5) % 12]} far away", "score": (i * 7) % 6,
         "source": "made up"} for i, w in enumerate(words)])
    intents = ["card_arrival", "exchange_rate", "lost_or_stolen_card"]
    for split, count in (("train", 4), ("test", 3)):
        write_jsonl(folder / f"Banking77Classification/{split}.jsonl", [
            {"text": f"{intent} question {split} {k}", "label": label}
            for label, intent in enumerate(intents) for k in range(count)])
    return folder
