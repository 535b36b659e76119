"""The whole GRACE pipeline on a laptop CPU, on a real small model and real data that ship in packages.

    python -m grace.demo                     # or: make demo         (about 30 minutes on 2 CPU cores)
    python -m grace.demo --preset full       # or: make demo DEMO_ARGS="--preset full"   (about 2 hours)

Stages, each through the same command line a user would type: SmolLM2-135M-Instruct converted once from its
packaged GGUF; Echo-format triples from packaged Wikipedia articles (`grace.data.demo`); `process_data.py`;
`offline_filter_data.py`; `python -m grace.train` (verl 0.4.1, HF rollout, FSDP2, the `hidden` reward,
supervised mode); `scripts/merge_model.py`. The demo is a study (`grace.study`) of four arms: the base model
without a rationale, with one pooled over prompt + rationale and over the rationale alone, and the trained model
with a rationale, scored on the same held-out items (retrieval of held-out Wikipedia extracts from their
descriptions, Lee news pairs, perplexity) with paired bootstrap intervals. Its verdict compares the trained model,
per task, with the strongest of the three untrained embeddings (named), then with the one pooled the same way (what
training moved). It writes OUT/report.md (does training help, in plain words, with the intervals),
OUT/results.json (the study's schema), OUT/reward_curve.png and OUT/validation_reward.png. While training, the
console shows a line per step (rewards, what GRPO learns from, the validation reward when computed, seconds per
step, time left). A GPU is used when there is one.

Instruments: every `--val_every` steps (and before training) verl's validation scores the GRACE reward of greedy
rationales on a fixed set of `--val_size` held-out prompts, with greedy query and negative rationales, so its
curve moves only when the policy does; its slope and standard error are in the report, beside the mean
within-group reward spread and the fraction of groups with equal rewards (no gradient). On a CPU the compute dtype
is the one the CPU runs fast (`--cpu_dtype`, default auto: float32 unless it has native bf16).

Simplifications against the reference recipe, made to fit a CPU (each a flag):
- 4 prompts x 4 rollouts per step, responses and evaluation rationales of at most 48 tokens, positives and
  negatives cut to their first sentences (<= 300 characters): the rationale then weighs more in the pooled
  embedding than it would after a whole passage;
- GRPO advantages normalised by the group's std, lr 1e-5 (presets; the parser's default 2e-5 is the first
  study's) and two optimizer steps per training step (the reference: mean baseline only, lr 1e-6, 4 steps of 128
  responses), to give learning a chance in a few steps;
- the presets pool the rationale alone (`--pooling_span response`), in the reward and the evaluation: with the
  reference's prompt + rationale the shared prompt dominates every rollout's embedding and a group's rewards
  barely differ (docs/studies/headroom); the search (docs/studies/search) found this setting to learn;
- no length penalty: with a 48-token budget most rationales are cut, and the -1 would teach brevity, not meaning.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from grace.study.config import ArmConfig, EvaluationConfig, StudyConfig
from grace.study.stats import linear_trend, trend_verdict
from grace.training_run import (
    DataConfig,
    TrainingSettings,
    add_flags,
    compute_dtype,
    device,
    read_metrics,
    settings_from,
    validation_curve,
)

COMPONENTS = ["total", "positive", "negative", "clustering", "cross_group"]
TRAINED_ARM = "grace"
BASE_RATIONALE_ARMS = {"prompt+response": "base_rationale", "response": "base_rationale_response"}  # the study's names
# name: (what it is, flag defaults over the parser's). The parser's own defaults are the settings of the first
# study (studies/first.yaml), which did not learn; the presets use the setting the search found to learn
# (studies/search.yaml, arm response_lr1e-5): the rationale pooled alone, lr 1e-5.
LEARNING_SETTING = {"pooling_span": "response", "lr": 1e-5}
PRESETS = {
    "quick": ("20 steps, 100 retrieval queries: about 30 minutes on 2 CPU cores",
              {**LEARNING_SETTING, "steps": 20, "val_every": 5}),
    "full": ("the search's 100 steps, 400 retrieval queries: about 2 hours on 2 CPU cores",
             {**LEARNING_SETTING, "steps": 100, "val_every": 10, "eval_size": 400}),
}


class StageTimer:
    """Prints a numbered header per stage and records each stage's wall time."""

    def __init__(self, total: int):
        self.total, self.seconds, self.current, self.started = total, {}, None, 0.0

    def start(self, name: str) -> None:
        self.stop()
        self.current, self.started = name, time.perf_counter()
        print(f"\n=== [{len(self.seconds) + 1}/{self.total}] {name}", flush=True)

    def stop(self) -> None:
        if self.current is not None:
            self.seconds[self.current] = time.perf_counter() - self.started
            self.current = None


