"""Shared fixtures: one thread per test process (2-core CI), tiny checkpoints built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
TINY = ["tiny_llava", "tiny_qwen", "tiny_llava_next", "tiny_qwen2_vl", "tiny_idefics3",
        "tiny_qwen3_vl", "tiny_llava_onevision", "tiny_gemma3",
        "tiny_paligemma", "tiny_internvl", "tiny_mistral3"]


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key cache / tiny checkpoint root shared by the whole session."""
    return tmp_path_factory.mktemp("cache")


def tiny_model_config(name: str, cache_dir: Path):
    """The typed config of `conf/model/<name>.yaml`, composed as a job would, with `cache_dir`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}", f"paths.cache_dir={cache_dir}"])
    return OmegaConf.to_object(cfg).model


@pytest.fixture(scope="session")
def tiny_models(cache_dir: Path) -> dict:
    """Both tiny families loaded through the real `from_pretrained` path: name -> LoadedModel."""
    from experiments.models import load_model

    return {name: load_model(tiny_model_config(name, cache_dir)) for name in TINY}


@pytest.fixture(params=TINY, ids=TINY)
def tiny(request: pytest.FixtureRequest, tiny_models: dict):
    """Each tiny model in turn."""
    return tiny_models[request.param]
