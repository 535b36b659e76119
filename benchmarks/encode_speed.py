"""GraceEncoder.encode with the embeddings pooled during generation against generation followed by a forward over
each prompt + rationale (the encoder's path before), in one run on the same texts and rationales.

    .venv/bin/python benchmarks/encode_speed.py                       # packaged SmolLM2, 96 held-out texts, 48 tokens
    .venv/bin/python benchmarks/encode_speed.py --pooling_span prompt+response --rationale_length 256

Both paths generate the same greedy rationales (checked: the pooled path keeps each row one decode step longer, to
forward its final token, which can change a greedy token only through float rounding; the count of differing
rationales is printed) and the embeddings agree to float rounding (the largest difference is printed). The texts
are held-out Wikipedia descriptions and extracts, as in benchmarks/generation_speed.py. Simplification: one run
of each path, generation first; on a busy machine the ratio is noise.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine_rates import timed  # noqa: E402
from grace.data.assets import smollm2_hf_folder  # noqa: E402
from grace.encoder import EncoderSettings, GraceEncoder  # noqa: E402
from grace.evaluation.local_tasks import retrieval_articles  # noqa: E402
from grace.generation import GenerationSettings  # noqa: E402
from grace.study.report import machine_description  # noqa: E402


class GenerateOnly:
    """The generator without `generate_pooled`: the encoder forwards every prompt + rationale after generating."""

    def __init__(self, generator):
        self.generator = generator

    def generate(self, prompts, settings, on_finished=None):
        return self.generator.generate(prompts, settings, on_finished)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=96, help="held-out texts to encode")
    parser.add_argument("--rationale_length", type=int, default=48, help="max new tokens of each greedy rationale")
    parser.add_argument("--pooling_span", default="response", choices=["response", "prompt+response"],
                        help="the span pooled (response: the studies' GRACE arms)")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per forward of the forward path")
    args = parser.parse_args()

    articles = retrieval_articles(args.texts // 2 + args.texts % 2)
    texts = ([a["description"] for a in articles] + [a["extract"] for a in articles])[: args.texts]
    settings = EncoderSettings(pooling_span=args.pooling_span,
                               generation=GenerationSettings(max_new_tokens=args.rationale_length))
    encoder = GraceEncoder.from_pretrained(smollm2_hf_folder(), backend="hf", device="cpu", settings=settings)
    device = encoder.model.device
    encoder.encode(texts[-2:])  # warm-up: the first forwards of a process are slower
    (pooled, pooled_rationales), pooled_seconds = timed(
        lambda: encoder.encode(texts, args.batch_size, return_rationales=True), device)
    encoder.generator = GenerateOnly(encoder.generator)
    (forwarded, forwarded_rationales), forwarded_seconds = timed(
        lambda: encoder.encode(texts, args.batch_size, return_rationales=True), device)

    same = np.array([a == b for a, b in zip(pooled_rationales, forwarded_rationales)])
    print(f"machine: {machine_description()}; dtype {encoder.model.dtype}")
    print(f"{len(texts)} texts, greedy rationales of at most {args.rationale_length} tokens, "
          f"pooling {args.pooling_span}")
    print(f"generate + forward: {forwarded_seconds:7.1f} s")
    print(f"pooled in generation: {pooled_seconds:5.1f} s")
    print(f"forward path / pooled path: {forwarded_seconds / pooled_seconds:.2f}x")
    print(f"identical rationales: {sum(same)}/{len(same)}; largest embedding difference among them: "
          f"{float(np.abs(pooled[same] - forwarded[same]).max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
