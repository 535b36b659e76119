"""Score a GRACE checkpoint on MTEB (mteb 2.x), with the reference's flags.

    python eval_mteb.py --model_path merge_models/ --benchmark "MTEB(eng, v1)" --output_dir results
    python eval_mteb.py --model_path merge_models/ --tasks local            # offline tasks, CPU-friendly
    python eval_mteb.py --model_path merge_models/ --tasks STS16 --compare other/summary.json
    python eval_mteb.py --model_path merge_models/ --tasks STS12 STS16 Banking77Classification --data_folder DIR
    python eval_mteb.py ... --data_folder DIR --data_items 150 Banking77Classification=300   # a study's test part

Writes the mteb results folder (OUTPUT_DIR/mteb), summary.json and summary.md (main scores, the seven category
averages, two overall averages with their rule, per-task wall time). Rationales are cached in OUTPUT_DIR (or
--rationale_cache), keyed by model, text, generation settings, backend, dtype and device.
"""

import argparse
import json
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="merged GRACE checkpoint (folder or hub id)")
    parser.add_argument("--forward_model_path", default=None, help="embed with this checkpoint (default: model_path)")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="mteb task names, 'local' (offline tasks) or local task names (default: STS16 when no "
                             "--benchmark is given)")
    parser.add_argument("--benchmark", default=None,
                        help="mteb benchmark name (e.g. 'MTEB(eng, v1)': 56 tasks) or a GRACE set: 'subset' (the "
                             "reference's 9 tasks), 'ablation16' (the paper's ablation subset)")
    parser.add_argument("--languages", nargs="+", default=["eng"],
                        help="language subsets of named tasks (ISO 639-3; 'all' for every subset)")
    parser.add_argument("--output_dir", default="results", type=Path, help="where results and summaries go")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="texts per embedding forward (the HF generator sizes its own batch by memory)")
    parser.add_argument("--input_max_length", type=int, default=1024, help="max prompt tokens per text")
    parser.add_argument("--thinking_max_length", type=int, default=4096, help="max rationale tokens")
    parser.add_argument("--vllm_tensor_parallel_size", type=int,
                        default=int(os.environ.get("VLLM_TENSOR_PARALLEL_SIZE", 2)), help="vLLM tensor parallelism")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float,
                        default=float(os.environ.get("VLLM_GPU_MEMORY_UTILIZATION", 0.8)), help="vLLM memory share")
    parser.add_argument("--pooling_method", default="mean", choices=["mean", "eos"],
                        help="mean (training's pooling); eos is refused: the reference's eos pooling was broken")
    parser.add_argument("--pooling_span", default="prompt+response", choices=["prompt+response", "response"],
                        help="tokens in the mean: after the system prefix (training's default) or the rationale alone")
    parser.add_argument("--model_name", default=None, help="name in the results (default: the model folder's name)")
    parser.add_argument("--no_rationale", action="store_true", help="embed the prompt alone (direct forward)")
    parser.add_argument("--sample", action="store_true", help="sample rationales (default: greedy, deterministic)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")
    parser.add_argument("--rationale_samples", type=int, default=1,
                        help="rationales per text (with --sample), sample j seeded --seed + j; the embedding is the "
                             "normalised mean of theirs")
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"], help="rationale generator")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--rationale_cache", type=Path, default=None,
                        help="SQLite rationale cache (default: OUTPUT_DIR/rationales.sqlite)")
    parser.add_argument("--local_size", type=int, default=None, help="cap documents / queries of the local tasks")
    parser.add_argument("--data_folder", type=Path, default=None,
                        help="read the named STS and classification tasks from DATA_FOLDER/<task>/<split>.jsonl "
                             "(no dataset hub; scored by mteb's own evaluators; see grace/evaluation/offline_data.py)")
    parser.add_argument("--data_items", nargs="+", default=None, metavar="N|TASK=N",
                        help="score only a fixed part of each data-folder task: N rows of its evaluation split (a "
                             "bare N for every task, TASK=N for one), and for classification a fixed pool of 8 "
                             "training texts per label; the rule the studies use (grace/evaluation/offline_data.py)")
    parser.add_argument("--data_part", default="test", choices=["test", "dev"],
                        help="which fixed part --data_items takes (disjoint: dev is the next N rows)")
    parser.add_argument("--baseline_model", default=None,
                        help="also score this sentence-transformers model (folder) on the same tasks")
    parser.add_argument("--compare", type=Path, default=None, help="another run's summary.json to show side by side")
    return parser


