"""Instruments that tell whether training helps, and the runner that compares training settings with them.

- `stats`: least-squares trend with its standard error; paired bootstrap confidence intervals;
- `heldout`: the fixed held-out evaluation (retrieval per query, similarity per pair) and its per-item scores;
- `perplexity`: held-out text perplexity (generative retention);
- `contrastive`: the contrastive fine-tuning baseline (sentence-transformers, in-batch negatives);
- `headroom`: how much better the best of n sampled rationales is than a random one, without training;
- `config`, `runner`, `report`: `python -m grace.study CONFIG`.
"""
