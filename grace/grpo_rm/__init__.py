"""GRPO-RM: GRPO fine-tuning of deterministic representation models over a predefined output set (the classes).

A reconstruction of arXiv 2511.15256 (no code was published): the class set replaces token sampling as the output
group, the reward is accuracy + uniformity, there is no reference model. `docs/grpo_rm.md` lists what is known,
what is not, and which defaults are ours.

- `objective`: rewards, group advantages, the clipped loss and the CE baseline (pure tensor functions);
- `policy`: encoders (sentence-transformers text encoders, a small CNN for digits) and linear / cosine heads;
- `data`: the packaged Wikipedia topics, user files, digits, fixed stratified splits;
- `evaluate`: head accuracy, softmax-regression probe, kNN;
- `loop`: the training loop shared by both objectives; `run`: one run with its files;
- `train`: the command line; `compare`: the frozen / CE / GRPO-RM comparison with its report.
"""
