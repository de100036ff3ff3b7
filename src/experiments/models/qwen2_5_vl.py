"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, e.g. Qwen/Qwen2.5-VL-7B-Instruct).

    Qwen2_5_VLForConditionalGeneration
    ├── model: Qwen2_5_VLModel
    │   ├── visual: Qwen2_5_VisionTransformerPretrainedModel   (window attention, 2x2 patch merger)
    │   └── language_model: Qwen2_5_VLTextModel
    │       ├── embed_tokens, rotary_emb: Qwen2_5_VLRotaryEmbedding (M-RoPE: t/h/w sections)
    │       └── layers[i]: Qwen2_5_VLDecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=True)
    └── lm_head                                                (never run)

Image token: `config.image_token_id` (`<|image_pad|>`), prod(image_grid_thw) / 4 tokens per image,
between `<|vision_start|>` and `<|vision_end|>` (which count as text). The processor's
`mm_token_type_ids` must reach the forward, or positions silently fall back to 1-D.
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, image_only_processor_class
from experiments.models.fast_vision import use_grouped_window_attention
from experiments.models.offline import QWEN_CHAT_TEMPLATE, QWEN_SPECIALS, qwen_tokenizer


def pixel_bounds(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """Qwen's min/max pixel budget in the image processor's v5 form (`size`, not the deprecated kwargs)."""
    return {"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}}


def load_processor(path: str, revision: str | None, min_pixels: int | None = None,
                   max_pixels: int | None = None, processor: str = "Qwen2_5_VLProcessor") -> Any:
    """The checkpoint's processor (image + text), its pixel budget overridden when both bounds are given."""
    bounds = pixel_bounds(min_pixels, max_pixels) if min_pixels and max_pixels else {}
    return image_only_processor_class(processor).from_pretrained(path, revision=revision, backend="pil", **bounds)


def offline_processor(min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280,
                      processor: str = "Qwen2_5_VLProcessor") -> Any:
    """Qwen-VL preprocessing (patch 14, 2x2 merge, temporal patch 2) with the offline tokenizer."""
    from transformers import Qwen2VLImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    image_processor = Qwen2VLImageProcessorPil(**pixel_bounds(min_pixels, max_pixels), patch_size=14,
                                               temporal_patch_size=2, merge_size=2)
    return image_only_processor_class(processor)(image_processor=image_processor, tokenizer=qwen_tokenizer(),
                                                 chat_template=QWEN_CHAT_TEMPLATE)


def token_ids(processor: Any) -> dict[str, Any]:
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "text_config": {"bos_token_id": None, "eos_token_id": ids["<|im_end|>"],
                            "pad_token_id": ids["<|endoftext|>"]}}


QWEN2_5_VL = ModelAdapter(
    family="qwen2_5_vl",
    model_class="Qwen2_5_VLForConditionalGeneration",
    config_class="Qwen2_5_VLConfig",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_id",
    positions="mrope",
    load_processor=load_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
    fast_paths=(use_grouped_window_attention,),
)
