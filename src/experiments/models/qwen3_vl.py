"""Qwen3-VL (`Qwen3VLForConditionalGeneration`, e.g. Qwen/Qwen3-VL-8B-Instruct).

    Qwen3VLForConditionalGeneration
    ├── model: Qwen3VLModel
    │   ├── visual: Qwen3VLVisionModel        (patch 16, 2x2 merger, deepstack_merger_list)
    │   └── language_model: Qwen3VLTextModel
    │       ├── embed_tokens, rotary_emb: Qwen3VLTextRotaryEmbedding (interleaved M-RoPE: t/h/w)
    │       └── layers[i]: Qwen3VLTextDecoderLayer
    │           └── self_attn: Qwen3VLTextAttention
    │               ├── k_proj: Linear(hidden -> kv_heads*head_dim, bias=False)
    │               └── k_norm: RMSNorm(head_dim)   per head, before RoPE: the pre-RoPE key site
    └── lm_head                                    (never run)

Image token: `config.image_token_id` (`<|image_pad|>`), prod(image_grid_thw) / 4 tokens per image,
between `<|vision_start|>` and `<|vision_end|>` (which count as text). DeepStack adds the vision tower's
intermediate features to the image tokens' hidden states after each of the first
`len(vision_config.deepstack_visual_indexes)` decoder layers, so those layers' inputs differ from the
previous layer's output there. The processor's `mm_token_type_ids` must reach the forward (M-RoPE).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from experiments.models.adapter import image_only_processor_class
from experiments.models.offline import qwen_tokenizer
from experiments.models.qwen2_5_vl import QWEN2_5_VL, load_processor, pixel_bounds

PATCH = 16
MEAN = STD = [0.5, 0.5, 0.5]  # the SigLIP-2 normalisation of Qwen3-VL's preprocessor_config.json

# Qwen/Qwen3-VL-8B-Instruct chat_template.json (the Qwen3 template: no default system prompt, unlike
# Qwen2.5-VL's), written from memory of the released file; tool calls render as in the Qwen3 text models.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}{%- if content is string %}{{- content }}{%- else %}"
    "{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- render_content(messages[0].content, false) + '\\n\\n' }}{%- endif %}"
    "{{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}{%- set content = render_content(message.content, true) %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' + content }}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}"
    "{{- tool_call.arguments | tojson }}{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def offline_processor(min_pixels: int = 256 * 256, max_pixels: int = 4096 * 4096) -> Any:
    """Qwen3-VL preprocessing (patch 16, 2x2 merge, temporal patch 2, mean/std 0.5) with the offline tokenizer.

    Qwen3-VL keeps Qwen2-VL's image processor class and its special tokens (`<|image_pad|>` and the
    vision markers), so the offline Qwen tokenizer serves it unchanged.
    """
    from transformers import Qwen2VLImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    image_processor = Qwen2VLImageProcessorPil(**pixel_bounds(min_pixels, max_pixels), patch_size=PATCH,
                                               temporal_patch_size=2, merge_size=2, image_mean=MEAN, image_std=STD)
    return image_only_processor_class("Qwen3VLProcessor")(image_processor=image_processor, tokenizer=qwen_tokenizer(),
                                                          chat_template=QWEN3_VL_CHAT_TEMPLATE)


# Qwen2.5-VL's data (decoder path, M-RoPE, special-token ids), with Qwen3-VL's classes, its per-head q/k norms
# as the pre-RoPE sites and no vision fast path (no window attention in its tower).
QWEN3_VL = replace(QWEN2_5_VL, family="qwen3_vl", model_class="Qwen3VLForConditionalGeneration",
                   config_class="Qwen3VLConfig", key_projection="k_norm", query_projection="q_norm", fast_paths=(),
                   load_processor=partial(load_processor, processor="Qwen3VLProcessor"),
                   offline_processor=offline_processor)
