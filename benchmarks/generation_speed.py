"""Rationale generation throughput against the machine's roofline: GRACE's generator and the path it replaced, in
one run.

    .venv/bin/python benchmarks/generation_speed.py        # packaged SmolLM2, 32 held-out texts, greedy, 256 tokens
    python benchmarks/generation_speed.py --model random-qwen2.5-1.5b --device cuda --dtype bfloat16

before: `model.generate` on batches of `--baseline_batch` texts in the caller's order (the encoder's path until
        continuous batching).
after:  `grace.generation.ContinuousBatchGenerator`, its slots chosen by memory (or `--slots`).

The roofline of each run is the time its work needs at this machine's measured rates: the weights read once per
decode step at the measured copy bandwidth, and 2 x parameters FLOPs per prompt or generated token at the measured
matrix-product rate; the larger of the two is the floor, and `floor/measured` says how close a path comes to it.
The texts are held-out Wikipedia descriptions and extracts (short and long inputs, as the local evaluation embeds).
`random-qwen2.5-1.5b` builds Qwen2.5-1.5B's architecture with random weights (speed does not depend on them; they
rarely stop early, so rationales run to the maximum length).
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine_rates import matmul_rate, memory_bandwidth, timed  # noqa: E402
from grace.data.assets import smollm2_hf_folder  # noqa: E402
from grace.encoder import GraceEncoder, left_pad  # noqa: E402
from grace.evaluation.local_tasks import retrieval_articles  # noqa: E402
from grace.generation import ContinuousBatchGenerator, GenerationSettings, until_eos  # noqa: E402

RANDOM_QWEN = "random-qwen2.5-1.5b"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}"


def load(model_name: str, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer folder) of the packaged SmolLM2 or a random Qwen2.5-1.5B."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer_folder = smollm2_hf_folder()
    if model_name == RANDOM_QWEN:
        config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                             num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                             tie_word_embeddings=True, torch_dtype=dtype)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name or tokenizer_folder, dtype=dtype).to(device)
    return model.eval(), tokenizer_folder


@torch.no_grad()
def generate_in_fixed_batches(model, prompts, settings, eos_ids, pad_id, batch_size):
    """The replaced path: `generate` on consecutive batches; returns (rationales, decode steps)."""
    rationales, steps = [], 0
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], pad_id, model.device)
        output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                                eos_token_id=eos_ids, pad_token_id=pad_id, do_sample=False, top_p=None, top_k=None,
                                temperature=None)
        new = output[:, ids.shape[1] :].tolist()
        steps += len(new[0])
        rationales.extend(until_eos(row, eos_ids) for row in new)
    return rationales, steps


def report(name, rationales, seconds, steps, prompt_tokens, weights_bytes, parameters, bandwidth, flops):
    generated = sum(len(r) for r in rationales)
    memory_floor = steps * weights_bytes / bandwidth
    compute_floor = 2 * parameters * (prompt_tokens + generated) / flops
    floor = max(memory_floor, compute_floor)
    print(f"{name:>6}: {generated} tokens in {seconds:.1f} s = {generated / seconds:.1f} generated tokens/s, "
          f"{len(rationales) / seconds:.2f} texts/s; {steps} decode steps; floor {floor:.1f} s "
          f"(weights reads {memory_floor:.1f} s, FLOPs {compute_floor:.1f} s): floor/measured = {floor / seconds:.2f}")
    return generated / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help=f"model folder, or {RANDOM_QWEN}; default: the packaged SmolLM2")
    parser.add_argument("--texts", type=int, default=32, help="held-out texts (half descriptions, half extracts)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="rationale length limit (encoder default)")
    parser.add_argument("--baseline_batch", type=int, default=8, help="batch of the replaced path (its default)")
    parser.add_argument("--slots", type=int, default=0, help="slots of the new generator; 0: chosen by memory")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    parser.add_argument("--skip_baseline", action="store_true", help="time the new generator only")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, tokenizer_folder = load(args.model, device, dtype)
    encoder = GraceEncoder.from_pretrained(tokenizer_folder, device="cpu", backend="hf")  # tokenizer and prompts
    articles = retrieval_articles(args.texts // 2 + args.texts % 2)
    texts = ([a["description"] for a in articles] + [a["extract"] for a in articles])[: args.texts]
    prompts = [encoder.prompt_ids(text) for text in texts]
    prompt_tokens = sum(len(p) for p in prompts)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    parameters = sum(p.numel() for p in model.parameters())
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config
    bandwidth = memory_bandwidth(device)
    flops = matmul_rate(device, dtype, config.hidden_size, config.intermediate_size)
    print(f"device: {device_name(device)}; dtype {args.dtype}; torch {torch.__version__}")
    print(f"model: {args.model or 'packaged SmolLM2-135M-Instruct'}, {parameters / 1e6:.1f} M parameters, "
          f"{weights_bytes / 1e9:.2f} GB of weights; measured copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"matmul {flops / 1e9:.1f} GFLOP/s")
    print(f"{len(prompts)} texts, {prompt_tokens} prompt tokens, greedy, max_new_tokens {args.max_new_tokens}")
    eos_ids, pad_id = encoder.eos_ids, encoder.pad_id
    speeds, outputs = {}, {}
    if not args.skip_baseline:
        (outputs["before"], steps), seconds = timed(lambda: generate_in_fixed_batches(
            model, prompts, settings, eos_ids, pad_id, args.baseline_batch), device)
        speeds["before"] = report("before", outputs["before"], seconds, steps, prompt_tokens, weights_bytes,
                                  parameters, bandwidth, flops)
    generator = ContinuousBatchGenerator(model, eos_ids, pad_id, slots=args.slots or None)
    outputs["after"], seconds = timed(lambda: generator.generate(prompts, settings), device)
    stats = generator.stats
    speeds["after"] = report("after", outputs["after"], seconds, stats.decode_steps, prompt_tokens, weights_bytes,
                             parameters, bandwidth, flops)
    print(f"        slots used by live rows: {100 * stats.slot_use:.0f}% of {stats.slot_steps} slot-steps; "
          f"window shifts: {stats.window_shifts}")
    if "before" in speeds:
        same = sum(a == b for a, b in zip(outputs["before"], outputs["after"]))
        print(f"after/before: {speeds['after'] / speeds['before']:.2f}x generated tokens/s; identical rationales: "
              f"{same}/{len(prompts)}")


if __name__ == "__main__":
    main()
