"""Gemma 3 (`Gemma3ForConditionalGeneration`, e.g. google/gemma-3-4b-it).

    Gemma3ForConditionalGeneration
    ├── model: Gemma3Model
    │   ├── vision_tower: SiglipVisionModel            (its own self_attn.k_proj: never hooked)
    │   ├── multi_modal_projector: Gemma3MultiModalProjector  (avg pool to mm_tokens_per_image, RMSNorm, linear)
    │   └── language_model: Gemma3TextModel
    │       ├── embed_tokens (scaled by sqrt(hidden)), rotary_emb: Gemma3RotaryEmbedding (one theta per layer type)
    │       └── layers[i]: Gemma3DecoderLayer            (sliding-window local layers between global ones)
    │           └── self_attn: Gemma3Attention
    │               ├── k_proj: Linear(hidden -> kv_heads*head_dim, bias=False)
    │               └── k_norm: Gemma3RMSNorm(head_dim)  (per head, before RoPE: the pre-RoPE keys)
    └── lm_head                                         (never run)

Image token: `config.image_token_index` (`<image_soft_token>`), `mm_tokens_per_image` per image (256 at 896 px).
The processor's placeholder is `<start_of_image>`, which it expands to `\\n\\n<start_of_image>` + the soft tokens +
`<end_of_image>\\n\\n` (begin / end markers count as text). Its `token_type_ids` (1 on soft tokens) must reach the
forward: from them the model lets each image's tokens attend to each other both ways (`mask="bidirectional_image"`);
without them the decoder is silently causal everywhere. Queries and scores use `query_pre_attn_scalar`, and
local layers rotate with their own RoPE base (`rope_parameters["sliding_attention"]`). The norms run after the
transpose to [B, heads, S, head_dim] (`heads_first`). Random-weight builds draw the image projection, which
transformers initialises to zeros (`random_image_projection`).
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, auto_processor
from experiments.models.offline import gemma_tokenizer

IMAGE_TOKENS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}

# chat_template.json of google/gemma-3-4b-it (the same in the 12b/27b -it checkpoints): <bos>, a system message
# folded into the first user turn, roles user/model, text parts trimmed, each image as <start_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def offline_processor(image_size: int = 896, image_seq_length: int = 256) -> Any:
    """Gemma3Processor as gemma-3-*-it ships it (SigLIP resize to `image_size`, mean/std 0.5, no pan-and-scan),
    `image_seq_length` soft tokens per image (= the architecture's `mm_tokens_per_image`), offline tokenizer."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor  # type: ignore[attr-defined]  # lazy export

    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=gemma_tokenizer(IMAGE_TOKENS),
                           chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=image_seq_length)


def token_ids(processor: Any) -> dict[str, Any]:
    tokenizer = processor.tokenizer
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    return {"image_token_index": tokenizer.image_token_id, "boi_token_index": tokenizer.boi_token_id,
            "eoi_token_index": tokenizer.eoi_token_id,
            "text_config": {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                            "eos_token_id": eos}}


def random_image_projection(model: Any) -> None:
    """Draw the image projection like the other linear weights (N(0, initializer_range^2)); transformers
    initialises it to zeros, which with random weights would feed every image to the decoder as zeros."""
    import torch

    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=model.config.initializer_range)


GEMMA3 = ModelAdapter(
    family="gemma3",
    model_class="Gemma3ForConditionalGeneration",
    config_class="Gemma3Config",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_norm",
    query_projection="q_norm",
    image_token="image_token_index",
    positions="rope",
    mask="bidirectional_image",
    heads_first=True,
    load_processor=auto_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
    random_init=(random_image_projection,),
)
