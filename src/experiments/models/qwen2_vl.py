"""Qwen2-VL (`Qwen2VLForConditionalGeneration`, e.g. Qwen/Qwen2-VL-7B-Instruct).

Qwen2.5-VL's predecessor: the same tokenizer, chat template, image processor and M-RoPE decoder, a vision
tower without window attention (so no fast path), and its own processor class.

    Qwen2VLForConditionalGeneration
    ├── model: Qwen2VLModel
    │   ├── visual: Qwen2VisionTransformerPretrainedModel   (full attention, 2x2 patch merger)
    │   └── language_model: Qwen2VLTextModel
    │       ├── embed_tokens, rotary_emb: Qwen2VLRotaryEmbedding (M-RoPE: t/h/w sections)
    │       └── layers[i]: Qwen2VLDecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=True)
    └── lm_head                                             (never run)

Image token: `config.image_token_id` (`<|image_pad|>`), prod(image_grid_thw) / 4 tokens per image.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from experiments.models.qwen2_5_vl import QWEN2_5_VL, load_processor, offline_processor

# The same data as Qwen2.5-VL (decoder path, projections, M-RoPE, special tokens) but its own classes and
# processor, and none of Qwen2.5-VL's vision fast paths (Qwen2-VL's vision tower has no window attention).
QWEN2_VL = replace(QWEN2_5_VL, family="qwen2_vl", model_class="Qwen2VLForConditionalGeneration",
                   config_class="Qwen2VLConfig", fast_paths=(),
                   load_processor=partial(load_processor, processor="Qwen2VLProcessor"),
                   offline_processor=partial(offline_processor, processor="Qwen2VLProcessor"))
