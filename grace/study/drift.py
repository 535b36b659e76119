"""How far training moved the policy: KL(trained || base) on the trained model's own rationales.

The measure is the mean, over every rationale token the trained model wrote for a fixed set of held-out texts, of
the KL divergence between the trained and the base model's next-token distributions at that position:
sum_v p_trained(v | prefix) (log p_trained(v | prefix) - log p_base(v | prefix)), in nats per token. It is 0 when
nothing moved, and it looks where the embeddings come from (the rationales), which perplexity on plain text does
not. The texts are the first held-out retrieval documents (Wikipedia extracts like the training prompts), whose
rationales the evaluation has generated already.

    python -m grace.study.drift BASE TRAINED [--texts 50] [--rationale_cache study_out/NAME/rationales.sqlite]
                                [--record study_out/NAME/arms/ARM/result.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from grace.embedding import position_ids_from_mask
from grace.encoder import left_pad
from grace.study.rationale_cli import add_rationale_flags, load_encoder, record_value


@torch.no_grad()
def rationale_kl(trained, base, sequences: list[tuple[list[int], list[int]]], pad_id: int,
                 batch_size: int = 4) -> float:
    """Mean per-token KL(trained || base) in nats over the rationale tokens of (prompt ids, rationale ids) pairs."""
    sequences = [(prompt, rationale) for prompt, rationale in sequences if rationale]
    if not sequences:
        raise ValueError("KL on rationales needs at least one non-empty rationale")
    device = next(trained.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        rows = sequences[start : start + batch_size]
        input_ids, mask = left_pad([prompt + rationale for prompt, rationale in rows], pad_id, device)
        positions = position_ids_from_mask(mask)
        longest = max(len(rationale) for _, rationale in rows)
        # The last `longest + 1` positions predict the last `longest` tokens (rows are left-padded: every row
        # ends at the last column); only a row's own rationale tokens count.
        log_probs = [torch.log_softmax(model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                             logits_to_keep=longest + 1).logits[:, :-1].float(), dim=-1)
                     for model in (trained, base)]
        kl = (log_probs[0].exp() * (log_probs[0] - log_probs[1])).sum(-1)  # [rows, longest]
        offsets = torch.arange(longest, device=device)
        counted = offsets[None, :] >= torch.tensor([longest - len(r) for _, r in rows], device=device)[:, None]
        total += float(kl[counted].sum())
        tokens += int(counted.sum())
    return total / tokens


def held_out_rationale_kl(encoder, base_path: Path, texts: list[str]) -> float:
    """KL(encoder's model || the base model at `base_path`) on the encoder's rationales for `texts` (from its
    rationale cache when it has one)."""
    from transformers import AutoModelForCausalLM

    prompts = [encoder.prompt_ids(text) for text in texts]
    rationales = encoder.cached_rationale_ids(texts, prompts, show_progress_bar=False)
    base = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=encoder.model.dtype).to(encoder.model.device)
    base.eval()
    encoder.model.eval()
    return rationale_kl(encoder.model, base, list(zip(prompts, rationales)), encoder.pad_id)


def main(argv=None) -> int:
    from grace.evaluation.local_tasks import description_retrieval_items

    parser = argparse.ArgumentParser(prog="python -m grace.study.drift", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the model before training (a Hugging Face folder)")
    parser.add_argument("trained", type=Path, help="the model after training (a Hugging Face folder)")
    parser.add_argument("--texts", type=int, default=50, help="held-out retrieval documents whose rationales count")
    add_rationale_flags(parser, record_key="kl_to_base")
    args = parser.parse_args(argv)
    encoder = load_encoder(args.trained, args)
    _, documents = description_retrieval_items(args.texts)  # a study's KL texts: the first held-out documents
    value = held_out_rationale_kl(encoder, args.base, documents)
    print(f"KL(trained || base) on {args.texts} held-out rationales: {value:.4f} nats per token")
    record_value(args, "kl_to_base", value)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
