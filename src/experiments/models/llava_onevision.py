"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf).

    LlavaOnevisionForConditionalGeneration
    ├── model: LlavaOnevisionModel
    │   ├── vision_tower: SiglipVisionModel        (its own self_attn.k_proj: never hooked)
    │   ├── multi_modal_projector, image_newline
    │   └── language_model: Qwen2Model
    │       ├── embed_tokens, rotary_emb: Qwen2RotaryEmbedding (1-D RoPE)
    │       └── layers[i]: Qwen2DecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=True)
    └── lm_head                                    (never run)

Image token: `config.image_token_index` (alias `image_token_id`, `<image>`). A prompt's only image is
tiled "anyres_max_9": the base view ((image_size / patch)^2 tokens, SigLIP has no CLS, "full" strategy)
plus the crops on the best grid of `image_grid_pinpoints`, unpadded to the image's aspect ratio, with an
`image_newline` token closing each row (rows downsampled when they exceed 9 crops' worth). So the count
depends on the image's size; the processor computes it, the model rebuilds it in `pack_image_features`.
Each image of a multi-image prompt is one base view plus one newline instead.
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, image_only_processor_class
from experiments.models.offline import qwen_tokenizer

# Qwen2-7B-Instruct's special tokens, then the two the -hf conversion adds (ids 151643-151647 on the hub)
PROCESSOR = "LlavaOnevisionProcessor"  # built without its video processor (which needs torchvision)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
MEAN = STD = [0.5, 0.5, 0.5]  # SigLIP normalisation (google/siglip-so400m-patch14-384 preprocessor_config.json)

# llava-hf/llava-onevision-qwen2-7b-ov-hf chat template, as transformers' conversion script
# (convert_llava_onevision_weights_to_hf.py) saves it: images first, then videos, then the turn's text.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_processor(path: str, revision: str | None, **_: Any) -> Any:
    """The checkpoint's processor without its video processor (which needs torchvision), PIL image backend.

    Its settings are the checkpoint's own: `model.processor` only shapes offline builds (`offline_processor`),
    whose saved folder already holds them.
    """
    return image_only_processor_class(PROCESSOR).from_pretrained(path, revision=revision, backend="pil")


def offline_processor(image_size: int = 384, patch_size: int = 14, grid_pinpoints: list[list[int]] | None = None,
                      vision_aspect_ratio: str = "anyres_max_9") -> Any:
    """LlavaOnevisionProcessor as the -hf checkpoints ship it: SigLIP views of `image_size`, anyres tiling on
    `grid_pinpoints` (by default 1x1 to 6x6 crops), (image_size / patch_size)^2 tokens per view, offline tokenizer."""
    from transformers import LlavaOnevisionImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    pinpoints = grid_pinpoints or [[image_size * i, image_size * j] for i in range(1, 7) for j in range(1, 7)]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=[list(p) for p in pinpoints],
        image_mean=MEAN, image_std=STD)
    return image_only_processor_class(PROCESSOR)(
        image_processor=image_processor, tokenizer=qwen_tokenizer(SPECIALS), chat_template=CHAT_TEMPLATE,
        num_image_tokens=(image_size // patch_size) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio)


def token_ids(processor: Any) -> dict[str, Any]:
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    return {"image_token_index": ids["<image>"], "video_token_index": ids["<video>"],
            "text_config": {"bos_token_id": None, "eos_token_id": ids["<|im_end|>"],
                            "pad_token_id": ids["<|endoftext|>"]}}


LLAVA_ONEVISION = ModelAdapter(
    family="llava_onevision",
    model_class="LlavaOnevisionForConditionalGeneration",
    config_class="LlavaOnevisionConfig",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_index",
    positions="rope",
    load_processor=load_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
)