def plot_rewards(metrics: list[dict], slope: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for name in COMPONENTS:
        key = f"grace/{name}"
        if all(key in m for m in metrics):
            axis.plot(steps, [m[key] for m in metrics], marker="o", markersize=3, label=name,
                      linewidth=2.5 if name == "total" else 1.2)
    plot_fit(axis, steps, [m["grace/total"] for m in metrics], slope, f"fit of total ({slope:+.3f}/step)")
    axis.set_xlabel("training step")
    axis.set_ylabel("reward component (batch mean, after 1/temperature)")
    axis.set_title("GRACE reward components during the demo run")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_fit(axis, steps: list[int], values: list[float], slope: float, label: str) -> None:
    """The least-squares line of `values` over `steps` (slope given), dashed; nothing when the slope is nan."""
    if not math.isnan(slope):
        mean_step, mean_value = sum(steps) / len(steps), sum(values) / len(values)
        axis.plot(steps, [mean_value + slope * (s - mean_step) for s in steps], "k--", linewidth=1, label=label)


def plot_validation(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = validation_curve(metrics)
    slope, error = linear_trend(values, steps)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, values, marker="o", label="validation reward (greedy rationales)")
    plot_fit(axis, steps, values, slope, f"fit: {slope:+.4f} ± {error:.4f} per step")
    axis.set_xlabel("training step")
    axis.set_ylabel("mean GRACE reward")
    axis.set_title("GRACE reward on the fixed validation prompts")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def example_rationales(base: Path, trained: Path, text: str, max_new_tokens: int) -> dict[str, str]:
    from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder

    settings = EncoderSettings(generation=GenerationSettings(max_new_tokens=max_new_tokens))
    return {label: GraceEncoder.from_pretrained(path, backend="hf", settings=settings).encode(
                [text], return_rationales=True)[1][0].strip()
            for label, path in (("before training", base), ("after training", trained))}


def training_verdict(results: dict) -> list[str]:
    """Plain words per task: the trained model against the strongest untrained embedding of the base model (named),
    then against the base model pooled the same way; then generative retention."""
    from grace.study.report import verdict

    trained, base = results["arms"][TRAINED_ARM], results["arms"]["base_prompt_only"]
    return verdict(results, [TRAINED_ARM]) + [
        f"- Generative retention: held-out perplexity {trained['perplexity']:.2f} after training against "
        f"{base['perplexity']:.2f} before; the policy moved {trained['kl_to_base']:.4f} nats per token "
        "(KL to the base model on its own rationales of held-out documents)."]


def write_report(args, out: Path, metrics: list[dict], results: dict, examples: dict[str, str], example_text: str,
                 stage_seconds: dict[str, float]) -> Path:
    from grace.study.report import in_words, machine_description, results_table

    validation_metrics = metrics
    metrics = [m for m in metrics if "grace/total" in m]  # training steps (step 0 is validation only)
    totals = [m["grace/total"] for m in metrics]
    slope, error = linear_trend(totals)
    positive_slope, positive_error = linear_trend([m["grace/positive"] for m in metrics])
    lines = ["# GRACE demo report", "", f"Machine: {machine_description()}.", "", "## Settings", "",
             "| setting | value |", "|---|---|"]
    for key in ("preset", "model", "steps", "prompts", "rollouts", "temperature", "response_length", "lr",
                "norm_adv_by_std", "variant", "pooling_span", "train_triples", "max_chars", "val_every", "val_size",
                "eval_size", "rationale_length", "compute_dtype"):
        lines.append(f"| {key} | {getattr(args, key)} |")
    lines += ["", "## Did training help?", "",
              "The trained model and the base model embed the same held-out items (never in training data), each "
              f"from its own {args.rationale_length}-token rationale; differences are paired bootstrap 95% intervals. "
              "Each task compares the trained model with the strongest untrained embedding of the base model on "
              "that task (without a rationale, or with one pooled either way), then with the base model pooled the "
              "same way as the trained one.",
              "", *training_verdict(results), f"- {validation_section(validation_metrics)}", "",
              *results_table(results), "", *in_words(results), "",
              "## Validation reward", "", validation_section(validation_metrics), "",
              "![validation reward](validation_reward.png)", "",
              "## Reward over the steps", "", "![reward curve](reward_curve.png)", "",
              f"Slope of the total reward: {slope:+.4f} per step (standard error {error:.4f}, {len(totals)} steps): "
              f"{trend_verdict(slope, error, 'the total reward')}. The total includes the negative and cross-group "
              "terms, which are the "
              f"same for every rollout of a prompt and change with each step's prompts; the positive term alone (query "
              f"vs rollout, the part that moves the policy) has slope {positive_slope:+.4f} (standard error "
              f"{positive_error:.4f}).", "",
              "What GRPO learns from: `group std` is the mean within-group standard deviation of the final reward "
              "(the advantage's scale), `flat` the fraction of groups whose rewards are all equal (no gradient).", "",
              "| step | " + " | ".join(COMPONENTS) + " | group std | flat | entropy | grad norm | response length "
              "| step time (s) |", "|---|" + "---|" * (len(COMPONENTS) + 6)]
    for m in metrics:
        cells = [str(m["step"])] + [f"{m.get(f'grace/{c}', float('nan')):.3f}" for c in COMPONENTS]
        cells += [f"{m.get('grace/group_reward_std', float('nan')):.3f}",
                  f"{m.get('grace/group_all_equal', float('nan')):.2f}", f"{m.get('actor/entropy', float('nan')):.3f}",
                  f"{m.get('actor/grad_norm', float('nan')):.3f}", f"{m.get('response_length/mean', float('nan')):.1f}",
                  f"{m.get('timing_s/step', float('nan')):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## The same text, before and after training", "", f"> {example_text}", ""]
    for label, rationale in examples.items():
        lines += [f"**{label}:**", "", "> " + (rationale.replace("\n", " ") or "(empty)"), ""]
    lines += ["## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in stage_seconds.items()]
    lines += [f"| of which {name}: training {arm.get('train_seconds', 0):.0f}, evaluation {arm['eval_seconds']:.0f} | |"
              for name, arm in results["arms"].items()]
    lines.append(f"| total | {sum(stage_seconds.values()):.0f} |")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    plot_rewards(metrics, slope, out / "reward_curve.png")
    plot_validation(validation_metrics, out / "validation_reward.png")
    return report


def validation_section(metrics: list[dict]) -> str:
    steps, values = validation_curve(metrics)
    if not steps:
        return "Validation was off (`--val_every 0`)."
    slope, error = linear_trend(values, steps)
    table = " ".join(f"step {s}: {v:+.3f};" for s, v in zip(steps, values))
    return (f"GRACE reward of greedy rationales on the fixed validation prompts, at {len(steps)} points: {table} "
            f"slope {slope:+.4f} per step (standard error {error:.4f}): {trend_verdict(slope, error)}.")


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags: its own (output, preset, model, evaluation) and every training and data setting of a
    GRACE arm (`grace.training_run`), whose defaults are the first study's; a preset changes some of them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                        help="defaults for the flags below: " + "; ".join(f"{name}: {text}"
                                                                            for name, (text, _) in PRESETS.items())
                             + " (flags given explicitly win)")
    parser.add_argument("--model", default=None, help="policy (default: packaged SmolLM2-135M-Instruct)")
    add_flags(parser, TrainingSettings)
    add_flags(parser, DataConfig)
    parser.add_argument("--eval_size", type=int, default=100, help="documents / queries per local task")
    parser.add_argument("--rationale_length", type=int, default=48, help="max rationale tokens in evaluation")
    return parser


