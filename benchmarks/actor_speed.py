"""The actor's log-prob forward and backward: verl's `DataParallelPPOActor` against GRACE's `ResponseLogitsActor`,
in one run, on a micro-batch shaped like the demo's.

    .venv/bin/python benchmarks/actor_speed.py          # packaged SmolLM2, 8 rows, prompts of 80-115 tokens

The batch is what verl hands the actor with `use_remove_padding=False`: prompts left-padded to
`data.max_prompt_length` (192), responses right-padded to 48 tokens. Each actor runs the same micro-batch through
`_forward_micro_batch` and a backward of the summed log-probs (the update's work), `--repeats` times after one
warm-up; the ratio is verl's time over GRACE's. Both see one float32 model: verl's bf16 autocast is turned off, as
in a float32 CPU run.

    .venv/bin/python benchmarks/actor_speed.py --compile_layers   # GRACE's actor: eager against compiled layers

compares instead GRACE's actor on the model as it is against a copy whose decoder layers' and final norm's forwards
are compiled (torch.compile, which fuses the RMSNorm, rotary and SiLU elementwise work), the two passes alternating
`--rounds` times after the compiled copy's warm-up (its compile time is printed too).
"""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grace.data.assets import smollm2_hf_folder  # noqa: E402
from grace.study.report import machine_description  # noqa: E402
from grace.verl_ext.actor import ResponseLogitsActor  # noqa: E402


def demo_like_batch(vocab_size: int, rows: int, prompt_width: int, response_width: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    prompt_lengths = torch.randint(80, 116, (rows,), generator=generator)  # the demo's prompts: mean 94, max 140
    response_lengths = torch.randint(response_width // 2, response_width + 1, (rows,), generator=generator)
    input_ids = torch.randint(3, vocab_size, (rows, prompt_width + response_width), generator=generator)
    mask = torch.zeros_like(input_ids)
    for row in range(rows):
        mask[row, prompt_width - prompt_lengths[row] : prompt_width + response_lengths[row]] = 1
    return {"input_ids": input_ids * mask, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "responses": (input_ids * mask)[:, prompt_width:]}


def seconds_per_pass(actor, batch, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        actor.actor_module.zero_grad()
        started = time.perf_counter()
        _, log_probs = actor._forward_micro_batch(batch, temperature=1.0)
        log_probs.sum().backward()
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / repeats


def compare_compiled_layers(model, config, batch: dict, repeats: int, rounds: int) -> None:
    import copy

    compiled = copy.deepcopy(model)
    for module in [*compiled.model.layers, compiled.model.norm]:
        module.forward = torch.compile(module.forward)  # the forward only: hooks (FSDP2's) stay outside the graph
    eager_actor = ResponseLogitsActor(config=config, actor_module=model)
    compiled_actor = ResponseLogitsActor(config=config, actor_module=compiled)
    started = time.perf_counter()
    seconds_per_pass(compiled_actor, batch, 1)
    print(f"compile and two passes: {time.perf_counter() - started:.1f} s")
    eager, fused = [], []
    for _ in range(rounds):
        eager.append(seconds_per_pass(eager_actor, batch, repeats))
        fused.append(seconds_per_pass(compiled_actor, batch, repeats))
    print("eager    s per forward + backward, by round: " + " ".join(f"{t:.2f}" for t in eager))
    print("compiled s per forward + backward, by round: " + " ".join(f"{t:.2f}" for t in fused))
    print(f"ratio eager / compiled (means of rounds): {sum(eager) / sum(fused):.2f}")


def main() -> None:
    from transformers import AutoModelForCausalLM
    from verl.workers.actor import DataParallelPPOActor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="micro-batch rows (the demo: 2 prompts x 4 rollouts)")
    parser.add_argument("--prompt_width", type=int, default=192, help="padded prompt width (data.max_prompt_length)")
    parser.add_argument("--response_width", type=int, default=48, help="padded response width")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per actor after one warm-up")
    parser.add_argument("--compile_layers", action="store_true",
                        help="compare GRACE's actor eager against compiled decoder layers instead of verl's actor")
    parser.add_argument("--rounds", type=int, default=3, help="with --compile_layers: alternating rounds of timing")
    args = parser.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29534")
    dist.init_process_group("gloo", rank=0, world_size=1)  # verl's actor reads its rank
    torch.autocast = lambda *a, **k: contextlib.nullcontext()  # float32, as a float32 CPU run
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_folder(), dtype=torch.float32)
    model.eval()
    config = OmegaConf.create({"use_remove_padding": False, "use_fused_kernels": False,
                               "ulysses_sequence_parallel_size": 1, "entropy_from_logits_with_chunking": False,
                               "use_torch_compile": False, "entropy_checkpointing": False})
    batch = demo_like_batch(model.config.vocab_size, args.rows, args.prompt_width, args.response_width)
    print(f"SmolLM2-135M float32, {args.rows} rows x ({args.prompt_width} + {args.response_width}) positions, "
          f"{int(batch['attention_mask'].sum())} real tokens; {machine_description()}")
    if args.compile_layers:
        compare_compiled_layers(model, config, batch, args.repeats, args.rounds)
        dist.destroy_process_group()
        return
    verl_seconds = seconds_per_pass(DataParallelPPOActor(config=config, actor_module=model), batch, args.repeats)
    grace_seconds = seconds_per_pass(ResponseLogitsActor(config=config, actor_module=model), batch, args.repeats)
    print(f"verl DataParallelPPOActor: {verl_seconds:.2f} s per forward + backward")
    print(f"GRACE ResponseLogitsActor: {grace_seconds:.2f} s per forward + backward")
    print(f"ratio verl / GRACE: {verl_seconds / grace_seconds:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
