"""The whole GRACE pipeline on a laptop CPU, on a real small model and real data that ship in packages.

    python -m grace.demo                     # or: make demo         (about 30 minutes on 2 CPU cores)
    python -m grace.demo --preset full       # or: make demo DEMO_ARGS="--preset full"   (about 2 hours)

Stages, each through the same command line a user would type: SmolLM2-135M-Instruct converted once from its
packaged GGUF; Echo-format triples from packaged Wikipedia articles (`grace.data.demo`); `process_data.py`;
`offline_filter_data.py`; `python -m grace.train` (verl 0.4.1, HF rollout, FSDP2, the `hidden` reward,
supervised mode); `scripts/merge_model.py`. The demo is a study (`grace.study`) of three arms: the base model
without and with a rationale, and the trained model with a rationale, scored on the same held-out items
(retrieval of held-out Wikipedia extracts from their descriptions, Lee news pairs, perplexity) with paired
bootstrap intervals. It writes OUT/report.md (does training help, in plain words, with the intervals),
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
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from grace.study.stats import linear_trend, trend_verdict

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ["total", "positive", "negative", "clustering", "cross_group"]
VALIDATION_PREFIX = "val-core/"  # verl: val-core/<data source>/reward/mean@1
TRAINED_ARM = "grace"
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


def run(command: list[str], log_name: str, out: Path, env: dict | None = None, on_line=None) -> None:
    """Run one stage's command, echo its output live and keep it in OUT/logs; stop on failure. `on_line` is
    called after every output line (the training progress uses it)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out / "logs" / f"{log_name}.log"
    print("$ " + " ".join(command), flush=True)
    with open(log_path, "a", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **(env or {})})
        for line in process.stdout:
            log.write(line)
            if _worth_showing(line):
                print("    " + line.rstrip()[:200], flush=True)
            if on_line is not None:
                on_line()
        if on_line is not None:  # what was written after the last output line (verl's final step record)
            on_line()
        if process.wait() != 0:
            raise SystemExit(f"stage {log_name!r} failed (exit {process.returncode}); full log: {log_path}")


def read_metrics(path: Path) -> list[dict]:
    """verl's step metrics from a `+trainer.metrics_file`, one record per step (a step logged again after a
    resume replaces the earlier record)."""
    by_step: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            by_step[record["step"]] = {**by_step.get(record["step"], {}), **record}
    return [by_step[step] for step in sorted(by_step)]


def validation_reward(record: dict) -> float | None:
    """The mean validation reward of a metrics record, when that step ran validation."""
    values = [v for k, v in record.items() if k.startswith(VALIDATION_PREFIX) and "/reward/mean@" in k]
    return sum(values) / len(values) if values else None


def validation_curve(metrics: list[dict]) -> tuple[list[int], list[float]]:
    points = [(m["step"], validation_reward(m)) for m in metrics if validation_reward(m) is not None]
    return [step for step, _ in points], [value for _, value in points]


class StepProgress:
    """Prints one line per training step from the metrics file as verl writes it."""

    def __init__(self, metrics_path: Path, total_steps: int, label: str = "train"):
        self.path, self.total, self.label, self.shown = metrics_path, total_steps, label, set()
        self.size_read = -1

    def __call__(self) -> None:
        # Called on every output line of training: the file is parsed only when it has grown.
        size = self.path.stat().st_size if self.path.exists() else -1
        if size == self.size_read:
            return
        self.size_read = size
        metrics = read_metrics(self.path)
        seconds = [m["timing_s/step"] for m in metrics if "timing_s/step" in m]
        for record in metrics:
            if record["step"] in self.shown:
                continue
            self.shown.add(record["step"])
            print("    " + step_line(record, self.total, seconds, self.label), flush=True)


def step_line(record: dict, total_steps: int, step_seconds: list[float], label: str = "train") -> str:
    parts = [f"[{label}] step {record['step']}/{total_steps}"]
    if "grace/total" in record:
        parts.append(f"reward {record['grace/total']:+.3f} (positive {record.get('grace/positive', float('nan')):+.3f})")
    if "grace/group_reward_std" in record:
        parts.append(f"group std {record['grace/group_reward_std']:.3f}, "
                     f"flat groups {100 * record.get('grace/group_all_equal', float('nan')):.0f}%")
    if "actor/entropy" in record:
        parts.append(f"entropy {record['actor/entropy']:.2f}")
    if validation_reward(record) is not None:
        parts.append(f"validation reward {validation_reward(record):+.3f}")
    if "timing_s/step" in record:
        mean = sum(step_seconds) / len(step_seconds)
        parts.append(f"{record['timing_s/step']:.0f} s/step, ~{mean * (total_steps - record['step']) / 60:.0f} min left")
    return " | ".join(parts)


def _worth_showing(line: str) -> bool:
    """Step numbers, progress bars and results; not the thousands of lines of config and Ray chatter."""
    keys = ("step:", "Training Progress", "wrote ", "kept ", "merged ", "[1/", "[2/", "[3/", " = ", "error",
            "Error", "generating rationales", "embedding:")
    return any(k in line for k in keys) and "WARNING" not in line


