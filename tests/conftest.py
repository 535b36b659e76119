import os

import pytest

from tests.tiny_model import build_tiny_model


def pytest_configure(config):
    # Tests never reach a model or dataset hub, and never log to wandb.
    for name, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Folder of the tiny random Qwen2 + tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))
