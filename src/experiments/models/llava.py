"""LLaVA-1.5 (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf).

    LlavaForConditionalGeneration
    ├── model: LlavaModel
    │   ├── vision_tower: CLIPVisionModel          (its own self_attn.k_proj: never hooked)
    │   ├── multi_modal_projector
    │   └── language_model: LlamaModel
    │       ├── embed_tokens, rotary_emb: LlamaRotaryEmbedding
    │       └── layers[i]: LlamaDecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=False)
    └── lm_head                                    (never run: extraction exits early)

Image token: `config.image_token_index` (alias `image_token_id`): (image_size / 14)^2 tokens per
image, 576 at 336 px (the CLS token of CLIP is dropped by the "default" feature strategy).
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, auto_processor
from experiments.models.offline import LLAVA_CHAT_TEMPLATE, llama_tokenizer

PATCH = 14


def offline_processor(image_size: int = 336) -> Any:
    """LlavaProcessor as llava-1.5 ships it: CLIP resize + centre crop to `image_size`, offline tokenizer."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor  # type: ignore[attr-defined]  # lazy export

    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size}),
        tokenizer=llama_tokenizer(), patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)


def token_ids(processor: Any) -> dict[str, Any]:
    tokenizer = processor.tokenizer
    return {"image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
            "text_config": {"pad_token_id": tokenizer.pad_token_id}}


LLAVA = ModelAdapter(
    family="llava",
    model_class="LlavaForConditionalGeneration",
    config_class="LlavaConfig",
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
