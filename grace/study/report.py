"""A study's report.md and plots, from its results.json alone (so a report can be rebuilt without re-running)."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path

from grace.study.config import TRAINED_KINDS, StudyConfig
from grace.study.heldout import GENERATIVE_TASK, MTEB_AVERAGE
from grace.study.mteb_offline import MTEB_OFFLINE_TASKS
from grace.study.runner import BEST_BASE
from grace.study.stats import trend_verdict


def machine_description() -> str:
    """CPU model, cores, native bf16 and torch version: the context every timing needs."""
    import torch

    from grace.verl_ext.cpu_compat import cpu_has_native_bf16

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     platform.processor() or "unknown CPU")
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown CPU"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{model}, {torch.get_num_threads()} torch threads, native bf16: "
            f"{'yes' if cpu_has_native_bf16() else 'no'}; {gpu}; torch {torch.__version__}")


def _interval(values: dict) -> str:
    return f"{values['diff']:+.1f} [{values['ci_low']:+.1f}, {values['ci_high']:+.1f}]"


def _verdict(values: dict) -> str:
    if values["ci_low"] > 0:
        return "better"
    if values["ci_high"] < 0:
        return "worse"
    return "no difference shown"


def _task_names(results: dict) -> list[str]:
    return list(dict.fromkeys(task for arm in results["arms"].values() for task in arm["tasks"]))


def plot_validation(results: dict, path: Path) -> bool:
    curves = {name: arm["validation_reward"] for name, arm in results["arms"].items()
              if arm.get("validation_reward", {}).get("at_steps")}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, curve in curves.items():
        # Each arm is validated with its own reward variant, whose scales differ: the legend says which.
        label = f"{name} ({results['arms'][name]['settings']['variant']} reward)"
        if not math.isnan(curve["slope"]):
            label += f": {curve['slope']:+.4f} ± {curve['se']:.4f}/step"
        axis.plot(curve["at_steps"], curve["values"], marker="o", label=label)
    axis.set_xlabel("training step")
    axis.set_ylabel("GRACE reward of the arm's variant,\nfixed validation prompts")
    axis.set_title("Validation reward (greedy rationales) per GRACE arm")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_scores(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, arms = _task_names(results), list(results["arms"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        names = [a for a in arms if task in results["arms"][a]["tasks"]]
        rows = [results["arms"][a]["tasks"][task] for a in names]
        scores = [r["score"] for r in rows]
        errors = [[s - r["score_ci"][0] for s, r in zip(scores, rows)],
                  [r["score_ci"][1] - s for s, r in zip(scores, rows)]]
        axis.bar(range(len(names)), scores, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_title(f"{task} ({rows[0]['metric']}, n={rows[0]['n']})", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Held-out scores per arm (bars: 95% bootstrap intervals)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def tradeoff_tasks(results: dict) -> list[str]:
    """The embedding scores read against forgetting: the MTEB-offline average and every task outside it (retrieval,
    Lee), scored for at least one arm with a perplexity."""
    arms = [arm for arm in results["arms"].values() if arm.get("perplexity") is not None]
    tasks = list(dict.fromkeys(task for arm in arms for task in arm["tasks"]))
    return [task for task in tasks if task not in MTEB_OFFLINE_TASKS and task != GENERATIVE_TASK]


def plot_tradeoff(results: dict, path: Path) -> bool:
    """Embedding quality against forgetting (the paper's Table 1 against its Table 5): per task, each arm with a
    perplexity as a point at (perplexity, score) with its score interval; the base model's perplexity and +2% of it
    (issue 31's retention bound) as vertical lines. False when no arm has both."""
    tasks = tradeoff_tasks(results)
    bases = [arm["perplexity"] for arm in results["arms"].values()
             if arm["kind"] == "base" and arm.get("perplexity") is not None]
    if not tasks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"base": "tab:gray", "contrastive": "tab:orange", "grace": "tab:blue"}
    # Points are numbered and named in a key beside the panels: a dozen arm names written at their points overlap.
    numbered = [name for name, arm in results["arms"].items() if arm.get("perplexity") is not None]
    figure, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks) + 3, 5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for number, name in enumerate(numbered, 1):
            arm = results["arms"][name]
            if task not in arm["tasks"]:
                continue
            values = arm["tasks"][task]
            low, high = values["score_ci"]
            axis.errorbar(arm["perplexity"], values["score"], yerr=[[values["score"] - low], [high - values["score"]]],
                          fmt="o", capsize=3, color=colours.get(arm["kind"], "tab:green"))
            # Arms that forget alike sit on one vertical: alternate their numbers above and below the point.
            axis.annotate(str(number), (arm["perplexity"], values["score"]), fontsize=8,
                          xytext=(4, 2 if number % 2 else -10), textcoords="offset points")
        if bases:
            axis.axvline(bases[0], color="tab:gray", linestyle=":", label=f"base perplexity {bases[0]:.2f}")
            axis.axvline(bases[0] * 1.02, color="tab:red", linestyle="--", label="base +2%")
            axis.legend(fontsize=8, loc="lower right")
        axis.set_xlabel("held-out perplexity (lower: more of the generative model kept)")
        axis.set_ylabel(f"{task} score x 100 (95% interval)")
        axis.set_title(task, fontsize=10)
        axis.grid(alpha=0.3)
    figure.suptitle("Embedding quality against forgetting (grey: base, orange: contrastive, blue: GRACE)")
    key_left = 1 - 3 / figure.get_figwidth()
    figure.tight_layout(rect=(0, 0, key_left, 1))
    figure.text(key_left + 0.01, 0.5, "\n".join(f"{number:>2}  {name}" for number, name in enumerate(numbered, 1)),
                va="center", fontsize=8, family="monospace")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _arm_details(name: str, arm: dict) -> list[str]:
    embedding = "rationale" if arm["rationale"] else "prompt only"
    lines = [f"### {name}", "", f"- kind: {arm['kind']}; embedding: {embedding}"
             f", pooling span {arm['pooling_span']}"]
    if arm.get("model_from"):
        lines.append(f"- no training of its own: the trained model of {arm['model_from']} (seed for seed), "
                     "evaluated its own way")
    if arm.get("settings"):
        lines.append(f"- settings: `{json.dumps(arm['settings'], sort_keys=True)}`")
    if arm.get("evaluation"):
        lines.append(f"- rationale generation (over the study's): `{json.dumps(arm['evaluation'], sort_keys=True)}`")
    training = arm.get("training", {})
    if "loss_before" in training:
        lines.append(f"- contrastive loss on its training triples: {training['loss_before']:.4f} -> "
                     f"{training['loss_after']:.4f} ({training['optimizer_steps']} optimizer steps)")
    if "grace/total" in training and training["grace/total"]:
        def first_last(key):
            values = [v for v in training.get(key, []) if v is not None]
            return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "n/a"

        def mean(key):
            values = [v for v in training.get(key, []) if v is not None]
            return f"{sum(values) / len(values):.3f}" if values else "n/a"

        lines.append(f"- training steps: {len(training['grace/total'])}; train reward {first_last('grace/total')}; "
                     f"mean within-group reward std {mean('grace/group_reward_std')}; mean fraction of flat groups "
                     f"{mean('grace/group_all_equal')}; entropy {first_last('actor/entropy')}; response length "
                     f"{first_last('response_length/mean')}")
    validation = arm.get("validation_reward")
    if validation and validation["steps"]:
        points = ", ".join(f"{s}: {v:+.3f}" for s, v in zip(validation["at_steps"], validation["values"]))
        lines.append(f"- validation reward at steps {points}; slope {validation['slope']:+.4f} ± {validation['se']:.4f}"
                     f": {trend_verdict(validation['slope'], validation['se'])}")
    for task, values in arm["tasks"].items():
        extra = ", ".join(f"{k} {v:.2f}" for k, v in values.items()
                          if k not in ("metric", "score", "n", "score_ci") and isinstance(v, float))
        if extra:
            lines.append(f"- {task}: {extra}")
    diversity = arm.get("rationale_diversity")
    if diversity:
        lines.append(f"- held-out rationales: {diversity['texts']}, {diversity['distinct_percent']:.1f}% distinct, the "
                     f"most common {diversity['most_common_percent']:.1f}%, "
                     f"{diversity['looping_percent']:.1f}% looping")
    lines.append(f"- wall time: training {arm.get('train_seconds', 0):.0f} s, evaluation {arm['eval_seconds']:.0f} s")
    for run, scores in arm.get("runs", {}).items():
        tasks = ", ".join(f"{task} {score:.1f}" for task, score in scores["tasks"].items())
        lines.append(f"- {run} (training seed {scores['seed']}): {tasks}; perplexity {scores['perplexity']:.2f}")
    if "units_lost" in arm:
        lines.append(f"- per-item scores lost: {arm['units_lost']}")
    if "tasks_not_in_every_run" in arm:
        lines.append(f"- scored on some of its runs only, so left out of its means (each run's own score above): "
                     f"{', '.join(arm['tasks_not_in_every_run'])}")
    return lines + [""]


