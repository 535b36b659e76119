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
