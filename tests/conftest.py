"""Shared fixtures: one thread per test process (2-core CI), tiny checkpoints built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
TINY = {"tiny_llava": "llava", "tiny_qwen": "qwen2_5_vl"}


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key cache / tiny checkpoint root shared by the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_models(cache_dir: Path) -> dict:
    """Both tiny families loaded through the real `from_pretrained` path: name -> LoadedModel."""
    from experiments.config import ModelConfig
    from experiments.models import load_model

    return {name: load_model(ModelConfig(name=name, family=family, path=str(cache_dir / "models" / name),
                                         builder="tiny", dtype="float32", device="cpu"))
            for name, family in TINY.items()}


@pytest.fixture(params=list(TINY), ids=list(TINY))
def tiny(request: pytest.FixtureRequest, tiny_models: dict):
    """Each tiny model in turn."""
    return tiny_models[request.param]