def results_table(results: dict) -> list[str]:
    """Markdown lines: per arm, each task's score with its interval and the paired difference against the study's
    reference, perplexity, validation slope and wall times; then what the metrics are."""
    tasks, compare = _task_names(results), results["compare_to"]
    key = f"vs_{compare}"
    header = ["arm"]
    for task in tasks:
        header += [f"{task} ", f"Δ vs {compare}"]
    header += ["perplexity", "KL to base", "distinct / looping rationales %", "validation slope ± SE", "train s",
               "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, arm in results["arms"].items():
        cells = [name]
        for task in tasks:
            values = arm["tasks"].get(task)
            if values is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{values['score']:.1f} [{values['score_ci'][0]:.1f}, {values['score_ci'][1]:.1f}]")
            cells.append(_interval(values[key]) if key in values else "(reference)" if name == compare else "-")
        validation = arm.get("validation_reward")
        cells.append(f"{arm['perplexity']:.2f}" if "perplexity" in arm else "-")
        cells.append(f"{arm['kl_to_base']:.4f}" if "kl_to_base" in arm else "-")
        diversity = arm.get("rationale_diversity")
        cells.append(f"{diversity['distinct_percent']:.1f} / {diversity['looping_percent']:.1f}" if diversity else "-")
        cells.append(f"{validation['slope']:+.4f} ± {validation['se']:.4f}" if validation and validation["steps"] >= 3
                     else "-")
        cells += [f"{arm.get('train_seconds', 0):.0f}", f"{arm['eval_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first_arm = next(iter(results["arms"].values()), None)
    if first_arm:
        lines += ["", "Metrics: " + "; ".join(f"{task}: {values['metric']}"
                                             + (f" ({values['n']} tasks)" if task == MTEB_AVERAGE else
                                                f" x 100, n = {values['n']}")
                                             for task, values in first_arm["tasks"].items())
                  + (f"; {GENERATIVE_TASK} asks which of 4 short descriptions fits a held-out extract, answered by "
                     "the model's likelihood (`grace.study.generative`, chance 25%)"
                     if any(GENERATIVE_TASK in arm["tasks"] for arm in results["arms"].values()) else "")
                  + "; perplexity: held-out Wikipedia extracts (generative retention); KL to base: mean "
                  "KL(trained || base) in nats per token over the arm's own rationales of held-out documents "
                  "(`grace.study.drift`); distinct / looping rationales: the share of the arm's greedy rationales "
                  "of every held-out text that are distinct, and that loop on a 4-token sequence "
                  "(`grace.study.diversity`)."]
    return lines


def tasks_by_arm(results: dict) -> list[str]:
    """Markdown lines: a row per task (and perplexity), a column per arm: the score with its 95% interval; a seeded
    arm's column says over how many seeds (the paper's Table 1 laid out the same way)."""
    arms = results["arms"]
    header = ["task"] + [f"{name} ({len(arm['runs'])} seeds)" if "runs" in arm else name for name, arm in arms.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in _task_names(results):
        cells = [task]
        for arm in arms.values():
            values = arm["tasks"].get(task)
            cells.append("-" if values is None else
                         f"{values['score']:.1f} [{values['score_ci'][0]:.1f}, {values['score_ci'][1]:.1f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| perplexity | " + " | ".join(f"{arm['perplexity']:.2f}" if "perplexity" in arm else "-"
                                               for arm in arms.values()) + " |")
    return lines


def comparisons_made(results: dict) -> list[str]:
    """The primary comparison, as named before the study ran, and how many paired comparisons the report makes."""
    count = sum(key.startswith("vs_") for arm in results["arms"].values() for values in arm["tasks"].values()
                for key in values)
    primary = results.get("primary")
    return [f"Primary comparison (named in the configuration before the study ran): {primary}." if primary else
            "No primary comparison was named before the study ran: read every difference as exploratory.",
            f"This report makes {count} paired comparisons (each arm against its references and the strongest base, "
            f"per task); at 95% each, about {count / 20:.0f} would show a difference by chance alone."]


def in_words(results: dict) -> list[str]:
    """One line per paired comparison with a named arm: better, worse, or no difference shown, with the interval."""
    return [f"- {name} vs {comparison[3:]} on {task}: {_verdict(values[comparison])} "
            f"({values['metric']} {_interval(values[comparison])})."
            for name, arm in results["arms"].items() for task, values in arm["tasks"].items()
            for comparison in values if comparison.startswith("vs_") and comparison != BEST_BASE]


def describe_base(arm: dict) -> str:
    if not arm["rationale"]:
        return "the base model without a rationale"
    span = "the rationale alone" if arm["pooling_span"] == "response" else "prompt + rationale"
    return f"the base model with a rationale pooled over {span}"


def pooled_the_same_way(results: dict, arm: dict) -> str | None:
    """The base arm that embeds as `arm` does (with or without a rationale, the same pooling span), if any."""
    return next((name for name, other in results["arms"].items() if other["kind"] == "base"
                 and other["rationale"] == arm["rationale"] and other["pooling_span"] == arm["pooling_span"]), None)


def verdict(results: dict, arm_names: list[str] | None = None) -> list[str]:
    """Plain words per trained arm and task: better, no better or worse than the strongest untrained embedding of
    the model on that task (which one it is, named; unpaired where per-item scores were lost), then, when that
    is not the base embedded the same way, how far training moved the embedding pooled the same way (the
    mechanism)."""
    arms, lines = results["arms"], []
    for name in arm_names or [n for n, arm in arms.items() if arm["kind"] in TRAINED_KINDS]:
        arm = arms[name]
        same_way = pooled_the_same_way(results, arm)
        for task, values in arm["tasks"].items():
            best = values.get(BEST_BASE)
            if task == GENERATIVE_TASK:  # generative retention, not an embedding: read beside perplexity
                if best is not None and "not_paired" not in best:
                    outcome = {"better": "better than", "worse": "worse than"}.get(_verdict(best), "no different from")
                    lines.append(f"- {name} on {task} (generative retention): {outcome} the base model "
                                 f"({best['arm']}): {values['score']:.1f} against "
                                 f"{arms[best['arm']]['tasks'][task]['score']:.1f} ({values['metric']}, paired "
                                 f"difference {_interval(best)}, n = {values['n']}).")
                continue
            if best is None:
                lines.append(f"- {name} on {task}: {values['score']:.1f}, no base model to compare with.")
                continue
            base = arms[best["arm"]]
            if "not_paired" in best:
                lines.append(f"- {name} on {task}: {values['score']:.1f} against {base['tasks'][task]['score']:.1f} "
                             f"for {describe_base(base)}, the strongest untrained embedding ({best['arm']}); not "
                             f"paired: {best['not_paired']}.")
            else:
                if best["ci_low"] > 0:
                    outcome = f"better than the strongest untrained embedding, {describe_base(base)}"
                elif best["ci_high"] < 0:
                    outcome = f"worse than {describe_base(base)}, the strongest untrained embedding"
                else:
                    outcome = f"no better than {describe_base(base)}, the strongest untrained embedding"
                lines.append(f"- {name} on {task}: {outcome} ({best['arm']}): {values['score']:.1f} against "
                             f"{base['tasks'][task]['score']:.1f} ({values['metric']}, paired difference "
                             f"{_interval(best)}, n = {values['n']}).")
            if same_way not in (None, best["arm"]) and f"vs_{same_way}" in values:
                lines.append(f"  Pooled the same way ({describe_base(arms[same_way])}, {same_way}), training moved "
                             f"it by {_interval(values[f'vs_{same_way}'])}: "
                             f"{_verdict(values[f'vs_{same_way}'])}.")
    return lines


def write_report(config: StudyConfig, results: dict, study_dir: Path, config_path: Path) -> Path:
    compare = results["compare_to"]
    lines = [f"# Study `{config.name}`", "",
             f"Reproduce: `python -m grace.study {config_path}` (the configuration is at the end of this report). "
             f"Machine: {machine_description()}.", "",
             f"Every arm is scored on the same held-out items of the **{results.get('part', 'test')}** part (never "
             f"in training data; `grace.study.heldout` says how dev and test are split); differences are against "
             f"`{compare}` (and an arm's own `compare_to`), as paired bootstrap 95% intervals "
             f"({config.evaluation.bootstrap_resamples} resamples of the queries, sentence pairs or texts; of the "
             f"documents for LeeSTS, whose pairs share them; and of the training seeds of an arm run with several). "
             f"Score columns carry their own 95% bootstrap interval.", "", *comparisons_made(results), "",
             "## Results", ""]
    lines += tasks_by_arm(results)
    lines += ["", "### Every score and difference", ""]
    lines += results_table(results)
    lines += ["", "## Did training help?", "",
              "Each trained arm against the strongest untrained embedding of the same model on each task (without a "
              "rationale, or with one pooled either way: whichever scores highest), then, pooled the same way as "
              "the arm, what training changed.", "", *(verdict(results) or ["No trained arm has finished yet."])]
    lines += ["", "## In words", ""] + in_words(results)
    if results["not_run"]:
        lines += ["", f"Arms in the configuration that have not run yet: {', '.join(results['not_run'])}."]
    if plot_validation(results, study_dir / "validation_reward.png"):
        lines += ["", "## Validation reward", "", "![validation reward](validation_reward.png)"]
    if results["arms"]:
        plot_scores(results, study_dir / "scores.png")
        lines += ["", "## Scores", "", "![scores](scores.png)"]
    if plot_tradeoff(results, study_dir / "tradeoff.png"):
        lines += ["", "## Scores against perplexity", "", "![scores against perplexity](tradeoff.png)"]
    lines += ["", "## Arms", ""]
    for name, arm in results["arms"].items():
        lines += _arm_details(name, arm)
    lines += ["## Configuration", "", "```yaml", (study_dir / "config.yaml").read_text().strip(), "```", ""]
    report = study_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