def parse_items(values: list[str] | None, data_folder: Path | None) -> dict[str, int] | None:
    """`--data_items`: ["150", "Banking77Classification=300"] -> {"*": 150, "Banking77Classification": 300}."""
    if values is None:
        return None
    if data_folder is None:
        raise ValueError("--data_items takes a part of the data-folder tasks: pass --data_folder too")
    items = {}
    for value in values:
        task, _, count = value.rpartition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--data_items {value!r}: expected N or TASK=N with N a positive whole number")
        items[task or "*"] = int(count)
    return items


def load_encoder(args):
    from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder
    from grace.evaluation.rationale_cache import RationaleCache, encoder_namespace

    settings = EncoderSettings(max_input_length=args.input_max_length, pooling_span=args.pooling_span,
                               rationale_samples=args.rationale_samples,
                               generation=GenerationSettings(max_new_tokens=args.thinking_max_length,
                                                             do_sample=args.sample, temperature=args.temperature,
                                                             seed=args.seed))
    encoder = GraceEncoder.from_pretrained(args.model_path, device=args.device, backend=args.backend,
                                           settings=settings, vllm_tensor_parallel_size=args.vllm_tensor_parallel_size,
                                           vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization)
    if args.forward_model_path and args.forward_model_path != args.model_path:
        from transformers import AutoModelForCausalLM

        encoder.model = AutoModelForCausalLM.from_pretrained(args.forward_model_path, torch_dtype=encoder.model.dtype,
                                                             trust_remote_code=True).to(encoder.model.device).eval()
    cache_path = args.rationale_cache or args.output_dir / "rationales.sqlite"
    encoder.rationale_cache = RationaleCache(cache_path, encoder_namespace(args.model_path, encoder))
    return encoder


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.pooling_method != "mean":
        print("error: --pooling_method eos is not supported (the reference's eos pooling indexed the wrong token); "
              "GRACE pools by mean, as in training", file=sys.stderr)
        return 2
    if not Path(args.model_path).is_dir() and str(args.model_path).startswith((".", "/")):
        print(f"error: model path does not exist: {args.model_path}", file=sys.stderr)
        return 1
    from grace.evaluation.run import evaluate_tasks, resolve_tasks, summarize, write_summary

    languages = None if args.languages == ["all"] else args.languages
    tasks_named = args.tasks or ([] if args.benchmark else ["STS16"])
    try:
        data = {"data_folder": args.data_folder, "data_items": parse_items(args.data_items, args.data_folder),
                "data_part": args.data_part}
        tasks = resolve_tasks(tasks_named, args.benchmark, languages, args.local_size, **data)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    other = json.loads(args.compare.read_text()) if args.compare else None

    from grace.evaluation.mteb_model import GraceMTEBModel

    name = args.model_name or Path(str(args.model_path).rstrip("/")).name
    model = GraceMTEBModel(load_encoder(args), name, batch_size=args.batch_size, rationale=not args.no_rationale)
    rows = evaluate_tasks(model, tasks, args.output_dir / "mteb")
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("compare",)}
    summary = summarize(rows, model.mteb_model_meta.name, settings)

    if args.baseline_model:
        from sentence_transformers import SentenceTransformer

        baseline = SentenceTransformer(args.baseline_model)
        baseline_tasks = resolve_tasks(tasks_named, args.benchmark, languages, args.local_size, **data)
        baseline_rows = evaluate_tasks(baseline, baseline_tasks, args.output_dir / "mteb")
        baseline_name = "/".join(Path(args.baseline_model).resolve().parts[-2:])
        baseline_summary = summarize(baseline_rows, f"baseline/{baseline_name}",
                                     {"model_path": args.baseline_model})
        write_summary(baseline_summary, args.output_dir, "baseline_summary")
        other = other or baseline_summary
    markdown = write_summary(summary, args.output_dir, other=other)
    print(markdown.read_text())
    print(f"summary: {markdown} and {markdown.with_suffix('.json')}; mteb results: {args.output_dir / 'mteb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
