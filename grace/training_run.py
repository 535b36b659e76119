"""One GRACE training run of the CPU recipe, as the study's GRACE arms and the demo run it.

Stages, each through the command line a user would type: demo triples from the packaged Wikipedia
(`grace.data.demo`), `process_data.py` and `offline_filter_data.py` (`prepare_data`); `python -m grace.train`
(verl 0.4.1, HF rollout, FSDP2, the `hidden` reward, supervised mode) as a subprocess whose output is kept in
OUT/logs and whose step metrics are printed as one line per step (`train`); `scripts/merge_model.py` (`merge`).
verl's step metrics are read back with `read_metrics`, the validation reward's curve with `validation_curve`.

`TrainingSettings` holds what a GRACE arm may set and `DataConfig` the data its study shares (the demo's flags are
generated from both); their defaults are the settings of the first study (studies/first.yaml). What they simplify
against the reference recipe to fit a CPU is listed at the top of grace/demo.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_PREFIX = "val-core/"  # verl: val-core/<data source>/reward/mean@1


def _setting(default, help: str, **argparse_options):
    """A dataclass field whose metadata is its command-line flag's (help, type, choices)."""
    return field(default=default, metadata={"help": help, **argparse_options})


def _true_or_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


@dataclass
class DataConfig:
    """The training data every arm of a study shares: demo triples, cut and filtered."""

    train_triples: int = _setting(600, "training triples to prepare")
    max_chars: int = _setting(300, "cut documents to their first sentences")
    max_prompt: int = _setting(192, "max prompt tokens (filter and training)")
    val_size: int = _setting(16, "fixed validation prompts (held out of training)")


@dataclass
class TrainingSettings:
    """What a GRACE arm trains with."""

    steps: int = _setting(16, "GRPO training steps")
    prompts: int = _setting(4, "prompts per step")
    rollouts: int = _setting(4, "rollouts per prompt")
    response_length: int = _setting(48, "max rationale tokens in training")
    temperature: float = _setting(1.0, "sampling temperature of the training rollouts")
    lr: float = _setting(2e-5, "actor learning rate")
    norm_adv_by_std: bool = _setting(True, "divide GRPO advantages by the group std (true/false)",
                                     type=_true_or_false)
    variant: str = _setting("reference", "reward variant", choices=["reference", "infonce"])
    entropy_coeff: float = _setting(0.0, "entropy bonus of the actor's loss (verl's actor.entropy_coeff): keeps the "
                                         "rollouts of a group apart")
    kl_coef: float = _setting(0.0, "KL loss to the base model (verl's low_var_kl, actor.kl_loss_coef); above 0 it "
                                   "builds and runs a reference model every step")
    contrastive_coef: float = _setting(0.0, "weight of an auxiliary contrastive loss on the rollouts' pooled hidden "
                                            "states beside the GRPO reward (beyond the paper; "
                                            "grace.rollout_contrastive; 0: off)")
    pooling_span: str = _setting("prompt+response", "tokens pooled into an embedding, in the reward and the evaluation",
                                 choices=["prompt+response", "response"])
    share_log_prob_forward: bool = _setting(True, "the training reward embeds the rollouts in verl's old-log-prob "
                                                  "forward, one forward fewer a step (true/false; false: the "
                                                  "separate embedding pass, same results to the last bits)",
                                            type=_true_or_false)
    val_every: int = _setting(4, "validation reward on the fixed validation prompts every N steps and before training "
                                 "(0: off)")
    save_every: int = _setting(0, "checkpoint every N steps (0: at the end only)")
    save_minutes: float = _setting(0.0, "skip a checkpoint while the last one is younger than M minutes (the last "
                                        "step always saves; 0: off): with --save_every 1, one about every M minutes")
    cpu_dtype: str = _setting("auto", "compute dtype of CPU training; auto: bfloat16 only where the CPU runs it "
                                      "natively", choices=["auto", "float32", "bfloat16"])
    n_gpus: int = _setting(1, "GPUs (or CPU placeholder ranks) for training")
    seed: int = _setting(0, "training seed: the order in which the training prompts are drawn and the rollouts' "
                            "sampling seeds")


