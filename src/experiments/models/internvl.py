"""InternVL (`InternVLForConditionalGeneration`, the transformers-native port, e.g. OpenGVLab/InternVL3-8B-hf).

    InternVLForConditionalGeneration
    ├── model: InternVLModel
    │   ├── vision_tower: InternVLVisionModel           (InternViT; its attention.k_proj: never hooked)
    │   ├── multi_modal_projector                        (after a 0.5 pixel shuffle: 2x2 patches -> one token)
    │   └── language_model: Qwen2Model
    │       ├── embed_tokens, rotary_emb: Qwen2RotaryEmbedding (1-D RoPE)
    │       └── layers[i]: Qwen2DecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=True)
    └── lm_head                                          (never run)

Image token: `config.image_token_id` (`<IMG_CONTEXT>`). The image processor tiles each image
(`GotOcr2ImageProcessor`, `crop_to_patches`: the best grid of up to `max_patches` tiles, plus a thumbnail
when there is more than one), and each tile gives `image_seq_length` = (tile / patch * 0.5)^2 tokens,
256 at 448 px. The processor writes `<img>` + tiles x `image_seq_length` x `<IMG_CONTEXT>` + `</img>`;
`<img>` and `</img>` count as text.
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, converted_once, image_only_processor_class
from experiments.models.offline import QWEN_SPECIALS, qwen_tokenizer

# InternVL's special tokens after Qwen2.5's, and the names its processor reads them by.
SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>"]
NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
         "video_token": "<video>"}
CHAT_TEMPLATE = (  # as shipped with OpenGVLab/InternVL3-*-hf (no default system prompt, unlike the original repo)
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def processor_class() -> Any:
    """InternVLProcessor without its video processor (which needs torchvision), its outputs converted to tensors
    once (`adapter.converted_once`)."""
    return converted_once(image_only_processor_class("InternVLProcessor"))


def load_processor(path: str, revision: str | None, **kwargs: Any) -> Any:
    """The checkpoint's InternVLProcessor (see `processor_class`), PIL image backend."""
    return processor_class().from_pretrained(path, revision=revision, backend="pil", **kwargs)


def offline_processor(tile_size: int = 448, image_seq_length: int = 256, max_patches: int = 12) -> Any:
    """InternVL preprocessing (ImageNet normalisation, tiles of `tile_size` px) with the offline tokenizer."""
    from transformers import GotOcr2ImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile_size, "width": tile_size}, min_patches=1, max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    return processor_class()(
        image_processor=image_processor, tokenizer=qwen_tokenizer(QWEN_SPECIALS + SPECIALS, **NAMED),
        image_seq_length=image_seq_length, chat_template=CHAT_TEMPLATE)


def token_ids(processor: Any) -> dict[str, Any]:
    tokenizer = processor.tokenizer
    return {"image_token_id": tokenizer.context_image_token_id,
            "text_config": {"bos_token_id": None, "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                            "pad_token_id": tokenizer.pad_token_id}}


INTERNVL = ModelAdapter(
    family="internvl",
    model_class="InternVLForConditionalGeneration",
    config_class="InternVLConfig",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_id",
    positions="rope",
    load_processor=load_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
)
