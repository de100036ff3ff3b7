"""The non-causal families (Gemma 3: bidirectional image blocks and sliding-window layers; PaliGemma 2: prefix-LM
mask and sliding-window layers), against the model's own eager attention weights and KV cache:

- the processor's `token_type_ids` reach the forward through `ModelAdapter.model_inputs` and set the mask: Gemma 3's
  first image token attends to its image's last one (not without them), text stays causal; PaliGemma's whole prompt
  is one bidirectional prefix;
- a sliding-window layer's keys are captured for the whole prompt (the cache `KeyCapture` builds has no config),
  while a cache built with the config keeps only the last `sliding_window - 1` keys of such a layer.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from experiments.benchmarks import load_samples
from experiments.config import BenchmarkConfig
from experiments.keys.capture import KeyCapture, key_name

from ..conftest import tiny_model_config

FAMILIES = ["tiny_gemma3", "tiny_paligemma"]


@pytest.fixture(scope="module", params=FAMILIES, ids=FAMILIES)
def eager(request, cache_dir):
    from experiments.models import load_model

    cfg = tiny_model_config(request.param, cache_dir)
    cfg.attn_implementation = "eager"
    loaded = load_model(cfg)
    sample = load_samples(BenchmarkConfig(name="synthetic", limit=1, style="mixed", seed=5)).samples[0].decoded()
    return loaded, loaded.adapter.model_inputs(loaded.processor, [sample])


def test_token_type_ids_set_the_mask(eager):
    loaded, inputs = eager
    assert "token_type_ids" in inputs
    with torch.inference_mode():
        weights = loaded.model(**inputs, output_attentions=True).attentions[0][0]  # layer 0 [heads, S, S]
        plain = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        causal = loaded.model(**plain, output_attentions=True).attentions[0][0]
    image = (inputs["input_ids"][0] == loaded.adapter.image_token_id(loaded.model)).nonzero().squeeze(1)
    first, last = int(image[0]), int(image[-1])
    assert (weights[:, first, last] > 0).all() and (causal[:, first, last] == 0).all()
    if loaded.adapter.mask == "bidirectional_image":
        assert (weights[:, first - 1, first:] == 0).all()  # the text before the image stays causal
    else:  # prefix: every prompt token (images, <bos>, text, "\n") sees every other one
        assert loaded.adapter.mask == "prefix" and (weights > 0).all()


def test_sliding_layers_keep_every_key(eager):
    loaded, inputs = eager
    text = loaded.model.config.get_text_config()
    sliding = text.layer_types.index("sliding_attention")
    length = inputs["input_ids"].shape[1]
    assert length > text.sliding_window, "the prompt must outrun the window for this test to mean anything"
    with KeyCapture(loaded.model, loaded.adapter, [sliding], "post_rope", torch.float32) as capture:
        captured = capture.run(**inputs)[key_name(sliding, "post_rope")][0]
    with torch.inference_mode():
        full = loaded.model(**inputs, use_cache=True, cache=DynamicCache()).past_key_values.layers[sliding].keys
        windowed = loaded.model(**inputs, use_cache=True, cache=DynamicCache(config=text)).past_key_values
    assert captured.shape[0] == length
    torch.testing.assert_close(captured, full[0].transpose(0, 1).flatten(1), rtol=0, atol=0)
    assert windowed.layers[sliding].keys.shape[2] == text.sliding_window - 1
    torch.testing.assert_close(windowed.layers[sliding].keys, full[:, :, -(text.sliding_window - 1):], rtol=0, atol=0)