def add_flags(parser, settings_class) -> None:
    """One `--name` flag per field of a settings dataclass, with its default, help, type and choices."""
    types = typing.get_type_hints(settings_class)
    for setting in dataclasses.fields(settings_class):
        options = {"type": types[setting.name], **setting.metadata}
        parser.add_argument(f"--{setting.name}", default=setting.default, **options)


def settings_from(namespace, settings_class):
    """The settings dataclass of the same-named attributes of an argparse namespace."""
    return settings_class(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(settings_class)})


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(settings: TrainingSettings, on_device: str) -> str:
    """The dtype training runs in: on a CPU the one `cpu_dtype` resolves to here; on GPUs verl's bf16."""
    if on_device != "cpu":
        return "bfloat16 (verl's GPU mixed precision)"
    from grace.verl_ext.cpu_compat import resolve_cpu_dtype

    return resolve_cpu_dtype(settings.cpu_dtype) + ("" if settings.cpu_dtype != "auto" else
                                                    " (auto: this CPU's fast dtype)")


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


def _worth_showing(line: str) -> bool:
    """Step numbers, progress bars and results; not the thousands of lines of config and Ray chatter."""
    keys = ("step:", "Training Progress", "wrote ", "kept ", "merged ", "[1/", "[2/", "[3/", " = ", "error",
            "Error", "generating rationales", "embedding:")
    return any(k in line for k in keys) and "WARNING" not in line


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
        positive = record.get("grace/positive", float("nan"))
        parts.append(f"reward {record['grace/total']:+.3f} (positive {positive:+.3f})")
    if "grace/group_reward_std" in record:
        parts.append(f"group std {record['grace/group_reward_std']:.3f}, "
                     f"flat groups {100 * record.get('grace/group_all_equal', float('nan')):.0f}%")
    if "actor/entropy" in record:
        parts.append(f"entropy {record['actor/entropy']:.2f}")
    if validation_reward(record) is not None:
        parts.append(f"validation reward {validation_reward(record):+.3f}")
    if "timing_s/step" in record:
        mean = sum(step_seconds) / len(step_seconds)
        minutes_left = mean * (total_steps - record["step"]) / 60
        parts.append(f"{record['timing_s/step']:.0f} s/step, ~{minutes_left:.0f} min left")
    return " | ".join(parts)