def parse_arguments(argv=None) -> argparse.Namespace:
    """The demo's flags over the defaults of the chosen preset; the device is a GPU if there is one."""
    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    parser.set_defaults(**PRESETS[preset][1])
    args = parser.parse_args(argv)
    args.device = device()
    return args


def demo_study(args, model: Path) -> StudyConfig:
    """The demo as a study: the base model without a rationale and with one pooled either way, and GRACE trained with
    the demo's flags, scored on the same held-out items (`grace.study`), so that its results.json has the study's
    schema."""
    training = dataclasses.asdict(settings_from(args, TrainingSettings))
    pooling_span = training.pop("pooling_span")  # an arm's, in the study: its evaluation pools the same way
    # Every untrained embedding of the model, so that the verdict finds the strongest (the two rationale arms share
    # their rationales through the cache); the table's differences are against the one pooled the same way.
    same_way = BASE_RATIONALE_ARMS[pooling_span]
    return StudyConfig(
        name="demo", model=str(model), compare_to=same_way, data=settings_from(args, DataConfig),
        evaluation=EvaluationConfig(retrieval_queries=args.eval_size, rationale_length=args.rationale_length),
        arms=[ArmConfig("base_prompt_only", "base", rationale=False),
              *[ArmConfig(name, "base", pooling_span=span) for span, name in BASE_RATIONALE_ARMS.items()],
              ArmConfig(TRAINED_ARM, "grace", pooling_span=pooling_span, settings=training)])


def main(argv=None) -> int:
    import yaml

    from grace.study.runner import run_study

    args = parse_arguments(argv)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it or pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    args.compute_dtype = compute_dtype(settings_from(args, TrainingSettings), args.device)
    print(f"preset: {args.preset}; compute dtype: {args.compute_dtype}", flush=True)
    timer = StageTimer(total=3)
    timer.start("model")
    if args.model is None:
        from grace.data.assets import smollm2_hf_folder

        model = smollm2_hf_folder()
        args.model = "SmolLM2-135M-Instruct (packaged)"
    else:
        model = Path(args.model).resolve()
    timer.start("data, training and held-out evaluation (grace.study)")
    study = demo_study(args, model)
    results = run_study(study, yaml.safe_dump(dataclasses.asdict(study), sort_keys=False), out)
    timer.start("report")
    from grace.evaluation.local_tasks import held_out_articles

    trained = out / "arms" / TRAINED_ARM / "trained_model"
    example_text = held_out_articles(require_description=True)[0]["extract"]
    examples = example_rationales(model, trained, example_text, args.rationale_length)
    timer.stop()
    metrics = read_metrics(out / "arms" / TRAINED_ARM / "metrics.jsonl")
    report = write_report(args, out, metrics, results, examples, example_text, timer.seconds)
    print(f"\nreport: {report}\nresults: {out / 'results.json'}\nreward curve: {out / 'reward_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
