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

from functools import cache
from typing import Any

from experiments.models.adapter import ModelAdapter


@cache
def image_only_processor_class() -> type:
    """`Qwen2_5_VLProcessor` without its video processor.

    The video processor needs torchvision, which keyspace does not require. ProcessorMixin takes
    its sub-processors from the `__init__` signature, so dropping `video_processor` there gives an
    image + text processor that loads real checkpoints and the tiny ones alike.
    """
    from transformers import Qwen2_5_VLProcessor

    class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return Qwen2_5_VLImageOnlyProcessor


def load_processor(path: str, revision: str | None) -> Any:
    return image_only_processor_class().from_pretrained(path, revision=revision, backend="pil")


QWEN2_5_VL = ModelAdapter(
    family="qwen2_5_vl",
    model_class="Qwen2_5_VLForConditionalGeneration",
    decoder_layers="model.language_model.layers",
    load_processor=load_processor,
)
