"""Run a study: every arm on the same data and budget, scored on the same held-out items, compared with paired
bootstrap intervals.

Layout of OUT/<name>/ (OUT defaults to study_out):
    config.yaml                the study's configuration, as run
    data/                      the shared training data (`grace.training_run.prepare_data`)
    rationales.sqlite          rationales of every evaluation, keyed by model, generation settings, backend, dtype
                               and device
    arms/<arm>/                training output (checkpoints, metrics.jsonl, logs, trained_model/) and
                               result.json + units.npz once the arm is evaluated
    results.json, report.md, validation_reward.png, scores.png

An arm with a result.json is skipped on a re-run; a GRACE arm whose training was interrupted resumes from its
latest checkpoint (verl's resume_mode=auto over arms/<arm>/checkpoints), a contrastive arm keeps a finished training
of the same settings and triples (`grace.study.contrastive.train_or_reuse`) and otherwise resumes from its latest
checkpoint (trained_model/checkpoints, every 25 optimizer steps) or trains from the start. An
arm with `model_from` trains nothing: it evaluates that arm's arms/<run>/trained_model/ (same seed) its own way, and
runs again whenever that run trains again.
With an archive folder (`grace.study.archive`), archived arms are restored before the run and each arm is archived
as it finishes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from grace import training_run
from grace.study.archive import archive_finished_arms, restore_arms
from grace.study.config import TRAINED_KINDS, StudyConfig
from grace.study.heldout import DOCUMENTS_KEY, GENERATIVE_TASK, MTEB_AVERAGE, STATISTICS, HeldOutEvaluation, TaskResult
from grace.study.mteb_offline import MTEB_OFFLINE_TASKS
from grace.study.stats import average_interval, linear_trend, paired_average_bootstrap

BEST_BASE = "vs_best_base"  # a trained arm's task key: paired with the strongest untrained embedding
# GRACE arms checkpoint about every GRACE_SAVE_MINUTES, so that an interrupted arm loses at most that much training
# (and one step), whatever a checkpoint costs on the machine's disk
GRACE_SAVE_MINUTES = 10.0


def prepare_data(config: StudyConfig, model: Path, study_dir: Path) -> Path:
    folder = study_dir / "data" / "data" / "filtered"
    if (folder / "train.parquet").exists() and (folder / "test.parquet").exists():
        return folder
    shutil.rmtree(study_dir / "data", ignore_errors=True)
    return training_run.prepare_data(config.data, study_dir / "data", model)


def grace_settings(arm, seed: int | None = None) -> training_run.TrainingSettings:
    """A GRACE run's training settings: the defaults, the arm's settings (validated: never the study's own), its
    pooling span, the run's seed, and a checkpoint about every GRACE_SAVE_MINUTES unless it sets a step interval."""
    settings = training_run.TrainingSettings(**{**arm.settings, "pooling_span": arm.pooling_span})
    if seed is not None:
        settings.seed = seed
    if not settings.save_every:
        settings.save_every, settings.save_minutes = 1, settings.save_minutes or GRACE_SAVE_MINUTES
    return settings


def train_grace(config: StudyConfig, arm, seed: int | None, model: Path, data: Path, arm_dir: Path
                ) -> tuple[Path, dict]:
    """Train (or resume) and merge; returns the merged model and the run's settings and training record."""
    settings, on_device = grace_settings(arm, seed), training_run.device()
    trained = arm_dir / "trained_model"
    if not (trained / "config.json").exists():
        training_run.train(settings, config.data.max_prompt, data, model, arm_dir, on_device, label=arm_dir.name)
        training_run.merge(arm_dir, model)
    metrics = training_run.read_metrics(arm_dir / "metrics.jsonl")
    steps, values = training_run.validation_curve(metrics)
    slope, error = linear_trend(values, steps)
    training_steps = [m for m in metrics if "timing_s/step" in m]
    record = {
        "settings": {**dataclasses.asdict(settings), **dataclasses.asdict(config.data),
                     "rationale_length": config.evaluation.rationale_length, "device": on_device,
                     "compute_dtype": training_run.compute_dtype(settings, on_device)},
        "train_seconds": sum(m["timing_s/step"] for m in training_steps),
        "validation_reward": {"slope": slope, "se": error, "steps": len(steps), "at_steps": steps, "values": values},
        "training": {name: [m.get(name) for m in training_steps] for name in
                     ("grace/total", "grace/positive", "grace/group_reward_std", "grace/group_all_equal",
                      "actor/entropy", "response_length/mean")},
    }
    return trained, record


def train_contrastive_arm(config: StudyConfig, arm, seed: int | None, model: Path, data: Path, arm_dir: Path
                          ) -> tuple[Path, dict]:
    from grace.study.contrastive import read_triples, train_or_reuse

    settings = {"examples": 64, "epochs": 1, "lr": 2e-5, "batch_size": 8, **arm.settings}
    seed = config.seed if seed is None else seed
    trained = arm_dir / "trained_model"
    triples = read_triples(data / "train.parquet", settings["examples"], config.seed)  # the same triples every seed
    summary = train_or_reuse(model, triples, trained, settings["epochs"], settings["lr"], settings["batch_size"], seed)
    return trained, {"settings": settings, "train_seconds": summary["train_seconds"],
                     "training": {k: summary[k] for k in ("loss_before", "loss_after", "optimizer_steps", "losses")}}


def reuse_trained_model(arm, run_name: str, study_dir: Path) -> tuple[Path, dict]:
    """An evaluation lever's model: the trained model of the same seed's run of `arm.model_from`, with that run's
    settings and training time (the training this arm's scores rest on)."""
    source_run = arm.model_from + run_name[len(arm.name):]  # the same "@seed<k>" suffix, or none
    source_dir = study_dir / "arms" / source_run
    trained = source_dir / "trained_model"
    if not (trained / "config.json").exists() or not (source_dir / "result.json").exists():
        raise FileNotFoundError(f"arm {arm.name!r} evaluates the trained model of run {source_run!r}, but "
                                f"{source_dir} holds no finished run with a trained_model/: run {arm.model_from!r} on "
                                "this machine first (an archive keeps its scores, not its model)")
    source = json.loads((source_dir / "result.json").read_text())
    return trained, {"model_from": arm.model_from, "settings": source["settings"],
                     "train_seconds": source.get("train_seconds", 0.0)}


def encoder_settings(config: StudyConfig, arm):
    """How an arm embeds in the evaluation: its pooling span, and its rationale length, temperature (0: greedy) and
    number of rationale samples (the study's unless the arm sets its own)."""
    from grace.encoder import EncoderSettings, GenerationSettings

    evaluation = config.arm_evaluation(arm)
    temperature = evaluation.rationale_temperature
    generation = GenerationSettings(max_new_tokens=evaluation.rationale_length, do_sample=temperature > 0,
                                    temperature=temperature or 1.0)
    return EncoderSettings(pooling_span=arm.pooling_span, generation=generation,
                           rationale_samples=evaluation.rationale_samples)


def evaluate_arm(config: StudyConfig, arm, model_path: Path, base_model: Path, evaluation: HeldOutEvaluation,
                 cache: Path):
    """Held-out task results, perplexity, the diversity of the arm's held-out rationales (None without a rationale)
    and (for a trained arm) KL to the base model on its own rationales."""
    from grace.encoder import GraceEncoder
    from grace.evaluation.rationale_cache import RationaleCache, encoder_namespace
    from grace.study.diversity import held_out_rationale_diversity
    from grace.study.drift import held_out_rationale_kl
    from grace.study.generative import choice_units, description_choice_items
    from grace.study.perplexity import held_out_texts, perplexity

    if arm.kind == "sentence_transformer":
        return evaluate_sentence_transformer(config, arm, evaluation), None, None, None
    encoder = GraceEncoder.from_pretrained(model_path, backend="hf", device=training_run.device(),
                                           settings=encoder_settings(config, arm))
    encoder.rationale_cache = RationaleCache(cache, encoder_namespace(model_path, encoder))
    batch = config.evaluation.batch_size
    tasks = evaluation.evaluate(lambda texts: encoder.encode(texts, batch_size=batch, rationale=arm.rationale,
                                                             show_progress_bar=True))
    held_out_perplexity = perplexity(encoder.model, encoder.tokenizer,
                                     held_out_texts(config.evaluation.perplexity_texts))
    if config.evaluation.generative_items:
        items = description_choice_items(config.evaluation.generative_items, config.evaluation.part)
        started = time.perf_counter()
        units = choice_units(encoder.model, encoder.tokenizer, items)
        tasks[GENERATIVE_TASK] = TaskResult("accuracy", STATISTICS["accuracy"](units), units,
                                            {"scoring_seconds": time.perf_counter() - started})
    diversity = held_out_rationale_diversity(encoder, evaluation.texts()) if arm.rationale else None
    kl = (None if arm.kind == "base"
          else held_out_rationale_kl(encoder, base_model, evaluation.documents[:config.evaluation.kl_texts]))
    return tasks, held_out_perplexity, diversity, kl


def evaluate_sentence_transformer(config: StudyConfig, arm, evaluation: HeldOutEvaluation):
    """Held-out task results of another embedding model (an anchor; no perplexity, rationales or KL)."""
    from sentence_transformers import SentenceTransformer

    from grace.data.assets import minilm_folder

    name = arm.settings.get("model", "minilm")
    model = SentenceTransformer(str(minilm_folder() if name == "minilm" else Path(name).resolve()),
                                device=training_run.device())
    return evaluation.evaluate(lambda texts: model.encode(texts, batch_size=config.evaluation.batch_size,
                                                          normalize_embeddings=True, show_progress_bar=True))


def run_arm(config: StudyConfig, arm, run: tuple[str, int | None], model: Path, data: Path, study_dir: Path,
            evaluation: HeldOutEvaluation) -> None:
    """Train (a trained arm) and evaluate one run of an arm: arms/<run name>/result.json and units.npz."""
    (run_name, seed), started = run, time.perf_counter()
    arm_dir = study_dir / "arms" / run_name
    arm_dir.mkdir(parents=True, exist_ok=True)
    record = {"kind": arm.kind, "rationale": arm.rationale, "pooling_span": arm.pooling_span, "settings": {},
              "seed": seed, **({"evaluation": arm.evaluation} if arm.evaluation else {})}
    model_path = model
    if arm.model_from is not None:
        model_path, trained = reuse_trained_model(arm, run_name, study_dir)
        record.update(trained)
    elif arm.kind == "grace":
        model_path, trained = train_grace(config, arm, seed, model, data, arm_dir)
        record.update(trained)
    elif arm.kind == "contrastive":
        model_path, trained = train_contrastive_arm(config, arm, seed, model, data, arm_dir)
        record.update(trained)
    print(f"[{run_name}] evaluating on the held-out {evaluation.part} tasks", flush=True)
    evaluated = time.perf_counter()
    tasks, held_out_perplexity, diversity, kl = evaluate_arm(config, arm, model_path, model, evaluation,
                                                             study_dir / "rationales.sqlite")
    record["eval_seconds"] = time.perf_counter() - evaluated
    record["wall_seconds"] = time.perf_counter() - started  # of this run (a resumed arm's earlier runs not counted)
    if held_out_perplexity is not None:
        record["perplexity"] = held_out_perplexity
    if diversity is not None:
        record["rationale_diversity"] = diversity
    if kl is not None:
        record["kl_to_base"] = kl
    record["tasks"] = {name: {"metric": t.metric, "score": t.score, "n": t.n, **t.extra} for name, t in tasks.items()}
    np.savez(arm_dir / "units.npz", **{name: t.units for name, t in tasks.items()},
             **{DOCUMENTS_KEY.format(task=name): t.documents for name, t in tasks.items() if t.documents is not None})
    (arm_dir / "result.json").write_text(json.dumps(record, indent=1))  # written last: it marks the arm as done
    summary = ", ".join(f"{name} {t.metric} {t.score:.1f}" for name, t in tasks.items())
    print(f"[{run_name}] {summary}" + (f", perplexity {held_out_perplexity:.2f}" if held_out_perplexity else ""),
          flush=True)


def load_arm(study_dir: Path, name: str) -> tuple[dict, dict[str, np.ndarray] | None] | None:
    """The run's record and per-item scores; None if it has not finished; units None if they were lost (an archived
    run from before the archive kept them)."""
    arm_dir = study_dir / "arms" / name
    if not (arm_dir / "result.json").exists():
        return None
    record = json.loads((arm_dir / "result.json").read_text())
    if not (arm_dir / "units.npz").exists():
        if "units_lost" not in record:
            raise FileNotFoundError(f"{arm_dir / 'units.npz'} is missing and {arm_dir / 'result.json'} does not say "
                                    f"why (a record whose per-item scores were lost carries a 'units_lost' note)")
        return record, None
    with np.load(arm_dir / "units.npz") as units:
        return record, {k: units[k] for k in units.files}


def combine_runs(runs: dict[str, tuple[dict, dict]]) -> tuple[dict, dict]:
    """An arm's record and units from its runs (run name -> (record, units)): one run as it is; several (training
    seeds): units per task as a list over runs, every score and number the mean over runs, and each run's own
    scores under `runs`. A task that not every run was scored on (one added to the evaluation after some runs) is
    left out of the mean and named under `tasks_not_in_every_run`; each run's own score of it stays under `runs`."""
    if len(runs) == 1:
        return next(iter(runs.values()))
    records = [record for record, _ in runs.values()]
    record = copy.deepcopy(records[0])
    every_run = [task for task in record["tasks"] if all(task in r["tasks"] for r in records)]
    partial = sorted({task for r in records for task in r["tasks"]} - set(every_run))
    record["tasks"] = {task: record["tasks"][task] for task in every_run}
    if partial:
        record["tasks_not_in_every_run"] = partial
    record["runs"] = {name: {"seed": r["seed"], "perplexity": r["perplexity"],
                             "tasks": {task: values["score"] for task, values in r["tasks"].items()}}
                      for name, (r, _) in runs.items()}
    for key in ("perplexity", "kl_to_base", "train_seconds", "eval_seconds", "wall_seconds"):
        if key in record:
            record[key] = float(np.mean([r[key] for r in records]))
    for task, values in record["tasks"].items():
        for key, value in values.items():
            if isinstance(value, float):
                values[key] = float(np.mean([r["tasks"][task][key] for r in records]))
    units = {key: [u[key] for _, u in runs.values()] if ":" not in key else value
             for key, value in next(iter(runs.values()))[1].items() if key.split(":")[0] in every_run}
    return record, units


class Scorer:
    """Scores and paired bootstrap intervals of the study's arms, per task and for the MTEB-offline average (the
    mean over the MTEB-offline tasks an arm was scored on)."""

    def __init__(self, config: StudyConfig):
        self.resamples, self.seed = config.evaluation.bootstrap_resamples, config.seed
        self.average_tasks = [task for task in MTEB_OFFLINE_TASKS if task in config.evaluation.mteb_items]

    def tasks(self, record: dict) -> list[str]:
        names = list(record["tasks"])
        if self.average_tasks and all(task in names for task in self.average_tasks):
            names.append(MTEB_AVERAGE)
        return names

    def statistics(self, task: str, record: dict) -> dict:
        """task -> statistic of the tasks behind `task`: itself, or the MTEB-offline tasks for their average."""
        tasks = self.average_tasks if task == MTEB_AVERAGE else [task]
        return {t: STATISTICS[record["tasks"][t]["metric"]] for t in tasks}

    def interval(self, task: str, record: dict, units: dict) -> list[float]:
        low, high = average_interval(units, self.statistics(task, record), self.resamples, self.seed,
                                     self.documents(units))
        return [low, high]

    def paired(self, task: str, record: dict, units: dict, other_units: dict) -> dict:
        return paired_average_bootstrap(units, other_units, self.statistics(task, record), self.resamples, self.seed,
                                        self.documents(units))

    @staticmethod
    def documents(units: dict) -> dict:
        """task -> [units, 2] documents of each pair, for the tasks whose pairs share documents."""
        return {key.split(":")[0]: value for key, value in units.items() if ":" in key}


def collect_results(config: StudyConfig, study_dir: Path) -> dict:
    """results.json: every finished arm (a seeded arm once all its runs have finished), its scores with error bars,
    and paired intervals against `compare_to` (the study's, and the arm's own where it names one); a trained arm is
    also paired, per task, with the strongest untrained embedding of the model on that task (`vs_best_base`, which
    names that base arm; `not_paired`, with the point scores only, when either's per-item scores were lost), and on
    the generative task with the base model (generative retention). An arm
    whose per-item scores were lost keeps the intervals it was recorded with, and no arm is paired with it. With
    MTEB-offline tasks, their mean is one more task (`MTEB-offline`) with its own intervals."""
    loaded = {}
    for arm in config.arms:
        runs = {name: load_arm(study_dir, name) for name, _ in arm.runs()}
        loaded[arm.name] = None if any(run is None for run in runs.values()) else combine_runs(runs)
    scorer, arms = Scorer(config), {}
    for arm in config.arms:
        entry = loaded[arm.name]
        if entry is None:
            continue
        record, units = entry
        if units is None:
            arms[arm.name] = record
            continue
        references = [name for name in dict.fromkeys([config.compare_to, *arm.references()])
                      if name != arm.name and loaded[name] is not None and loaded[name][1] is not None]
        tasks = scorer.tasks(record)
        if MTEB_AVERAGE in tasks:
            scores = [record["tasks"][task]["score"] for task in scorer.average_tasks]
            record["tasks"][MTEB_AVERAGE] = {"metric": "mean of the MTEB-offline tasks' scores",
                                             "score": float(np.mean(scores)), "n": len(scores)}
        for task in tasks:
            values = record["tasks"][task]
            values["score_ci"] = scorer.interval(task, record, units)
            for reference in references:
                if all(t in loaded[reference][1] for t in scorer.statistics(task, record)):  # scored on this task
                    values[f"vs_{reference}"] = scorer.paired(task, record, units, loaded[reference][1])
        arms[arm.name] = record
    bases = [arm.name for arm in config.arms if arm.kind == "base" and arm.name in arms]
    for arm in config.arms:
        if arm.kind not in TRAINED_KINDS or arm.name not in arms:
            continue
        units = loaded[arm.name][1]
        for task, values in arms[arm.name]["tasks"].items():
            scored = [name for name in bases if task in arms[name]["tasks"]]
            if not scored:  # for the generative task every base arm is the same model: any is "the base model"
                continue
            best = max(scored, key=lambda name: arms[name]["tasks"][task]["score"])
            best_units = loaded[best][1]
            if units is None or best_units is None:
                lost = "this arm's" if units is None else "its"
                values[BEST_BASE] = {"arm": best, "not_paired": f"{lost} per-item scores were lost"}
            else:
                values[BEST_BASE] = {"arm": best, **scorer.paired(task, arms[arm.name], units, best_units)}
    return {"study": config.name, "compare_to": config.compare_to, "primary": config.primary,
            "part": config.evaluation.part, "arms": arms,
            "not_run": [arm.name for arm in config.arms if loaded[arm.name] is None]}


def run_study(config: StudyConfig, config_text: str, study_dir: Path, only: list[str] | None = None,
              archive: Path | None = None) -> dict:
    """Run the arms not yet done (all, or those in `only`) in `study_dir`, restoring them from and archiving them to
    `archive` when given; write and return results.json."""
    study_dir.mkdir(parents=True, exist_ok=True)
    names = [name for arm in config.arms for name, _ in arm.runs()]
    if archive is not None:
        archive.mkdir(parents=True, exist_ok=True)
        restored = restore_arms(archive, study_dir / "arms", names)
        if restored:
            print(f"[study {config.name}] restored from {archive}: {', '.join(restored)}", flush=True)
        archive_finished_arms(study_dir / "arms", archive, names)  # runs that finished before the archive was named
    (study_dir / "config.yaml").write_text(config_text, encoding="utf-8")
    if config.model is None:
        from grace.data.assets import smollm2_hf_folder

        model = smollm2_hf_folder()
    else:
        model = Path(config.model).resolve()
    pending = []
    for arm in config.arms:
        for run in arm.runs():
            # An evaluation lever whose source run trains again is stale: it runs again after it, named or not.
            source_runs_again = arm.model_from is not None and any(
                name == arm.model_from + run[0][len(arm.name):] for _, (name, _) in pending)
            if source_runs_again or ((only is None or arm.name in only)
                                     and not (study_dir / "arms" / run[0] / "result.json").exists()):
                pending.append((arm, run))
    print(f"[study {config.name}] {len(config.arms)} arms, {len(pending)} to run: "
          f"{', '.join(name for _, (name, _) in pending) or 'none'}", flush=True)
    if pending:
        trains = any(arm.kind in TRAINED_KINDS for arm, _ in pending)
        data = prepare_data(config, model, study_dir) if trains else None
        e = config.evaluation
        evaluation = HeldOutEvaluation(e.part, e.retrieval_queries, e.lee_documents, e.mteb_folder, e.mteb_items)
        for number, (arm, run) in enumerate(pending, start=1):
            print(f"\n=== [study {config.name}] run {number}/{len(pending)}: {run[0]} ({arm.kind})", flush=True)
            run_arm(config, arm, run, model, data, study_dir, evaluation)
            if archive is not None:
                archive_finished_arms(study_dir / "arms", archive, [run[0]])
                print(f"[{run[0]}] archived in {archive / run[0]}", flush=True)
    results = collect_results(config, study_dir)
    (study_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results
