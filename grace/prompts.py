"""The one system prompt and chat layout GRACE uses in data, training, inference and evaluation."""

from __future__ import annotations

# Verbatim from the reference (one line); data made by either implementation carries it in `prompt`.
SYSTEM_PROMPT = (
    "Read and analyze the following text, then you need to provide your reasoning within <think></think> tags. "
    "Finally, generate a comprehensive understanding of this text."
)


def chat_messages(text: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """[system, user] messages for one text, the layout of every GRACE prompt."""
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": text}]


def token_id_list(ids) -> list[int]:
    """An id or a sequence of ids (as generation configs store EOS) as a list."""
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def generation_eos_ids(generation_config, tokenizer) -> list[int]:
    """Every end-of-sequence id of the generation config (the tokenizer's when there is none)."""
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    return token_id_list(eos if eos is not None else tokenizer.eos_token_id)


def chat_prompt_ids(tokenizer, text: str, max_length: int | None = None, system_prompt: str = SYSTEM_PROMPT
                    ) -> list[int]:
    """Token ids of the chat-templated prompt for `text`, generation header included, as verl tokenises it
    (template applied as a string, then tokenised without special tokens).

    When the prompt is longer than `max_length`, the user text is cut on its token ids and spliced between the
    template's own tokens, so the system part, the end of the user turn and the assistant header survive (the
    reference cut the templated sequence, losing the header, or decoded it without special tokens).
    """
    templated = tokenizer.apply_chat_template(chat_messages(text, system_prompt), add_generation_prompt=True,
                                              tokenize=False)
    ids = tokenizer(templated, add_special_tokens=False)["input_ids"]
    if max_length is None or len(ids) <= max_length:
        return ids
    before, after = templated.split(text, 1) if text else (templated, "")
    before_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    after_ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    room = max_length - len(before_ids) - len(after_ids)
    if room < 1:
        raise ValueError(f"max_length={max_length} leaves no room for user text: the chat template alone takes "
                         f"{len(before_ids) + len(after_ids)} tokens")
    return before_ids + tokenizer(text, add_special_tokens=False)["input_ids"][:room] + after_ids
