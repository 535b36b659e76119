"""Choose tasks, evaluate a model on them one by one (timing each), and summarise the scores.

Task selection: mteb's named benchmarks (`"MTEB(eng, v1)"`: the 56 English tasks of the paper's tables, English
subsets, each task's own splits), GRACE's named sets (`subset`: the reference's 9 tasks; `ablation16`: the paper's
16-task ablation subset), task names, and the offline `local` tasks. Named tasks get English subsets only by
default (exclusive filter: STS17 keeps en-en), with each task's own evaluation splits (MSMARCO: dev), where the
reference scored every language subset and forced the test split.

Averages: scores are mteb's main scores x 100. The summary gives two overall averages and says which is which:
the mean over tasks, and the mean of the category means. The paper's Avg column matches neither (spec 6.2).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import mteb

from grace.evaluation.local_tasks import LOCAL_TASK_CLASSES, local_tasks
from grace.evaluation.offline_data import attach_offline_data

GRACE_TASK_SETS = {
    "subset": ["Banking77Classification", "EmotionClassification", "MedrxivClusteringS2S", "TwitterSemEval2015",
               "AskUbuntuDupQuestions", "BIOSSES", "STS17", "STSBenchmark", "SummEval"],
    "ablation16": ["SciFact", "ArguAna", "NFCorpus", "StackOverflowDupQuestions", "SciDocsRR",
                   "BiorxivClusteringS2S", "MedrxivClusteringS2S", "TwentyNewsgroupsClustering",
                   "SprintDuplicateQuestions", "Banking77Classification", "EmotionClassification",
                   "MassiveIntentClassification", "STS17", "SICK-R", "STSBenchmark", "SummEval"],
}
CATEGORIES = ["Retrieval", "Reranking", "Clustering", "PairClassification", "Classification", "STS",
              "Summarization"]
AVERAGING_RULE = ("mean_over_tasks: the mean of every task's main score; mean_over_categories: the mean of the "
                  "category means (categories with no task are left out). The paper's Avg column matches neither.")
# Extra numbers worth a column: accuracy@1 of a retrieval task with one relevant document.
EXTRA_METRICS = {"Retrieval": "hit_rate_at_1"}


def resolve_tasks(names: list[str] | None = None, benchmark: str | None = None, languages: list[str] | None = ("eng",),
                  local_size: int | None = None, data_folder: Path | None = None,
                  data_items: dict[str, int] | None = None, data_part: str = "test") -> list:
    """mteb task objects for the given names and/or named set; raises ValueError naming unknown tasks. With a
    `data_folder`, every mteb task reads its data from there (`grace.evaluation.offline_data`) instead of a hub;
    with `data_items` (task name, or "*" for any task -> items), only the fixed `data_part` of that many rows."""
    names = list(names or [])
    tasks = []
    if benchmark in GRACE_TASK_SETS:
        names += GRACE_TASK_SETS[benchmark]
    elif benchmark:
        try:
            tasks += list(mteb.get_benchmark(benchmark).tasks)
        except (KeyError, ValueError) as error:
            raise ValueError(f"unknown benchmark {benchmark!r}; GRACE sets: {sorted(GRACE_TASK_SETS)}, or an mteb "
                             f"benchmark such as 'MTEB(eng, v1)' ({error})") from error
    local = [n for n in names if n in LOCAL_TASK_CLASSES]
    if "local" in names:
        local = list(LOCAL_TASK_CLASSES)
    remote = [n for n in dict.fromkeys(names) if n != "local" and n not in LOCAL_TASK_CLASSES]
    unknown = []
    for name in remote:
        try:
            mteb.get_task(name)
        except (KeyError, ValueError):
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown task(s): {', '.join(unknown)}. Use mteb task names, 'local' or one of "
                         f"{sorted(LOCAL_TASK_CLASSES)}")
    if remote:
        tasks += list(mteb.get_tasks(tasks=remote, languages=list(languages) if languages else None,
                                     exclusive_language_filter=bool(languages)))
    if data_folder is not None:
        items = data_items or {}
        tasks = [attach_offline_data(task, data_folder, items.get(task.metadata.name, items.get("*")), data_part)
                 for task in tasks]
    if local:
        tasks += local_tasks(local, size=local_size)
    if not tasks:
        raise ValueError("no task selected: pass --tasks or --benchmark")
    return tasks


def evaluate_tasks(model, tasks: list, results_folder: Path | None) -> list[dict]:
    """Run mteb task by task; one row per task with its main score (x100), extra metrics and wall time."""
    cache = mteb.ResultCache(results_folder) if results_folder is not None else None
    rows = []
    for number, task in enumerate(tasks, start=1):
        name = task.metadata.name
        print(f"[{number}/{len(tasks)}] {name}")
        start = time.perf_counter()
        result = mteb.evaluate(model, task, cache=cache, overwrite_strategy="always", show_progress_bar=True)
        seconds = time.perf_counter() - start
        task_result = result.task_results[0]
        row = {"task": name, "type": task.metadata.type, "main_metric": task.metadata.main_score,
               "score": 100 * task_result.get_score(), "seconds": seconds}
        extra = EXTRA_METRICS.get(task.metadata.type)
        if extra:
            row[extra] = 100 * task_result.get_score(getter=lambda scores, key=extra: scores[key])
        rows.append(row)
        print(f"    {row['main_metric']} = {row['score']:.2f} ({seconds:.1f} s)")
    return rows


def summarize(rows: list[dict], model: str, settings: dict) -> dict:
    by_category = {c: [r["score"] for r in rows if r["type"] == c] for c in CATEGORIES}
    categories = {c: statistics.mean(v) for c, v in by_category.items() if v}
    return {
        "model": model, "settings": settings, "tasks": rows, "categories": categories,
        "task_counts": {c: len(v) for c, v in by_category.items() if v},
        "average": {"mean_over_tasks": statistics.mean(r["score"] for r in rows),
                    "mean_over_categories": statistics.mean(categories.values())},
        "averaging_rule": AVERAGING_RULE, "total_seconds": sum(r["seconds"] for r in rows),
    }


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def summary_markdown(summary: dict, other: dict | None = None) -> str:
    """A readable report; with `other`, side by side with the difference."""
    names = [summary["model"]] + ([other["model"]] if other else [])
    lines = [f"# MTEB summary: {' vs '.join(names)}", "", f"Averaging: {summary['averaging_rule']}", ""]
    compared = [other["model"], "difference"] if other else []
    header = ["task", "type", "metric", summary["model"], *compared, "time (s)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    other_rows = {r["task"]: r for r in other["tasks"]} if other else {}
    for row in summary["tasks"]:
        cells = [row["task"], row["type"], row["main_metric"], _cell(row["score"])]
        if other:
            theirs = other_rows.get(row["task"], {}).get("score")
            cells += [_cell(theirs), _cell(row["score"] - theirs) if theirs is not None else "-"]
        lines.append("| " + " | ".join(cells + [f"{row['seconds']:.1f}"]) + " |")
    lines += ["", "| category | tasks | " + " | ".join(names) + (" | difference |" if other else " |"),
              "|---|---|" + "---|" * (len(names) + (1 if other else 0))]
    averages = [(c, summary["task_counts"][c], summary["categories"][c], (other or {}).get("categories", {}).get(c))
                for c in summary["categories"]]
    averages += [(k, len(summary["tasks"]), v, (other or {}).get("average", {}).get(k))
                 for k, v in summary["average"].items()]
    for label, count, mine, theirs in averages:
        cells = [label, str(count), _cell(mine)] + ([_cell(theirs), _cell(mine - theirs) if theirs is not None
                                                     else "-"] if other else [])
        lines.append("| " + " | ".join(cells) + " |")
    extra = [r for r in summary["tasks"] if any(k in r for k in EXTRA_METRICS.values())]
    for row in extra:
        for metric in EXTRA_METRICS.values():
            if metric in row:
                lines.append(f"\n{row['task']}: {metric} = {row[metric]:.2f}"
                             + (f" (vs {other_rows[row['task']][metric]:.2f})" if row["task"] in other_rows
                                and metric in other_rows[row["task"]] else ""))
    lines.append(f"\nTotal evaluation time: {summary['total_seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, folder: Path, stem: str = "summary", other: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    markdown = folder / f"{stem}.md"
    markdown.write_text(summary_markdown(summary, other))
    return markdown
