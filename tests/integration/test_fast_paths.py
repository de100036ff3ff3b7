"""Every fast path equals the transformers module it replaces (tiny models, CPU, float32)."""

from __future__ import annotations

import dataclasses

import torch
from PIL import Image

from experiments.benchmarks.sample import Sample
from experiments.keys.extract import extract_keys
from experiments.models import load_model

from ..conftest import tiny_model_config


def test_grouped_window_attention_equals_transformers(cache_dir):
    cfg = tiny_model_config("tiny_qwen", cache_dir)
    plain = load_model(dataclasses.replace(cfg, fast_paths=False))
    fast = load_model(cfg)
    assert fast.model.model.visual.blocks[0].attn.forward.__name__ == "grouped_window_attention"
    assert plain.model.model.visual.blocks[0].attn.forward.__name__ == "forward"
    # sizes whose patch grids cut windows of several lengths (edges), one image per sample
    samples = [Sample(id=str(i), parts=(Image.new("RGB", size, (30 * i, 90, 200 - 20 * i)), "Describe."))
               for i, size in enumerate([(300, 300), (224, 168), (500, 120), (90, 90)])]
    inputs = plain.adapter.model_inputs(plain.processor, samples)
    with torch.inference_mode():
        reference = plain.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        ours = fast.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    torch.testing.assert_close(ours.pooler_output, reference.pooler_output, rtol=0, atol=1e-6)
    layers = [0, 3]
    kept_ref, _ = extract_keys(plain, list(enumerate(samples)), layers, "post_rope", 4, None, 0, torch.float32)
    kept_fast, _ = extract_keys(fast, list(enumerate(samples)), layers, "post_rope", 4, None, 0, torch.float32)
    for a, b in zip(kept_ref, kept_fast, strict=True):
        for layer in layers:
            torch.testing.assert_close(b.keys[layer], a.keys[layer], rtol=0, atol=1e-6)
