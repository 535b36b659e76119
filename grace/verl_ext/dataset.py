"""verl's RLHFDataset plus the extra prompts GRACE's reward needs.

Supervised rows (a `multi_input` column with `query` and `negative_document`) also yield the query and the
negative-document prompts, chat-templated with the same system prompt and left-padded to `max_prompt_length`
like the main prompt: `query_{input_ids,attention_mask,position_ids}` and
`negative_doc_{input_ids,attention_mask,position_ids}`. verl leaves these keys in the batch, repeats them with
the rollouts, and the `hidden` reward manager generates one rationale per prompt from them. Unsupervised rows
need nothing extra: the anchor is a second rollout of the main prompt.

`data.train_mode` (`+data.train_mode=supervised|unsupervised`, the reference's key) defaults to what the data
holds, where the reference assumed `supervised` and crashed on unsupervised files without the flag.
"""

from __future__ import annotations

import torch
from verl.utils.dataset.rl_dataset import RLHFDataset

from grace.embedding import position_ids_from_mask
from grace.prompts import SYSTEM_PROMPT, chat_prompt_ids

TRAIN_MODES = ("supervised", "unsupervised")


def resolve_train_mode(requested: str | None, columns: list[str]) -> str:
    """The training mode for a dataset with these columns; raises when the request cannot be served."""
    has_multi_input = "multi_input" in columns
    if requested is None:
        return "supervised" if has_multi_input else "unsupervised"
    if requested not in TRAIN_MODES:
        raise ValueError(f"data.train_mode must be one of {TRAIN_MODES}, got {requested!r}")
    if requested == "supervised" and not has_multi_input:
        raise ValueError("data.train_mode=supervised needs a `multi_input` column (query, negative_document); "
                         "this file has none. Was it made with process_data.py --mode unsupervised?")
    return requested


def left_padded_prompt(tokenizer, text: str, max_length: int, system_prompt: str = SYSTEM_PROMPT
                       ) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / position_ids [max_length] of the chat prompt for `text`."""
    ids = chat_prompt_ids(tokenizer, text, max_length=max_length, system_prompt=system_prompt)
    pad = max_length - len(ids)
    input_ids = torch.tensor([tokenizer.pad_token_id] * pad + ids, dtype=torch.long)
    attention_mask = torch.tensor([0] * pad + [1] * len(ids), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": position_ids_from_mask(attention_mask)}


class GraceRLDataset(RLHFDataset):
    """verl's dataset, plus the query and negative-document prompts of supervised rows; `system_prompt` (the
    reward's `custom_prompt`) replaces the system message of every prompt, so that the prompts and the pooled
    prefix the reward leaves out agree."""

    def __init__(self, data_files, tokenizer, config, processor=None, system_prompt: str | None = None):
        self.system_prompt = system_prompt
        super().__init__(data_files=data_files, tokenizer=tokenizer, config=config, processor=processor)
        self.train_mode = resolve_train_mode(config.get("train_mode", None), self.dataframe.column_names)

    def _build_messages(self, example: dict):
        messages = super()._build_messages(example)
        if self.system_prompt is not None:
            others = [m for m in messages if m["role"] != "system"]
            messages = [{"role": "system", "content": self.system_prompt}] + others
        return messages

    def __getitem__(self, item):
        row = super().__getitem__(item)
        # Each row its own group: verl's validation sets no uid, and grouping by prompt content would merge
        # duplicate texts into one group. Training batches get fresh uids from verl's fit() over this one.
        row["uid"] = f"row-{item}"
        if self.train_mode == "supervised":
            documents = {"query": row["multi_input"]["query"], "negative_doc": row["multi_input"]["negative_document"]}
            for prefix, text in documents.items():
                for key, tensor in left_padded_prompt(self.tokenizer, text, self.max_prompt_length,
                                                      self.system_prompt or SYSTEM_PROMPT).items():
                    row[f"{prefix}_{key}"] = tensor
        return row
