import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model


def pytest_configure(config):
    # Tests never reach a model or dataset hub, and never log to wandb.
    for name, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)
    # Whatever tests and libraries put in the temp folder (verl's checkpoint locks, Ray's session folder, pytest's
    # tmp_path) goes into one folder of this session, removed at its end: nothing is left in the system's.
    config.grace_temp = tempfile.mkdtemp(prefix="grace-tests-")
    os.environ["TMPDIR"] = config.grace_temp
    tempfile.tempdir = None  # gettempdir() caches its first answer
    config.grace_repo_files = repository_changes()


def repository_changes() -> set[str] | None:
    """Modified and untracked (not ignored) paths of the checkout, or None outside a git checkout."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    return set(done.stdout.splitlines()) if done.returncode == 0 else None


def pytest_sessionfinish(session, exitstatus):
    # Tests write nothing into the repository (Hydra's outputs/, checkpoints, caches): a run that does fails.
    before = session.config.grace_repo_files
    written = sorted(repository_changes() - before) if before is not None else []
    if written:
        print(f"\ntests wrote into the repository: {written}", file=sys.stderr)
        session.exitstatus = 1


def pytest_unconfigure(config):
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    shutil.rmtree(config.grace_temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Folder of the tiny random Qwen2 + tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))