def train_overrides(settings: TrainingSettings, max_prompt: int, data: Path, model: Path, out: Path,
                    on_device: str) -> list[str]:
    """verl overrides of the run (over verl's `ppo_trainer` defaults)."""
    s = settings
    mini_batch = max(1, s.prompts // 2)  # two optimizer steps per training step
    return [
        "algorithm.adv_estimator=grpo", f"algorithm.norm_adv_by_std_in_grpo={s.norm_adv_by_std}",
        f"data.train_files={data}/train.parquet", f"data.val_files={data}/test.parquet",
        f"data.train_batch_size={s.prompts}", f"data.max_prompt_length={max_prompt}",
        f"data.max_response_length={s.response_length}", "data.filter_overlong_prompts=False",
        "data.truncation=error", "+data.train_mode=supervised", f"+data.seed={s.seed}",
        f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2", f"actor_rollout_ref.actor.optim.lr={s.lr}",
        f"actor_rollout_ref.actor.use_kl_loss={s.kl_coef > 0}", f"actor_rollout_ref.actor.kl_loss_coef={s.kl_coef}",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl", f"actor_rollout_ref.actor.entropy_coeff={s.entropy_coeff}",
        f"+actor_rollout_ref.actor.grace_contrastive_coef={s.contrastive_coef}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={s.prompts * s.rollouts}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={mini_batch * s.rollouts}",
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=False",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"+actor_rollout_ref.rollout.seed={s.seed}",
        f"actor_rollout_ref.rollout.n={s.rollouts}", f"actor_rollout_ref.rollout.temperature={s.temperature}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={s.prompts * s.rollouts}",
        "reward_model.reward_manager=hidden", "+reward_model.reward_kwargs.temperature=0.1",
        f"+reward_model.reward_kwargs.variant={s.variant}",
        f"+reward_model.reward_kwargs.pooling_span={s.pooling_span}",
        f"+reward_model.reward_kwargs.share_log_prob_forward={s.share_log_prob_forward}",
        "+reward_model.reward_kwargs.enable_length_penalty=False",
        "trainer.logger=['console']", f"trainer.n_gpus_per_node={s.n_gpus}", "trainer.nnodes=1",
        f"trainer.total_training_steps={s.steps}", f"trainer.save_freq={s.save_every or s.steps}",
        f"+trainer.save_minutes={s.save_minutes}",
        "trainer.max_actor_ckpt_to_keep=1", f"trainer.test_freq={s.val_every if s.val_every > 0 else -1}",
        f"trainer.val_before_train={s.val_every > 0}", f"trainer.default_local_dir={out}/checkpoints",
        f"+trainer.cpu_dtype={s.cpu_dtype}",
        f"+trainer.metrics_file={out}/metrics.jsonl", "trainer.project_name=GRACE", "trainer.experiment_name=demo",
        "ray_init.num_cpus=2" if on_device == "cpu" else "ray_init.num_cpus=null",
        # verl waits 300 s for its workers to register; on 2 busy cores (a study beside tests) starting them took longer
        *(["trainer.ray_wait_register_center_timeout=1800"] if on_device == "cpu" else []),
    ]


def prepare_data(data: DataConfig, out: Path, model: Path) -> Path:
    """Demo triples from the packaged Wikipedia, then the reference's process and filter commands; returns the
    folder of the filtered train/test parquet files. The test split (the fixed validation prompts) holds
    `data.val_size` triples before the length filter."""
    python = sys.executable
    raw, folder = out / "raw", out / "data"
    run([python, "-m", "grace.data.demo", "--out", str(raw), "--max_triples", str(data.train_triples),
         "--max_sentences", "100", "--max_chars", str(data.max_chars)], "demo_data", out)
    test_ratio = (data.val_size + 0.5) / data.train_triples  # process_data keeps int(rows * ratio) for test
    run([python, "process_data.py", "--mode", "supervised", "--input_file", str(raw / "echo_demo.jsonl"),
         "--local_dir", str(folder / "supervised"), "--test_ratio", f"{test_ratio:.6f}"], "process_data", out)
    run([python, "offline_filter_data.py", "--train_parquet", str(folder / "supervised/train.parquet"),
         "--val_parquet", str(folder / "supervised/test.parquet"), "--out_dir", str(folder / "filtered"),
         "--tokenizer_path", str(model), "--max_len", str(data.max_prompt)], "filter_data", out)
    return folder / "filtered"


def train(settings: TrainingSettings, max_prompt: int, data: Path, model: Path, out: Path, on_device: str,
          label: str = "train") -> list[dict]:
    """`python -m grace.train` with the run's overrides (resuming from OUT/checkpoints when present); returns the
    step metrics."""
    metrics_path = out / "metrics.jsonl"
    run([sys.executable, "-m", "grace.train", *train_overrides(settings, max_prompt, data, model, out, on_device)],
        "train", out, env={"WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"},
        on_line=StepProgress(metrics_path, settings.steps, label))
    return read_metrics(metrics_path)


def merge(out: Path, model: Path) -> Path:
    """The latest checkpoint under OUT/checkpoints as a Hugging Face folder OUT/trained_model."""
    trained = out / "trained_model"
    run([sys.executable, "scripts/merge_model.py", "merge", "--backend", "fsdp", "--local_dir",
         str(out / "checkpoints"), "--target_dir", str(trained), "--hf_model_path", str(model)], "merge", out)
    return trained
