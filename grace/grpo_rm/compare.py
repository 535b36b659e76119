"""The comparison: frozen encoder, CE fine-tuning, GRPO-RM accuracy-only and GRPO-RM with each uniformity option.

    python -m grace.grpo_rm.compare --output grpo_rm_out            # the packaged MiniLM on Wikipedia topics
    python -m grace.grpo_rm.compare --data digits --output grpo_rm_digits
    python -m grace.grpo_rm.compare --steps 300 --score-at 25 50 100 --output grpo_rm_convergence
    python -m grace.grpo_rm.compare --imbalance 10 --output grpo_rm_imbalance10
    python -m grace.grpo_rm.compare --shift-data wiki-descriptions --output grpo_rm_shift

Fairness: every arm starts from the same encoder and head (seeded), sees the same batches in the same order, and
takes the same steps, batch size and max length. Each trained arm picks its encoder learning rate from the same
grid by its head accuracy on the dev split, in runs with a selection seed that no test score counts; the test split
is never used for a choice. At the chosen rate each arm then runs every seed. Test scores (head accuracy,
softmax-regression probe, kNN) are mean +- std over the seeds; the out-of-distribution probe refits SR and kNN on
another corpus's embeddings. With `--score-at`, every step count is a budget of its own: the rate is chosen on the
dev accuracy at that step (the same selection runs), and the test is scored at that step of the runs at that
rate (training has no schedule, so step 25 of a 300-step run is a 25-step run). With `--imbalance R` the training
split is long-tailed (dev and test stay balanced) and the report adds per-class accuracies, the tail half of the
classes apart; with `--shift-data` the trained head and probes are also scored on the test items in another text
domain with the same labels.

Every run writes OUTPUT/runs/<arm>/lr<lr>/seed<seed>/result.json and is skipped when re-run, so an interrupted
comparison resumes. The report (OUTPUT/report.md, results.json, accuracy.png) is rebuilt from those files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from grace.grpo_rm.loop import TrainConfig
from grace.grpo_rm.run import RunSettings, load_splits, run

# name -> the arm's TrainConfig fields; the frozen arm (None) trains nothing
ARMS = {
    "frozen": None,
    "ce": {"objective": "ce", "uniformity": "none"},
    "grpo_rm_accuracy": {"uniformity": "none"},
    "grpo_rm_prob": {"uniformity": "prob"},
    "grpo_rm_complement": {"uniformity": "complement"},
    "grpo_rm_prototype": {"uniformity": "prototype"},
    # the output group and the clip, each one change from grpo_rm_prob (run when named in --arms)
    "grpo_rm_prob_sampled4": {"uniformity": "prob", "group_size": 4},
    "grpo_rm_prob_policy_weighted": {"uniformity": "prob", "policy_weighted": True},
    "grpo_rm_prob_dual_clip3": {"uniformity": "prob", "dual_clip": 3.0},
}
DEFAULT_ARMS = ["frozen", "ce", "grpo_rm_accuracy", "grpo_rm_prob", "grpo_rm_complement", "grpo_rm_prototype"]
SCORES = ("head", "sr", "knn_majority", "knn_weighted")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="wiki-topics", help="wiki-topics, digits, sentiment or a labelled file")
    p.add_argument("--encoder", default=None, help="minilm, digits-cnn or an encoder folder (default by --data)")
    p.add_argument("--ood-data", default=None,
                   help="second labelled corpus for the out-of-distribution probe (default: sentiment for text)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS,
                   help=f"arms to run (default: {' '.join(DEFAULT_ARMS)})")
    p.add_argument("--lr-grid", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4],
                   help="encoder learning rates each trained arm chooses from on the dev split")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the test scores")
    p.add_argument("--selection-seed", type=int, default=100,
                   help="seed of the learning-rate selection runs (dev only; never among the test seeds)")
    p.add_argument("--steps", type=int, default=100, help="training batches per run")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per batch")
    p.add_argument("--head", choices=("linear", "cosine"), default="cosine",
                   help="head of every arm (cosine: MiniLM ends in a Normalize layer, so a linear head's logits start "
                        "near 0 and stay small at head lr 1e-3)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="head learning rate of every arm")
    p.add_argument("--inner-updates", type=int, default=2, help="mu of the GRPO-RM arms")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text")
    p.add_argument("--train-per-class", type=int, default=150, help="training examples per class")
    p.add_argument("--dev-per-class", type=int, default=20, help="dev examples per class (lr selection)")
    p.add_argument("--test-per-class", type=int, default=50, help="test examples per class")
    p.add_argument("--evaluate-every", type=int, default=25, help="dev head accuracy every N steps (the curves)")
    p.add_argument("--score-at", type=int, nargs="*", default=[],
                   help="earlier step counts scored as budgets of their own (multiples of --evaluate-every)")
    p.add_argument("--imbalance", type=float, default=1.0,
                   help="long-tailed training split: ratio of the largest class to the smallest (1: balanced)")
    p.add_argument("--shift-data", default=None,
                   help="the test items in another text domain with the same labels (wiki-descriptions)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--output", default="grpo_rm_out", help="output folder (runs/ and the report)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the finished runs")
    return p


def run_folder(output: Path, arm: str, lr: float | None, seed: int) -> Path:
    return output / "runs" / arm / ("frozen" if lr is None else f"lr{lr:g}") / f"seed{seed}"


def _load(folder: Path) -> dict | None:
    path = folder / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def ensure_run(output: Path, arm: str, lr: float | None, seed: int, settings: RunSettings, args, splits) -> dict:
    folder = run_folder(output, arm, lr, seed)
    done = _load(folder)
    if done is not None:
        return done
    fields = ARMS[arm] or ARMS["ce"]  # frozen: CE's config, never trained
    config = TrainConfig(**fields, steps=args.steps, batch_size=args.batch_size,
                         encoder_lr=lr if lr is not None else 0.0, head_lr=args.head_lr,
                         inner_updates=args.inner_updates, seed=seed)
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {arm} lr={lr} seed={seed} ...", flush=True)
    result = run(settings, config, folder, frozen=ARMS[arm] is None, splits=splits)
    print(f"    done in {time.perf_counter() - started:.0f} s: dev head {result['dev'].get('head', float('nan')):.3f}, "
          f"test SR {result['test']['sr']:.3f}, kNN {result['test']['knn_weighted']:.3f}", flush=True)
    return result


def dev_head_at(result: dict, step: int | None = None) -> float:
    """A run's dev head accuracy after `step` steps (None: at its end)."""
    if step is None or step == result["config"]["steps"]:
        return result["dev"]["head"]
    for at, value in result["dev_curve"]:
        if at == step:
            return value
    raise KeyError(f"no dev accuracy at step {step}: the run evaluated at {[at for at, _ in result['dev_curve']]}")


