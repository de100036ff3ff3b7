"""PaliGemma (`PaliGemmaForConditionalGeneration`, e.g. google/paligemma2-10b-pt-448).

    PaliGemmaForConditionalGeneration
    ├── model: PaliGemmaModel
    │   ├── vision_tower: SiglipVisionModel             (its own self_attn.k_proj: never hooked)
    │   ├── multi_modal_projector: Linear(vision hidden -> projection_dim)
    │   └── language_model: Gemma2Model (PaliGemma 2) / GemmaModel (PaliGemma 1)
    │       ├── embed_tokens (scaled by sqrt(hidden)), rotary_emb
    │       └── layers[i]: Gemma2DecoderLayer             (PaliGemma 2: sliding-window and global layers alternate)
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=False)
    └── lm_head                                          (never run)

Image token: `config.image_token_index` (`<image>`), (image_size / 14)^2 per image (1024 at 448 px). The
processor puts the image tokens first, then `<bos>`, the prompt and a final "\\n"; its `token_type_ids` (0 on that
whole prefix) make the prefix attend both ways (`mask="prefix"`). Positions start at 1. The checkpoints ship no
chat template, so keyspace gives the processor `PROMPT_TEMPLATE`: one `<image>` per image, then the turn's text,
which yields exactly the prompt layout of PaliGemma's own processor. Gemma 2's attention has logit soft-capping,
which sdpa cannot do, so PaliGemma 2 runs with eager attention.
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, converted_once
from experiments.models.offline import gemma_tokenizer

PATCH = 14

# Not a chat format (the checkpoints have none): the images' placeholders, then the text parts as they are; the
# processor then inserts "<bos>" after the last image and appends "\n", as for any prompt passed to it.
PROMPT_TEMPLATE = (
    "{% for message in messages if message['role'] == 'user' %}"
    "{% for item in message['content'] if item['type'] == 'image' %}<image>{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}"
    "{% endfor %}"
)


def processor_class() -> Any:
    """transformers' `PaliGemmaProcessor`, its outputs converted to tensors once (`adapter.converted_once`) and
    without the training `labels` (passed to the forward they would ask for a loss over every position, which
    `logits_to_keep=1` cannot give)."""
    from transformers import PaliGemmaProcessor  # type: ignore[attr-defined]  # lazy export

    return converted_once(PaliGemmaProcessor, drop=("labels",))


def load_processor(path: str, revision: str | None, **kwargs: Any) -> Any:
    """The checkpoint's PaliGemma processor (PIL backend), with `PROMPT_TEMPLATE` as its chat template."""
    processor = processor_class().from_pretrained(path, revision=revision, backend="pil", **kwargs)
    processor.chat_template = PROMPT_TEMPLATE
    return processor


def offline_processor(image_size: int = 448) -> Any:
    """PaliGemmaProcessor as the -pt-448 checkpoints ship it (SigLIP resize to `image_size`, bicubic, mean/std 0.5,
    (image_size / 14)^2 image tokens), offline tokenizer; the processor adds `<image>` and the loc/seg tokens."""
    from transformers import SiglipImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                              image_seq_length=(image_size // PATCH) ** 2)
    return processor_class()(image_processor=image_processor, tokenizer=gemma_tokenizer(),
                             chat_template=PROMPT_TEMPLATE)


def token_ids(processor: Any) -> dict[str, Any]:
    tokenizer = processor.tokenizer
    return {"image_token_index": processor.image_token_id,
            "text_config": {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                            "eos_token_id": tokenizer.eos_token_id}}


PALIGEMMA = ModelAdapter(
    family="paligemma",
    model_class="PaliGemmaForConditionalGeneration",
    config_class="PaliGemmaConfig",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_index",
    positions="rope",
    mask="prefix",
    load_processor=load_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
)
