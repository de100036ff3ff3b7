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

Image token: `config.image_token_index` (alias `image_token_id`), 576 tokens per 336 px image.
"""

from __future__ import annotations

from experiments.models.adapter import ModelAdapter, auto_processor

LLAVA = ModelAdapter(
    family="llava",
    model_class="LlavaForConditionalGeneration",
    decoder_layers="model.language_model.layers",
    load_processor=auto_processor,
)
