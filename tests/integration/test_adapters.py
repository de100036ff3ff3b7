"""A family added from outside the package, through `register_adapter` alone, passes the key oracles.

The test declares a family of its own, `outside_llava`, entirely as data: the transformers classes, the module
paths, the image-token field and the positional scheme (its processors are LLaVA-1.5's public builders). The
package is not changed: the adapter is registered at run time, its keys are checked against the model's own
KV cache and its own `k_proj`, the default job runs on it offline, and an installed package can do the same
for `launch.py` through the `keyspace.adapters` entry points.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import models
from experiments.config import register_configs
from experiments.keys.capture import KeyCapture
from experiments.keys.extract import extract_keys
from experiments.models import ModelAdapter, register_adapter
from experiments.models.adapter import auto_processor
from experiments.models.llava import offline_processor, token_ids
from experiments.pipeline import run

from ..conftest import REPO, TINY
from .test_keys import SITES, _samples, _solo_oracle

OUTSIDE = ModelAdapter(
    family="outside_llava", model_class="LlavaForConditionalGeneration", config_class="LlavaConfig",
    load_processor=auto_processor, offline_processor=offline_processor, token_ids=token_ids,
    decoder_layers="model.language_model.layers", attention="self_attn", key_projection="k_proj",
    query_projection="q_proj", image_token="image_token_index", positions="rope")


@pytest.fixture(scope="module")
def registered():
    """OUTSIDE registered for this module's tests only."""
    assert OUTSIDE.family not in models.ADAPTERS
    register_adapter(OUTSIDE)
    yield OUTSIDE
    models.ADAPTERS.pop(OUTSIDE.family)


def _job(cache_dir, overrides: list[str]):
    """The default job config with the model switched to the registered family (built under `cache_dir`)."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=tiny_llava", f"model.family={OUTSIDE.family}", "model.name=tiny_outside",
            f"paths.cache_dir={cache_dir}", "logger=none", *overrides])


@pytest.fixture(scope="module")
def loaded(registered, cache_dir):
    """The registered family's tiny checkpoint, built and loaded through the package's own `load_model`."""
    return models.load_model(OmegaConf.to_object(_job(cache_dir, [])).model)


def test_the_registered_adapter_is_the_one_loaded(loaded):
    assert loaded.adapter is OUTSIDE and type(loaded.model).__name__ == OUTSIDE.model_class


@pytest.mark.parametrize("site", SITES)
def test_batched_keys_equal_the_models_own_oracles(loaded, site):
    """post_rope == the model's KV cache, pre_rope == k_proj(input_layernorm(h)), each sample run alone."""
    samples = _samples()
    kept, skipped = extract_keys(loaded, list(enumerate(samples)), [0, 3], site, batch_size=4,
                                 max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    assert not skipped and len(kept) == len(samples)
    for record, sample in zip(kept, samples, strict=True):
        for layer in (0, 3):
            torch.testing.assert_close(record.keys[layer], _solo_oracle(loaded, sample, layer, site)[record.position],
                                       rtol=1e-5, atol=1e-5)


def test_image_tokens_equal_the_vision_features(loaded):
    """Image tokens found == feature rows the vision tower and projector return for the image."""
    samples = _samples(3)
    kept, _ = extract_keys(loaded, list(enumerate(samples)), [0], "post_rope", batch_size=3,
                           max_tokens_per_sample=None, seed=0, store_dtype=torch.float32)
    for record, sample in zip(kept, samples, strict=True):
        inputs = loaded.adapter.model_inputs(loaded.processor, [sample.decoded()])
        with torch.inference_mode():
            features = loaded.model.model.get_image_features(inputs["pixel_values"]).pooler_output
        assert int(record.is_image.sum()) == sum(len(f) for f in features) == 16  # (56 px / 14)^2


def test_capture_follows_the_adapters_paths(loaded):
    """Pointing key_projection at v_proj captures exactly what the model caches as values: capture reads the
    module paths from the adapter, not from constants."""
    values_adapter = dataclasses.replace(OUTSIDE, key_projection="v_proj")
    sample = _samples(1)[0]
    inputs = OUTSIDE.model_inputs(loaded.processor, [sample.decoded()])
    with KeyCapture(loaded.model, values_adapter, [2], "pre_rope", torch.float32) as capture:
        captured = capture.run(**inputs)["layers.2.k_pre"][0]
    with torch.inference_mode():
        cache = loaded.model(**inputs, use_cache=True).past_key_values
    torch.testing.assert_close(captured, cache.layers[2].values[0].transpose(0, 1).flatten(1), rtol=1e-5, atol=1e-5)


def test_register_refuses_a_taken_name_and_the_config_lists_registered_families(registered):
    from experiments.validation import ConfigError, check

    with pytest.raises(ValueError, match="already registered"):
        register_adapter(dataclasses.replace(registered, family="llava"))
    assert register_adapter(registered, replace=True) is registered
    job = OmegaConf.to_object(_job(".cache-unused", []))
    check(job)  # the registered family is a valid model.family
    job.model.family = "not_a_family"
    with pytest.raises(ConfigError, match=registered.family):
        check(job)


def test_default_job_runs_on_the_registered_family(registered, cache_dir, tmp_path):
    """The default job (32 synthetic samples, three layers, MMD² + JSD, 5 splits), offline, on the new family."""
    run(_job(cache_dir, []), tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    results = pd.read_parquet(tmp_path / "results.parquet")
    assert set(results["model"]) == {"tiny_outside"} and sorted(results["layer_index"].unique()) == [0, 2, 3]
    assert len(results) == 3 * 3 * 2 * 5 and results["value"].notna().all()
    assert results[results["comparison"] == "image_vs_text"]["value_z"].min() > 3
    assert (tmp_path / "figures" / "tsne.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_default_job_runs_on_every_tiny_family(model, cache_dir, tmp_path):
    """Each built-in family's tiny model through the default job, offline, with all three layers and both metrics."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        run(compose(config_name="config", overrides=[f"model={model}", f"paths.cache_dir={cache_dir}", "logger=none"]),
            tmp_path)
    results = pd.read_parquet(tmp_path / "results.parquet")
    assert len(results) == 3 * 3 * 2 * 5 and results["value"].notna().all()
    assert results[results["comparison"] == "image_vs_text"]["value_z"].min() > 3


PLUGIN = '''
import dataclasses

from experiments.models.llava import LLAVA

ADAPTER = dataclasses.replace(LLAVA, family="plugin_llava")  # LLaVA-1.5 under a name the package does not know
'''


def test_an_installed_package_adds_a_family_to_launch_py(tmp_path, cache_dir):
    """A package advertising an adapter under the `keyspace.adapters` entry points runs through `launch.py`."""
    import os
    import subprocess
    import sys

    (tmp_path / "keyspace_plugin.py").write_text(PLUGIN)
    info = tmp_path / "keyspace_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: keyspace-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{models.ENTRY_POINTS}]\nplugin_llava = keyspace_plugin:ADAPTER\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "KEYSPACE_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "launch.py", "model=tiny_llava", "model.family=plugin_llava", "model.name=tiny_plugin",
               "benchmark.limit=6", "analysis.n_splits=2", "metric.n_permutations=20", "report.tsne_points=60",
               "logger=none", f"hydra.run.dir={tmp_path / 'job'}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_parquet(tmp_path / "job" / "results.parquet")
    assert set(results["model"]) == {"tiny_plugin"} and results["value"].notna().all()
    assert "plugin_llava" not in models.ADAPTERS  # this process never imported the plugin
