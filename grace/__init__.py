"""GRACE: a generative LLM as an interpretable text-embedding model, trained with contrastive rewards (GRPO).

`from grace import GraceEncoder` is the entry point for embedding; it is imported on first use, so that the light
modules (`grace.pooling`, `grace.reward`, `grace.data`) do not pull in transformers.
"""

__all__ = ["GraceEncoder"]


def __getattr__(name: str):
    if name == "GraceEncoder":
        from grace.encoder import GraceEncoder

        return GraceEncoder
    raise AttributeError(f"module 'grace' has no attribute {name!r}")