def train_overrides(args, data: Path, model: Path, out: Path) -> list[str]:
    mini_batch = max(1, args.prompts // 2)  # two optimizer steps per training step
    return [
        "algorithm.adv_estimator=grpo", f"algorithm.norm_adv_by_std_in_grpo={args.norm_adv_by_std}",
        f"data.train_files={data}/train.parquet", f"data.val_files={data}/test.parquet",
        f"data.train_batch_size={args.prompts}", f"data.max_prompt_length={args.max_prompt}",
        f"data.max_response_length={args.response_length}", "data.filter_overlong_prompts=False",
        "data.truncation=error", "+data.train_mode=supervised", "+data.seed=0",
        f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2", f"actor_rollout_ref.actor.optim.lr={args.lr}",
        "actor_rollout_ref.actor.use_kl_loss=False", "actor_rollout_ref.actor.entropy_coeff=0",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={mini_batch * args.rollouts}",
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=False",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.n={args.rollouts}", f"actor_rollout_ref.rollout.temperature={args.temperature}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.prompts * args.rollouts}",
        "reward_model.reward_manager=hidden", "+reward_model.reward_kwargs.temperature=0.1",
        f"+reward_model.reward_kwargs.variant={args.variant}",
        f"+reward_model.reward_kwargs.pooling_span={args.pooling_span}",
        "+reward_model.reward_kwargs.enable_length_penalty=False",
        "trainer.logger=['console']", f"trainer.n_gpus_per_node={args.n_gpus}", "trainer.nnodes=1",
        f"trainer.total_training_steps={args.steps}", f"trainer.save_freq={args.save_every or args.steps}",
        "trainer.max_actor_ckpt_to_keep=1", f"trainer.test_freq={args.val_every if args.val_every > 0 else -1}",
        f"trainer.val_before_train={args.val_every > 0}", f"trainer.default_local_dir={out}/checkpoints",
        f"+trainer.cpu_dtype={args.cpu_dtype}",
        f"+trainer.metrics_file={out}/metrics.jsonl", "trainer.project_name=GRACE", "trainer.experiment_name=demo",
        "ray_init.num_cpus=2" if args.device == "cpu" else "ray_init.num_cpus=null",
    ]


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
    """Plain words per task: did the trained model beat the base model with a rationale (paired 95% interval)?"""
    trained, base = results["arms"][TRAINED_ARM], results["arms"]["base_rationale"]
    lines = []
    for task, values in trained["tasks"].items():
        comparison = values["vs_base_rationale"]
        if comparison["ci_low"] > 0:
            outcome = "training helped"
        elif comparison["ci_high"] < 0:
            outcome = "training made it worse"
        else:
            outcome = "no effect of training was shown (the interval includes 0)"
        lines.append(f"- {task}: {outcome}: {values['score']:.1f} after training against "
                     f"{base['tasks'][task]['score']:.1f} for the base model with a rationale ({values['metric']}, "
                     f"paired difference {comparison['diff']:+.1f}, 95% CI {comparison['ci_low']:+.1f} to "
                     f"{comparison['ci_high']:+.1f}, n = {values['n']}).")
    lines.append(f"- Generative retention: held-out perplexity {trained['perplexity']:.2f} after training against "
                 f"{base['perplexity']:.2f} before; the policy moved {trained['kl_to_base']:.4f} nats per token "
                 "(KL to the base model on its own rationales of held-out documents).")
    return lines


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
              f"from its own {args.rationale_length}-token rationale; differences are paired bootstrap 95% intervals.",
              "", *training_verdict(results), f"- {validation_section(validation_metrics)}", "",
              *results_table(results), "", *in_words(results), "",
              "## Validation reward", "", validation_section(validation_metrics), "",
              "![validation reward](validation_reward.png)", "",
              "## Reward over the steps", "", "![reward curve](reward_curve.png)", "",
              f"Slope of the total reward: {slope:+.4f} per step (standard error {error:.4f}, {len(totals)} steps): "
              f"{trend_verdict(slope, error, 'the total reward')}. The total includes the negative and cross-group terms, which are the "
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                        help="defaults for the flags below: " + "; ".join(f"{name}: {text}"
                                                                            for name, (text, _) in PRESETS.items())
                             + " (flags given explicitly win)")
    parser.add_argument("--model", default=None, help="policy (default: packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=16, help="GRPO training steps")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--rollouts", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--response_length", type=int, default=48, help="max rationale tokens in training")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the training rollouts")
    parser.add_argument("--lr", type=float, default=2e-5, help="actor learning rate")
    parser.add_argument("--norm_adv_by_std", type=lambda s: s.lower() == "true", default=True,
                        help="divide GRPO advantages by the group std (true/false)")
    parser.add_argument("--variant", default="reference", choices=["reference", "infonce"], help="reward variant")
    parser.add_argument("--pooling_span", default="prompt+response", choices=["prompt+response", "response"],
                        help="tokens pooled into an embedding, in the reward and the evaluation")
    parser.add_argument("--train_triples", type=int, default=600, help="training triples to prepare")
    parser.add_argument("--max_chars", type=int, default=300, help="cut documents to their first sentences")
    parser.add_argument("--max_prompt", type=int, default=192, help="max prompt tokens (filter and training)")
    parser.add_argument("--val_every", type=int, default=4,
                        help="validation reward on the fixed validation prompts every N steps and before training "
                             "(0: off)")
    parser.add_argument("--val_size", type=int, default=16, help="fixed validation prompts (held out of training)")
    parser.add_argument("--save_every", type=int, default=0, help="checkpoint every N steps (0: at the end only)")
    parser.add_argument("--cpu_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="compute dtype of CPU training; auto: bfloat16 only where the CPU runs it natively")
    parser.add_argument("--eval_size", type=int, default=100, help="documents / queries per local task")
    parser.add_argument("--rationale_length", type=int, default=48, help="max rationale tokens in evaluation")
    parser.add_argument("--n_gpus", type=int, default=1, help="GPUs (or CPU placeholder ranks) for training")
    return parser


def parse_arguments(argv=None) -> argparse.Namespace:
    """The demo's flags over the defaults of the chosen preset; the device is the study runner's (a GPU if any)."""
    from grace.study.runner import device

    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    parser.set_defaults(**PRESETS[preset][1])
    args = parser.parse_args(argv)
    args.device = device()
    return args


def compute_dtype(args) -> str:
    """The dtype training runs in: on a CPU the one `--cpu_dtype` resolves to here; on GPUs verl's bf16."""
    if args.device != "cpu":
        return "bfloat16 (verl's GPU mixed precision)"
    from grace.verl_ext.cpu_compat import resolve_cpu_dtype

    return resolve_cpu_dtype(args.cpu_dtype) + ("" if args.cpu_dtype != "auto" else " (auto: this CPU's fast dtype)")


def prepare_data(args, out: Path, model: Path) -> Path:
    """Demo triples from the packaged Wikipedia, then the reference's process and filter commands; returns the
    folder of the filtered train/test parquet files. The test split (the fixed validation prompts) holds
    `args.val_size` triples before the length filter."""
    python = sys.executable
    raw, data = out / "raw", out / "data"
    run([python, "-m", "grace.data.demo", "--out", str(raw), "--max_triples", str(args.train_triples),
         "--max_sentences", "100", "--max_chars", str(args.max_chars)], "demo_data", out)
    test_ratio = (args.val_size + 0.5) / args.train_triples  # process_data keeps int(rows * ratio) for test
    run([python, "process_data.py", "--mode", "supervised", "--input_file", str(raw / "echo_demo.jsonl"),
         "--local_dir", str(data / "supervised"), "--test_ratio", f"{test_ratio:.6f}"], "process_data", out)
    run([python, "offline_filter_data.py", "--train_parquet", str(data / "supervised/train.parquet"),
         "--val_parquet", str(data / "supervised/test.parquet"), "--out_dir", str(data / "filtered"),
         "--tokenizer_path", str(model), "--max_len", str(args.max_prompt)], "filter_data", out)
    return data / "filtered"


def train(args, data: Path, model: Path, out: Path, label: str = "train") -> list[dict]:
    """`python -m grace.train` with the demo's overrides (resuming from OUT/checkpoints when present); returns the
    step metrics."""
    metrics_path = out / "metrics.jsonl"
    run([sys.executable, "-m", "grace.train", *train_overrides(args, data, model, out)], "train", out,
        env={"WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"},
        on_line=StepProgress(metrics_path, args.steps, label))
    return read_metrics(metrics_path)


def merge(out: Path, model: Path) -> Path:
    """The latest checkpoint under OUT/checkpoints as a Hugging Face folder OUT/trained_model."""
    trained = out / "trained_model"
    run([sys.executable, "scripts/merge_model.py", "merge", "--backend", "fsdp", "--local_dir", str(out / "checkpoints"),
         "--target_dir", str(trained), "--hf_model_path", str(model)], "merge", out)
    return trained


def demo_study(args, model: Path):
    """The demo as a study: the base model without and with a rationale, and GRACE trained with the demo's flags,
    scored on the same held-out items (`grace.study`), so that its results.json has the study's schema."""
    from grace.study.config import STUDY_OWNED_DEMO_FLAGS, ArmConfig, DataConfig, EvaluationConfig, StudyConfig

    training = {key: value for key, value in vars(args).items()
                if key not in STUDY_OWNED_DEMO_FLAGS and key != "compute_dtype"}
    return StudyConfig(
        name="demo", model=str(model), compare_to="base_rationale",
        data=DataConfig(args.train_triples, args.max_chars, args.max_prompt, args.val_size),
        evaluation=EvaluationConfig(retrieval_queries=args.eval_size, rationale_length=args.rationale_length),
        arms=[ArmConfig("base_prompt_only", "base", rationale=False),
              ArmConfig("base_rationale", "base", pooling_span=args.pooling_span),
              ArmConfig(TRAINED_ARM, "grace", pooling_span=args.pooling_span, settings=training)])


def main(argv=None) -> int:
    import dataclasses

    import yaml

    from grace.study.runner import run_study

    args = parse_arguments(argv)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it or pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    args.compute_dtype = compute_dtype(args)
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
