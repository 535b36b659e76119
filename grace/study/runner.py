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
latest checkpoint (verl's resume_mode=auto over arms/<arm>/checkpoints), a contrastive arm retrains (minutes).
With an archive folder (`grace.study.archive`), archived arms are restored before the run and each arm is archived
as it finishes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from grace import training_run
from grace.study.archive import archive_finished_arms, restore_arms
from grace.study.config import StudyConfig
from grace.study.heldout import STATISTICS, HeldOutEvaluation
from grace.study.stats import bootstrap_interval, linear_trend, paired_bootstrap

BEST_BASE = "vs_best_base"  # a trained arm's task key: paired with the strongest untrained embedding
GRACE_SAVE_EVERY = 4  # checkpoint interval of GRACE arms, so that an interrupted arm loses at most this many steps


def prepare_data(config: StudyConfig, model: Path, study_dir: Path) -> Path:
    folder = study_dir / "data" / "data" / "filtered"
    if (folder / "train.parquet").exists() and (folder / "test.parquet").exists():
        return folder
    shutil.rmtree(study_dir / "data", ignore_errors=True)
    return training_run.prepare_data(config.data, study_dir / "data", model)


def grace_settings(arm) -> training_run.TrainingSettings:
    """A GRACE arm's training settings: the defaults, the arm's settings (validated: never the study's own), its
    pooling span, and a checkpoint every GRACE_SAVE_EVERY steps unless it sets another interval."""
    settings = training_run.TrainingSettings(**{**arm.settings, "pooling_span": arm.pooling_span})
    settings.save_every = settings.save_every or GRACE_SAVE_EVERY
    return settings


def train_grace(config: StudyConfig, arm, model: Path, data: Path, arm_dir: Path) -> tuple[Path, dict]:
    """Train (or resume) and merge; returns the merged model and the arm's settings and training record."""
    settings, on_device = grace_settings(arm), training_run.device()
    trained = arm_dir / "trained_model"
    if not (trained / "config.json").exists():
        training_run.train(settings, config.data.max_prompt, data, model, arm_dir, on_device, label=arm.name)
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


def train_contrastive_arm(config: StudyConfig, arm, model: Path, data: Path, arm_dir: Path) -> tuple[Path, dict]:
    from grace.study.contrastive import read_triples, train_contrastive

    settings = {"examples": 64, "epochs": 1, "lr": 2e-5, "batch_size": 8, **arm.settings}
    trained = arm_dir / "trained_model"
    triples = read_triples(data / "train.parquet", settings["examples"], config.seed)
    summary = train_contrastive(model, triples, trained, settings["epochs"], settings["lr"], settings["batch_size"],
                                config.seed)
    return trained, {"settings": settings, "train_seconds": summary["train_seconds"],
                     "training": {k: summary[k] for k in ("loss_before", "loss_after", "optimizer_steps", "losses")}}


def evaluate_arm(config: StudyConfig, arm, model_path: Path, base_model: Path, evaluation: HeldOutEvaluation,
                 cache: Path):
    """Held-out task results, perplexity, the diversity of the arm's held-out rationales (None without a rationale)
    and (for a trained arm) KL to the base model on its own rationales."""
    from grace.encoder import EncoderSettings, GenerationSettings, GraceEncoder
    from grace.evaluation.rationale_cache import RationaleCache, encoder_namespace
    from grace.study.diversity import held_out_rationale_diversity
    from grace.study.drift import held_out_rationale_kl
    from grace.study.perplexity import held_out_texts, perplexity

    settings = EncoderSettings(pooling_span=arm.pooling_span,
                               generation=GenerationSettings(max_new_tokens=config.evaluation.rationale_length))
    encoder = GraceEncoder.from_pretrained(model_path, backend="hf", device=training_run.device(),
                                           settings=settings)
    encoder.rationale_cache = RationaleCache(cache, encoder_namespace(model_path, encoder))
    batch = config.evaluation.batch_size
    tasks = evaluation.evaluate(lambda texts: encoder.encode(texts, batch_size=batch, rationale=arm.rationale,
                                                             show_progress_bar=True))
    held_out_perplexity = perplexity(encoder.model, encoder.tokenizer,
                                     held_out_texts(config.evaluation.perplexity_texts))
    diversity = held_out_rationale_diversity(encoder, evaluation.texts()) if arm.rationale else None
    kl = (None if arm.kind == "base"
          else held_out_rationale_kl(encoder, base_model, evaluation.documents[:config.evaluation.kl_texts]))
    return tasks, held_out_perplexity, diversity, kl


def run_arm(config: StudyConfig, arm, model: Path, data: Path, study_dir: Path, evaluation: HeldOutEvaluation) -> None:
    arm_dir = study_dir / "arms" / arm.name
    arm_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record = {"kind": arm.kind, "rationale": arm.rationale, "pooling_span": arm.pooling_span, "settings": {}}
    model_path = model
    if arm.kind == "grace":
        model_path, trained = train_grace(config, arm, model, data, arm_dir)
        record.update(trained)
    elif arm.kind == "contrastive":
        model_path, trained = train_contrastive_arm(config, arm, model, data, arm_dir)
        record.update(trained)
    print(f"[{arm.name}] evaluating on the held-out tasks", flush=True)
    evaluated = time.perf_counter()
    tasks, held_out_perplexity, diversity, kl = evaluate_arm(config, arm, model_path, model, evaluation,
                                                             study_dir / "rationales.sqlite")
    record["eval_seconds"] = time.perf_counter() - evaluated
    record["wall_seconds"] = time.perf_counter() - started  # of this run (a resumed arm's earlier runs not counted)
    record["perplexity"] = held_out_perplexity
    if diversity is not None:
        record["rationale_diversity"] = diversity
    if kl is not None:
        record["kl_to_base"] = kl
    record["tasks"] = {name: {"metric": t.metric, "score": t.score, "n": t.n, **t.extra} for name, t in tasks.items()}
    np.savez(arm_dir / "units.npz", **{name: t.units for name, t in tasks.items()})
    (arm_dir / "result.json").write_text(json.dumps(record, indent=1))  # written last: it marks the arm as done
    summary = ", ".join(f"{name} {t.metric} {t.score:.1f}" for name, t in tasks.items())
    print(f"[{arm.name}] {summary}, perplexity {held_out_perplexity:.2f}", flush=True)


def load_arm(study_dir: Path, name: str) -> tuple[dict, dict[str, np.ndarray] | None] | None:
    """The arm's record and per-item scores; None if it has not finished; units None if they were lost (an archived
    arm from before the archive kept them)."""
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


def collect_results(config: StudyConfig, study_dir: Path) -> dict:
    """results.json: every finished arm, its scores with error bars, and paired intervals against `compare_to` (the
    study's, and the arm's own where it names one); a trained arm is also paired, per task, with the strongest
    untrained embedding of the model on that task (`vs_best_base`, which names that base arm; `not_paired`, with
    the point scores only, when either's per-item scores were lost). An arm whose per-item scores were lost keeps
    the intervals it was recorded with, and no arm is paired with it."""
    loaded = {arm.name: load_arm(study_dir, arm.name) for arm in config.arms}
    resamples, arms = config.evaluation.bootstrap_resamples, {}
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
        for task, values in record["tasks"].items():
            statistic = STATISTICS[values["metric"]]
            low, high = bootstrap_interval(units[task], statistic, resamples, config.seed)
            values["score_ci"] = [low, high]
            for reference in references:
                values[f"vs_{reference}"] = paired_bootstrap(units[task], loaded[reference][1][task], statistic,
                                                             resamples, config.seed)
        arms[arm.name] = record
    bases = [arm.name for arm in config.arms if arm.kind == "base" and arm.name in arms]
    for arm in config.arms:
        if arm.kind == "base" or arm.name not in arms:
            continue
        units = loaded[arm.name][1]
        for task, values in arms[arm.name]["tasks"].items():
            scored = [name for name in bases if task in arms[name]["tasks"]]
            if not scored:
                continue
            best = max(scored, key=lambda name: arms[name]["tasks"][task]["score"])
            best_units = loaded[best][1]
            if units is None or best_units is None:
                lost = "this arm's" if units is None else "its"
                values[BEST_BASE] = {"arm": best, "not_paired": f"{lost} per-item scores were lost"}
            else:
                values[BEST_BASE] = {"arm": best, **paired_bootstrap(units[task], best_units[task],
                                                                     STATISTICS[values["metric"]], resamples,
                                                                     config.seed)}
    return {"study": config.name, "compare_to": config.compare_to, "arms": arms,
            "not_run": [arm.name for arm in config.arms if loaded[arm.name] is None]}


def run_study(config: StudyConfig, config_text: str, study_dir: Path, only: list[str] | None = None,
              archive: Path | None = None) -> dict:
    """Run the arms not yet done (all, or those in `only`) in `study_dir`, restoring them from and archiving them to
    `archive` when given; write and return results.json."""
    study_dir.mkdir(parents=True, exist_ok=True)
    names = [arm.name for arm in config.arms]
    if archive is not None:
        archive.mkdir(parents=True, exist_ok=True)
        restored = restore_arms(archive, study_dir / "arms", names)
        if restored:
            print(f"[study {config.name}] restored from {archive}: {', '.join(restored)}", flush=True)
        archive_finished_arms(study_dir / "arms", archive, names)  # arms that finished before the archive was named
    (study_dir / "config.yaml").write_text(config_text, encoding="utf-8")
    if config.model is None:
        from grace.data.assets import smollm2_hf_folder

        model = smollm2_hf_folder()
    else:
        model = Path(config.model).resolve()
    pending = [arm for arm in config.arms if (only is None or arm.name in only)
               and not (study_dir / "arms" / arm.name / "result.json").exists()]
    print(f"[study {config.name}] {len(config.arms)} arms, {len(pending)} to run: "
          f"{', '.join(a.name for a in pending) or 'none'}", flush=True)
    if pending:
        data = prepare_data(config, model, study_dir) if any(a.kind != "base" for a in pending) else None
        evaluation = HeldOutEvaluation(config.evaluation.retrieval_queries, config.evaluation.lee_documents)
        for number, arm in enumerate(pending, start=1):
            print(f"\n=== [study {config.name}] arm {number}/{len(pending)}: {arm.name} ({arm.kind})", flush=True)
            run_arm(config, arm, model, data, study_dir, evaluation)
            if archive is not None:
                archive_finished_arms(study_dir / "arms", archive, [arm.name])
                print(f"[{arm.name}] archived in {archive / arm.name}", flush=True)
    results = collect_results(config, study_dir)
    (study_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results
