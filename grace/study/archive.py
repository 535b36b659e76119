"""A study's archive: the small part of each finished arm that its report needs (result.json, units.npz with the
per-item scores, and a GRACE arm's metrics.jsonl), kept in a folder that is committed, so that a machine that never
ran an arm can rebuild the report and pair new arms with it. The run folder (checkpoints, models, caches) stays out
of git and is lost with the machine; the archive is what survives.

An archived arm whose units.npz is missing is one whose per-item scores were lost before the archive existed: its
result.json then carries the intervals computed while they existed, and no new arm can be paired with it until it
is run again (see `grace.study.runner.collect_results`)."""

from __future__ import annotations

import shutil
from pathlib import Path

# result.json last: in a run folder it marks the arm as done, so it is written only once the rest is in place.
ARCHIVED_FILES = ("units.npz", "metrics.jsonl", "result.json")


def _copy_archived_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVED_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)


def archive_arm(arm_dir: Path, archive: Path) -> Path:
    """Copy a finished arm's archived files from its run folder to archive/<arm>/; returns that folder."""
    if not (arm_dir / "result.json").exists():
        raise FileNotFoundError(f"{arm_dir / 'result.json'}: the arm has not finished, there is nothing to archive")
    target = archive / arm_dir.name
    _copy_archived_files(arm_dir, target)
    return target


def archive_finished_arms(arms_dir: Path, archive: Path, names: list[str]) -> list[str]:
    """Archive each named arm that has finished in arms_dir; returns their names."""
    finished = [name for name in names if (arms_dir / name / "result.json").exists()]
    for name in finished:
        archive_arm(arms_dir / name, archive)
    return finished


def restore_arms(archive: Path, arms_dir: Path, names: list[str]) -> list[str]:
    """Copy each named arm that the archive holds and arms_dir has not finished into arms_dir, so the run skips it;
    returns the names restored. An arm finished in arms_dir is left as it is (the run folder is the newer)."""
    if not archive.is_dir():
        raise FileNotFoundError(f"archive {archive} is not a folder")
    restored = []
    for name in names:
        source, target = archive / name, arms_dir / name
        if not (source / "result.json").exists() or (target / "result.json").exists():
            continue
        _copy_archived_files(source, target)
        restored.append(name)
    return restored
