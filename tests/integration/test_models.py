"""Model loading as a user meets it: offline hub ids fail clearly; real processor settings give the
published image-token counts; random weights of a published architecture build offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments.models import ModelUnavailableError, decoder_depth, get_adapter, load_model

from ..conftest import REPO, tiny_model_config


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_unreachable_checkpoint_says_how_to_fix(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    cfg = tiny_model_config(name, tmp_path)
    for attempt in (decoder_depth, load_model):
        with pytest.raises(ModelUnavailableError) as info:
            attempt(cfg)
        message = str(info.value)
        assert cfg.path in message and "model.path=" in message and "model.weights=random" in message
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_llava_336_gives_576_image_tokens(tmp_path):
    cfg = tiny_model_config("llava", tmp_path)
    processor = get_adapter("llava").offline_processor(**(cfg.processor or {}))
    inputs = processor(images=[Image.new("RGB", (500, 375))], text=["USER: <image>\nWhat? ASSISTANT:"],
                       return_tensors="pt")
    assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 576


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule, written out from qwen-vl-utils (`smart_resize`)."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@pytest.mark.parametrize("size", [(448, 448), (640, 480), (2000, 300), (60, 40)], ids=str)
def test_qwen_image_tokens_follow_its_pixel_budget(size, tmp_path):
    cfg = tiny_model_config("qwen", tmp_path)
    adapter = get_adapter("qwen2_5_vl")
    processor = adapter.offline_processor(**cfg.processor)
    width, height = size
    inputs = processor(images=[Image.new("RGB", size)], text=["<|vision_start|><|image_pad|><|vision_end|>"],
                       return_tensors="pt")
    h, w = _smart_resize(height, width, 28, cfg.processor["min_pixels"], cfg.processor["max_pixels"])
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == (h // 28) * (w // 28)
    if size == (448, 448):
        assert (h // 28) * (w // 28) == 256


def test_random_weights_of_published_shape_build_in_memory(tmp_path):
    """`model=qwen model.weights=random` builds in memory (here a 2-layer cut of Qwen2.5-VL-7B on the meta device);
    the hub id left in `model.path` is not used, and nothing is written for it."""
    cfg = tiny_model_config("qwen", tmp_path)
    cfg.weights, cfg.device, cfg.dtype = "random", "meta", "bfloat16"
    assert cfg.path == "Qwen/Qwen2.5-VL-7B-Instruct" and cfg.build_dir is None
    cfg.architecture["text_config"]["num_hidden_layers"] = 2
    cfg.architecture["vision_config"]["depth"] = 2
    loaded = load_model(cfg)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.adapter.layers(loaded.model)[0].self_attn.k_proj.out_features == 512
    assert loaded.model.config.image_token_id == loaded.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not (REPO / "Qwen").exists() and not Path("Qwen").exists()
