"""grace-embed: look at what a GRACE model makes of a few texts.

    grace-embed --model merge_models/ "The cat sat on the mat." "A feline rested on a rug."

prints each text's rationale and the cosine-similarity matrix of the embeddings.
"""

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="grace-embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+", help="texts to embed")
    parser.add_argument("--model", required=True, help="merged GRACE checkpoint folder or hub id")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="rationale length budget")
    parser.add_argument("--no_rationale", action="store_true", help="embed the prompt alone (direct forward)")
    parser.add_argument("--sample", action="store_true", help="sample rationales (default: greedy)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"], help="generation backend")
    args = parser.parse_args(argv)

    from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder

    settings = EncoderSettings(generation=GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                                             temperature=args.temperature, seed=args.seed))
    try:
        encoder = GraceEncoder.from_pretrained(args.model, device=args.device, backend=args.backend, settings=settings)
    except (FileNotFoundError, OSError) as error:
        print(f"error: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 1
    embeddings, rationales = encoder.encode(args.texts, return_rationales=True, rationale=not args.no_rationale)
    for number, (text, rationale) in enumerate(zip(args.texts, rationales), start=1):
        print(f"[{number}] {text}")
        if not args.no_rationale:
            print(f"    rationale: {rationale.strip()}")
    similarity = embeddings @ embeddings.T
    print("\ncosine similarity")
    print("      " + "".join(f"[{j}]".rjust(8) for j in range(1, len(args.texts) + 1)))
    for i, row in enumerate(np.atleast_2d(similarity), start=1):
        print(f"[{i}]".ljust(6) + "".join(f"{value:8.3f}" for value in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