def choose_lr(results_by_lr: dict[float, dict], step: int | None = None) -> float:
    """The learning rate with the best dev head accuracy after `step` steps (None: at the end; ties: the smaller
    rate)."""
    return max(sorted(results_by_lr), key=lambda lr: (dev_head_at(results_by_lr[lr], step), -lr))


def summarise(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def over_seeds(results: list[dict], step: int | None = None) -> dict:
    """Test (and shifted test) accuracies as mean and std over the runs, at their end or after `step` steps, with
    the mean per-class test accuracies."""
    blocks = [r if step is None else r["test_at"][str(step)] for r in results]
    entry = {"test": {score: summarise([b["test"][score] for b in blocks]) for score in SCORES
                      if score in blocks[0]["test"]}}
    if "shift" in blocks[0]:
        entry["shift"] = {score: summarise([b["shift"][score] for b in blocks]) for score in blocks[0]["shift"]}
    if "test_per_class" in blocks[0]:
        entry["test_per_class"] = {name: np.mean([b["test_per_class"][name] for b in blocks], axis=0).tolist()
                                   for name in blocks[0]["test_per_class"]}
    return entry


def collect(output: Path, arms: list[str], lr_grid: list[float], seeds: list[int], selection_seed: int,
            score_at: list[int] = ()) -> dict:
    """results.json's content, from the finished runs only (missing runs are listed, not guessed)."""
    summary = {"arms": {}, "missing": []}
    for arm in arms:
        if ARMS[arm] is None:  # deterministic: one run, nothing to choose
            selection_runs = {None: _load(run_folder(output, arm, None, seeds[0]))}
            choose_seed, test_seeds = seeds[0], seeds[:1]
        else:
            selection_runs = {lr: _load(run_folder(output, arm, lr, selection_seed)) for lr in lr_grid}
            choose_seed, test_seeds = selection_seed, seeds
        selection = {lr: r for lr, r in selection_runs.items() if r is not None}
        summary["missing"] += [str(run_folder(output, arm, lr, choose_seed)) for lr in selection_runs
                               if lr not in selection]
        if not selection or len(selection) < len(selection_runs):  # a choice among part of the grid is none
            continue
        chosen = None if None in selection else choose_lr(selection)
        runs = {seed: _load(run_folder(output, arm, chosen, seed)) for seed in test_seeds}
        summary["missing"] += [str(run_folder(output, arm, chosen, s)) for s, r in runs.items() if r is None]
        finished = [r for r in runs.values() if r is not None]
        if not finished:
            continue
        entry = {
            "chosen_lr": chosen,
            "dev_grid": {str(lr): r["dev"].get("head") for lr, r in selection.items()},
            "seeds": len(finished),
            "seconds_per_step": summarise([r["seconds_per_step"] for r in finished]) if chosen is not None else None,
            **over_seeds(finished),
            "dev_curves": [r["dev_curve"] for r in finished],
            "train_accuracy": [r["train_accuracy"] for r in finished],
            "classes": finished[0]["classes"],
            "train_class_counts": finished[0].get("train_class_counts"),
            "budgets": {},
        }
        for step in score_at:  # each budget at the rate its own dev accuracy chose, from that rate's runs
            if chosen is None:  # the frozen encoder scores the same at every budget
                entry["budgets"][str(step)] = {"chosen_lr": None, "seeds": len(finished), **over_seeds(finished)}
                continue
            at_lr = choose_lr(selection, step)
            folders = [run_folder(output, arm, at_lr, seed) for seed in test_seeds]
            loaded = {str(folder): _load(folder) for folder in folders}
            runs_at = [r for r in loaded.values() if r is not None]
            summary["missing"] += [f for f, r in loaded.items() if r is None and f not in summary["missing"]]
            if runs_at:
                entry["budgets"][str(step)] = {"chosen_lr": at_lr, "seeds": len(runs_at), **over_seeds(runs_at, step)}
        if "ood" in finished[0]:
            entry["ood"] = {score: summarise([r["ood"][score] for r in finished]) for score in finished[0]["ood"]}
        entry["sizes"] = finished[0]["sizes"]
        summary["arms"][arm] = entry
    return summary


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "–"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def plot(summary: dict, path: Path, smoothing: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (dev_axis, train_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, entry in summary["arms"].items():
        if entry["chosen_lr"] is None:
            continue
        curves = [c for c in entry["dev_curves"] if c]
        if curves:
            steps = [s for s, _ in curves[0]]
            values = np.array([[v for _, v in c] for c in curves if len(c) == len(steps)])
            dev_axis.errorbar(steps, 100 * values.mean(0), yerr=100 * values.std(0), label=arm, capsize=2)
        train = np.array([t for t in entry["train_accuracy"] if len(t) == len(entry["train_accuracy"][0])])
        window = min(smoothing, train.shape[1])
        smoothed = np.array([np.convolve(t, np.ones(window) / window, mode="valid") for t in train])
        train_axis.plot(np.arange(window, train.shape[1] + 1), 100 * smoothed.mean(0), label=arm)
    dev_axis.set(xlabel="step", ylabel="dev head accuracy (%)", title="dev accuracy (mean ± std over seeds)")
    train_axis.set(xlabel="step", ylabel="batch accuracy before the update (%)",
                   title=f"training accuracy ({smoothing}-step moving average)")
    for axis in (dev_axis, train_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_convergence(summary: dict, path: Path) -> None:
    """Test head accuracy (SR for the frozen arm) against the step budget, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [*summary["settings"]["score_at"], summary["steps"]]
    fig, axis = plt.subplots(figsize=(6.5, 4.5))
    for arm, entry in summary["arms"].items():
        score = "sr" if entry["chosen_lr"] is None else "head"
        cells = [at_budget(summary, entry, b) for b in budgets]
        shown = [(b, c["test"][score]) for b, c in zip(budgets, cells) if c is not None]
        axis.errorbar([b for b, _ in shown], [100 * t["mean"] for _, t in shown],
                      yerr=[100 * t["std"] for _, t in shown], label=f"{arm} ({score})", capsize=2, marker="o")
    axis.set(xscale="log", xlabel="training steps (the budget; lr chosen on dev at each)", ylabel="test accuracy (%)",
             title="accuracy by budget (mean ± std over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def at_budget(summary: dict, entry: dict, budget: int) -> dict | None:
    """An arm's scores after `budget` steps: its own at the last step, else the budget's (None when not run)."""
    return entry if budget == summary["steps"] else entry["budgets"].get(str(budget))


def tail_classes(counts: list[int]) -> list[int]:
    """The half of the classes (rounded down) with the fewest training examples (ties: the lower index)."""
    return sorted(range(len(counts)), key=lambda c: (counts[c], c))[:len(counts) // 2]


def convergence_lines(summary: dict) -> list[str]:
    budgets = [*summary["settings"]["score_at"], summary["steps"]]
    lines = ["## Accuracy by budget (test head accuracy / SR %, mean ± std over seeds; encoder lr chosen on dev at "
             "each budget)", "", "| arm | " + " | ".join(f"{b} steps" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for arm, entry in summary["arms"].items():
        cells = []
        for budget in budgets:
            cell = at_budget(summary, entry, budget)
            if cell is None:
                cells.append("–")
                continue
            lr = "" if entry["chosen_lr"] is None else f" (lr {cell['chosen_lr']:g})"
            cells.append(f"{_cell(cell['test'].get('head'))} / {_cell(cell['test']['sr'])}{lr}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines + ["", "![accuracy by budget](convergence.png)", ""]


def imbalance_lines(summary: dict) -> list[str]:
    arms = summary["arms"]
    first = next(iter(arms.values()))
    counts, classes = first["train_class_counts"], first["classes"]
    tail = tail_classes(counts)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    lines = [f"## Per class (long-tailed training split, ratio {summary['settings']['imbalance']:g}; balanced test)",
             "", "Training examples per class: " + ", ".join(f"{classes[c]} {counts[c]}" for c in order) + ". Tail: "
             f"the {len(tail)} classes with the fewest ({', '.join(classes[c] for c in tail)}). Mean test accuracy "
             "per class (the balanced test makes the overall accuracy their mean), over seeds, in %:", "",
             "| arm | head: all | head: tail | SR: all | SR: tail | " +
             " | ".join(classes[c] for c in order) + " (head; SR when frozen) |",
             "|---|---|---|---|---|" + "---|" * len(order)]
    for arm, entry in arms.items():
        per_class = entry["test_per_class"]
        tails = {name: f"{100 * np.mean([per_class[name][c] for c in tail]):.1f}" if name in per_class else "–"
                 for name in ("head", "sr")}
        shown = per_class.get("head", per_class["sr"])
        lines.append(f"| {arm} | {_cell(entry['test'].get('head'))} | {tails['head']} | {_cell(entry['test']['sr'])} "
                     f"| {tails['sr']} | " + " | ".join(f"{100 * shown[c]:.0f}" for c in order) + " |")
    return lines + [""]


def verdict(arms: dict) -> str:
    """A plain sentence: the best GRPO-RM arm against CE per score, called a difference only when the means are
    further apart than the two seed standard deviations together."""
    grpo = {arm: e for arm, e in arms.items() if arm.startswith("grpo_rm")}
    if "ce" not in arms or not grpo:
        return "The comparison needs the CE arm and at least one GRPO-RM arm."
    sentences = []
    for score in ("head", "sr", "knn_weighted"):
        best = max(grpo, key=lambda arm: grpo[arm]["test"][score]["mean"])
        ours, theirs = grpo[best]["test"][score], arms["ce"]["test"][score]
        gap = ours["mean"] - theirs["mean"]
        if abs(gap) <= ours["std"] + theirs["std"]:
            word = "is indistinguishable from"
        else:
            word = "beats" if gap > 0 else "is below"
        sentences.append(f"on {score}, the best GRPO-RM arm ({best}, {_cell(ours)}) {word} CE ({_cell(theirs)})")
    return ("Result: " + "; ".join(sentences) + ". (A difference is called only when the means are further apart "
            "than the two seed standard deviations added.)")


def write_report(summary: dict, output: Path, command: str, machine: str) -> None:
    arms = summary["arms"]
    sizes = next(iter(arms.values()))["sizes"] if arms else {}
    shifted = any("shift" in entry for entry in arms.values())
    lines = [f"# GRPO-RM against standard fine-tuning: {summary['data']}", "",
             f"Command: `{command}`", "", f"Machine: {machine}", "",
             f"Splits (stratified, fixed seed): {sizes}. Scores are test accuracies in %, mean ± std over "
             f"{summary['seeds']} seeds (sample std); the frozen arm is deterministic (one run). Each trained arm's "
             f"encoder lr was chosen from {summary['lr_grid']} on the dev head accuracy of runs with seed "
             f"{summary['selection_seed']}, which no test score counts.",
             "", "| arm | encoder lr | head | SR | kNN majority | kNN weighted | OOD SR | OOD kNN weighted | s/step |"
             + (" shifted: head | shifted: SR | shifted: kNN weighted |" if shifted else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if shifted else "")]
    for arm, entry in arms.items():
        test, ood, shift = entry["test"], entry.get("ood", {}), entry.get("shift", {})
        seconds = f"{entry['seconds_per_step']['mean']:.3g}" if entry["seconds_per_step"] else "–"
        lines.append(f"| {arm} | {entry['chosen_lr'] if entry['chosen_lr'] is not None else 'frozen'} | "
                     f"{_cell(test.get('head'))} | {_cell(test['sr'])} | {_cell(test['knn_majority'])} | "
                     f"{_cell(test['knn_weighted'])} | {_cell(ood.get('sr'))} | {_cell(ood.get('knn_weighted'))} | "
                     f"{seconds} |" + (f" {_cell(shift.get('head'))} | {_cell(shift.get('sr'))} | "
                                       f"{_cell(shift.get('knn_weighted'))} |" if shifted else ""))
    if shifted:
        lines += ["", f"Shifted: the test items as {summary['settings']['shift_data']} (the same labels in another "
                  "text domain); the trained head as it is, SR and kNN fitted on the training split's embeddings."]
    lines += ["", verdict(arms), "",
              f"## Learning-rate selection (dev head accuracy %, seed {summary['selection_seed']}): every run", "",
              "| arm | " + " | ".join(f"lr {lr:g}" for lr in summary["lr_grid"]) + " |",
              "|---|" + "---|" * len(summary["lr_grid"])]
    for arm, entry in arms.items():
        if entry["chosen_lr"] is None:
            continue
        cells = [entry["dev_grid"].get(str(lr)) for lr in summary["lr_grid"]]
        lines.append(f"| {arm} | " + " | ".join("–" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    if arms and summary["settings"]["score_at"]:
        lines += [""] + convergence_lines(summary)
    if arms and summary["settings"]["imbalance"] != 1:
        lines += [""] + imbalance_lines(summary)
    if summary["missing"]:
        lines += ["", f"**Unfinished runs ({len(summary['missing'])})**: " + ", ".join(summary["missing"])]
    lines += ["", "![accuracy curves](accuracy.png)", ""]
    (output / "report.md").write_text("\n".join(lines))


def main(argv=None) -> dict:
    import shlex
    import sys

    from grace.study.report import machine_description

    args = build_parser().parse_args(argv)
    if args.selection_seed in args.seeds:
        raise SystemExit(f"--selection-seed {args.selection_seed} is among the test --seeds {args.seeds}: the seed "
                         "that chooses the learning rate must not be counted in the test scores")
    text_data = args.data != "digits"
    settings = RunSettings(data=args.data, encoder=args.encoder or ("minilm" if text_data else "digits-cnn"),
                           head=args.head, max_length=args.max_length, dev_per_class=args.dev_per_class,
                           test_per_class=args.test_per_class, train_per_class=args.train_per_class,
                           ood_data=args.ood_data or ("sentiment" if text_data else None),
                           imbalance=args.imbalance, shift_data=args.shift_data, score_at=tuple(args.score_at),
                           evaluate_every=args.evaluate_every, device=args.device)
    output = Path(args.output)
    if not args.report_only:
        splits = load_splits(settings)
        for arm in args.arms:
            if ARMS[arm] is None:
                ensure_run(output, arm, None, args.seeds[0], settings, args, splits)
                continue
            by_lr = {lr: ensure_run(output, arm, lr, args.selection_seed, settings, args, splits)
                     for lr in args.lr_grid}
            for chosen in dict.fromkeys(choose_lr(by_lr, step) for step in [args.steps, *args.score_at]):
                for seed in args.seeds:
                    ensure_run(output, arm, chosen, seed, settings, args, splits)
    summary = collect(output, args.arms, args.lr_grid, args.seeds, args.selection_seed, args.score_at)
    summary.update(data=args.data, settings=settings.to_dict(), lr_grid=args.lr_grid, seeds=args.seeds,
                   selection_seed=args.selection_seed, steps=args.steps, batch_size=args.batch_size)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(summary, indent=1))
    run_args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "python -m grace.grpo_rm.compare " + " ".join(shlex.quote(a) for a in run_args)
    write_report(summary, output, command.strip(), machine_description())
    plot(summary, output / "accuracy.png")
    if summary["arms"] and args.score_at:
        plot_convergence(summary, output / "convergence.png")
    print(f"wrote {output}/report.md, results.json and plots")
    return summary


if __name__ == "__main__":
    main()
