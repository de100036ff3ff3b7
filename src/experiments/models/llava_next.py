"""LLaVA-NeXT / LLaVA-1.6 (`LlavaNextForConditionalGeneration`, e.g. llava-hf/llava-v1.6-vicuna-7b-hf).

The third family, added as one module plus one YAML: the module tree is LLaVA-1.5's (decoder at
`model.language_model.layers`), but images are tiled "anyres": a base view plus crops on the best
grid from `image_grid_pinpoints`, so the image-token count depends on the image's size and is
reported by the processor.

    LlavaNextForConditionalGeneration
    ├── model: LlavaNextModel
    │   ├── vision_tower: CLIPVisionModel, multi_modal_projector, image_newline
    │   └── language_model: LlamaModel (vicuna) / MistralModel
    │       └── layers[i].self_attn.k_proj
    └── lm_head
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, auto_processor
from experiments.models.llava import PATCH, token_ids
from experiments.models.offline import LLAVA_CHAT_TEMPLATE, llama_tokenizer


def offline_processor(image_size: int = 336, grid_pinpoints: list[list[int]] | None = None) -> Any:
    """LlavaNextProcessor with CLIP preprocessing at `image_size` and anyres tiling on `grid_pinpoints`."""
    from transformers import (  # type: ignore[attr-defined]  # lazy export
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    pinpoints = grid_pinpoints or [[image_size, image_size * 2], [image_size * 2, image_size],
                                   [image_size * 2, image_size * 2]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[list(p) for p in pinpoints])
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=llama_tokenizer(), patch_size=PATCH,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_CHAT_TEMPLATE)


LLAVA_NEXT = ModelAdapter(
    family="llava_next",
    model_class="LlavaNextForConditionalGeneration",
    config_class="LlavaNextConfig",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_index",
    positions="rope",
    load_processor=auto_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
)
