"""The reference's parquet records, column for column (spec section 1.2), so files are interchangeable.

Supervised: the main prompt is the *positive* document; the query and the negative travel in `multi_input`
(whose `instruction` field holds the positive text, as in the reference). Unsupervised: the sentence is the
main prompt and there is no `multi_input` column.
"""

from __future__ import annotations

from grace.prompts import chat_messages

ABILITY = "natural_language_inference"


def supervised_record(query: str, positive: str, negative: str, source: str | None, line_idx: int, split: str,
                      index: int) -> dict:
    return {
        "data_source": "supervised",
        "prompt": chat_messages(positive),
        "ability": ABILITY,
        "reward_model": {"style": "multi_input", "ground_truth": positive},
        "extra_info": {"split": split, "index": index, "original_query": query, "positive_example": positive,
                       "negative_example": negative, "source": source, "line_idx": line_idx},
        "multi_input": {"query": query, "instruction": positive, "negative_document": negative},
    }


def unsupervised_record(text: str, source: str | None, line_idx: int, split: str, index: int) -> dict:
    return {
        "data_source": "unsupervised",
        "prompt": chat_messages(text),
        "ability": ABILITY,
        "reward_model": {"style": "unsupervised", "ground_truth": ""},
        "extra_info": {"split": split, "index": index, "text": text, "source": source, "line_idx": line_idx},
    }
