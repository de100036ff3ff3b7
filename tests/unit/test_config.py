"""Every option of every config group composes into typed objects; bad values fail at compose time."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from experiments.config import JobConfig, register_configs
from experiments.keys.layers import resolve_layers

from ..conftest import REPO

CONF = REPO / "conf"
GROUPS = ["model", "benchmark", "layer", "metric", "kernel", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def _compose(overrides: list[str]) -> JobConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["paths.cache_dir=/tmp/x", *overrides])
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    job = _compose([f"{group}={option}"])
    assert isinstance(job, JobConfig)
    node = getattr(job, group)
    assert type(node).__name__.endswith("Config")


def test_default_job_is_the_offline_tiny_one():
    job = _compose([])
    assert (job.model.name, job.benchmark.name, job.layer.positions) == ("tiny_llava", "synthetic",
                                                                          ["early", "middle", "late"])
    assert job.model.build_dir.startswith("/tmp/x/models/") and job.logger.mode == "offline"


def test_explicit_layer_indices_compose_as_text():
    assert _compose(["layer.positions=[0,3]"]).layer.positions == ["0", "3"]


def test_layer_every_resolves_to_every_decoder_layer():
    layer = _compose(["layer=every"]).layer
    assert [s.index for s in resolve_layers(layer.positions, layer.fractions, 32)] == list(range(32))


@pytest.mark.parametrize(("override", "error"), [
    (["model=gpt5"], ConfigCompositionException),
    (["benchmark=imagenet"], ConfigCompositionException),
    (["model.nmae=x"], ConfigCompositionException),
    (["keys.batch_size=eight"], ConfigCompositionException),
], ids=["unknown-model", "unknown-benchmark", "typo-in-field", "wrong-type"])
def test_bad_overrides_fail_at_compose(override, error):
    with pytest.raises(error) as info:
        _compose(override)
    cause = f"{info.value} {info.value.__cause__}"
    assert any(word in cause for word in ("Available options", "nmae", "batch_size")), cause


def test_typo_in_yaml_fails_against_schema(tmp_path):
    """An option file with a misspelt field fails at compose time with the field's name."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.yaml").write_text("defaults:\n  - /schema/model@_here_\n  - _self_\nnmae: x\n")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as info:
            compose(config_name="config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "model=bad"])
    assert "nmae" in f"{info.value} {info.value.__cause__}"
