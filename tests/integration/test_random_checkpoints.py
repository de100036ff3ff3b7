"""Built random-weight checkpoints: an override gets its own build, and a folder that disagrees fails loudly."""

from __future__ import annotations

import json

import pytest

from experiments.models import load_model
from experiments.models.random_init import checkpoint_dir

from ..conftest import tiny_model_config


def _kv_heads(cfg, value):
    cfg.architecture["text_config"]["num_key_value_heads"] = value


def _image_size(cfg, value):
    cfg.processor["image_size"] = value


@pytest.mark.parametrize(("override", "value", "loaded_value"), [
    (_kv_heads, 4, lambda loaded: loaded.model.config.text_config.num_key_value_heads),
    (_image_size, 112, lambda loaded: loaded.processor.image_processor.crop_size["height"]),
], ids=["architecture.text_config.num_key_value_heads", "processor.image_size"])
def test_override_after_default_build_loads_the_override(tmp_path, override, value, loaded_value):
    default = tiny_model_config("tiny_llava", tmp_path)
    assert loaded_value(load_model(default)) != value
    changed = tiny_model_config("tiny_llava", tmp_path)
    override(changed, value)
    assert checkpoint_dir(changed) != checkpoint_dir(default)
    assert loaded_value(load_model(changed)) == value


def test_saved_config_that_disagrees_is_never_loaded(tmp_path):
    cfg = tiny_model_config("tiny_llava", tmp_path)
    load_model(cfg)
    config_file = checkpoint_dir(cfg) / "config.json"
    saved = json.loads(config_file.read_text())
    saved["text_config"]["num_key_value_heads"] = 1
    config_file.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"text_config\.num_key_value_heads: 2 != 1.*delete the folder"):
        load_model(cfg)
