"""The published architectures in conf/model/ have the published sizes (built on the meta device)."""

from __future__ import annotations

import pytest
import torch

from experiments.models import get_adapter
from experiments.models.random_init import architecture_config

from ..conftest import tiny_model_config

# name -> (published parameter count, decoder layers, k_proj in -> out)
PUBLISHED = {
    "llava": (7.06e9, 32, (4096, 4096)),        # llava-hf/llava-1.5-7b-hf
    "qwen": (8.29e9, 28, (3584, 512)),          # Qwen/Qwen2.5-VL-7B-Instruct
    "llava_next": (7.06e9, 32, (4096, 4096)),   # llava-hf/llava-v1.6-vicuna-7b-hf
    "idefics3": (8.46e9, 32, (4096, 1024)),     # HuggingFaceM4/Idefics3-8B-Llama3
    "gemma3": (4.30e9, 34, (2560, 1024)),       # google/gemma-3-4b-it
    "paligemma": (9.66e9, 42, (3584, 2048)),    # google/paligemma2-10b-pt-448
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_count(name, tmp_path):
    import transformers

    cfg = tiny_model_config(name, tmp_path)
    adapter = get_adapter(cfg.family)
    params, depth, (k_in, k_out) = PUBLISHED[name]
    with torch.device("meta"):
        model = getattr(transformers, adapter.model_class)(architecture_config(adapter, cfg.architecture))
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, rel=0.005), f"{name}: {count / 1e9:.3f} B"
    layers = adapter.layers(model)
    assert len(layers) == depth
    k_proj = layers[0].self_attn.k_proj
    assert (k_proj.in_features, k_proj.out_features) == (k_in, k_out)
