import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.tiny_model import build_tiny_model


def pytest_configure(config):
    # Tests never reach a model or dataset hub, and never log to wandb.
    for name, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)
    # Whatever tests and libraries put in the temp folder (verl's checkpoint locks, Ray's session folder, pytest's
    # tmp_path) goes into one folder of this session, removed at its end: nothing is left in the system's. The
    # workers of `pytest -n` share their controller's (a folder inside it would make Ray's socket paths too long).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        config.grace_temp, config.grace_temp_owned = os.environ["TMPDIR"], False
        # One thread per worker and per process it starts (Ray workers, training subprocesses): two workers with
        # two OpenMP threads each oversubscribe two cores, and spinning threads then slowed some tests six-fold.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    else:
        config.grace_temp, config.grace_temp_owned = tempfile.mkdtemp(prefix="grace-tests-"), True
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
    if config.grace_temp_owned:
        shutil.rmtree(config.grace_temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Folder of the tiny random Qwen2 + tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory):
    """The packaged SmolLM2-135M-Instruct converted from its GGUF by this session's code (not a user's cache)."""
    from grace.data.assets import smollm2_hf_folder

    return smollm2_hf_folder(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def chaotic_model_path(tmp_path_factory):
    """The tiny model's folder with larger random weights (see `chaotic_model`), for end-to-end runs."""
    return build_tiny_model(tmp_path_factory.mktemp("chaotic_model"), initializer_range=0.3)


@pytest.fixture(scope="session")
def chaotic_model(chaotic_model_path):
    """The tiny Qwen2 with larger random weights: its greedy continuations change with every token of context
    (the default initialisation repeats one token), so a wrong position or mask shows in the output."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(chaotic_model_path).eval()


@pytest.fixture(scope="session")
def prompts(tiny_model_path):
    """Twelve chat prompts of different lengths, from packaged Wikipedia extracts."""
    from transformers import AutoTokenizer

    from grace.data.assets import load_wiki_articles
    from grace.prompts import chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    articles = load_wiki_articles()[:12]
    return [chat_prompt_ids(tokenizer, a["extract"][: 20 + 37 * i % 300], 1024) for i, a in enumerate(articles)]
