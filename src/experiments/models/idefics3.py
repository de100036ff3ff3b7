"""Idefics3 (`Idefics3ForConditionalGeneration`, e.g. HuggingFaceM4/Idefics3-8B-Llama3).

    Idefics3ForConditionalGeneration
    ├── model: Idefics3Model
    │   ├── vision_model: Idefics3VisionTransformer    (SigLIP; its own self_attn.k_proj: never hooked)
    │   ├── connector: Idefics3Connector               (pixel shuffle by scale_factor, then a linear map)
    │   └── text_model: LlamaModel                     (Llama 3.1, 1-D RoPE)
    │       ├── embed_tokens, rotary_emb: LlamaRotaryEmbedding
    │       └── layers[i]: LlamaDecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=False)
    └── lm_head                                        (never run)

Image token: `config.image_token_id` (`<image>`). The image processor resizes the longest edge to
`size.longest_edge`, rounds both sides up to multiples of `max_image_size.longest_edge` and cuts that into
rows x cols tiles, plus one global view of the whole image; each view gives `image_seq_len` =
(image_size / patch_size)^2 / scale_factor^2 tokens (169 for Idefics3-8B), so (rows*cols + 1) x 169 in all
(one view only when the image fits a single tile). The processor wraps every view in text tokens:
`<fake_token_around_image>`, `<row_i_col_j>` before a tile, `<global-img>` before the global view, and a
newline after each row of tiles; these count as text, like Qwen's vision start/end.
"""

from __future__ import annotations

from typing import Any

from experiments.models.adapter import ModelAdapter, converted_once
from experiments.models.offline import training_corpus

BOS, PAD = "<|begin_of_text|>", "<|reserved_special_token_0|>"  # Llama 3's; PAD is the checkpoint's pad (128002)
SPECIALS = [BOS, "<|end_of_text|>", PAD, "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
            *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]  # the last 40: Idefics3's own

# HuggingFaceM4/Idefics3-8B-Llama3 chat_template.json: "User:" directly followed by an image that opens the turn,
# "User: " otherwise; every turn ends with <end_of_utterance>.
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def llama3_tokenizer() -> Any:
    """Byte-level BPE with `SPECIALS` as ids 0..; BOS prepended as Llama 3 does, `<end_of_utterance>` as EOS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_corpus(), trainers.BpeTrainer(
        vocab_size=800, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, tok.token_to_id(BOS))])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token="<end_of_utterance>",
                                   pad_token=PAD, padding_side="right", additional_special_tokens=SPECIALS[3:])


def processor_class() -> Any:
    """Idefics3Processor, its outputs converted to tensors once (`adapter.converted_once`)."""
    from transformers import Idefics3Processor  # type: ignore[attr-defined]  # lazy export

    return converted_once(Idefics3Processor)


def settings(longest_edge: int | None = None, max_image_size: int | None = None,
             image_seq_len: int | None = None) -> dict[str, Any]:
    """`model.processor` values in the processor's own form (image sizes as `{"longest_edge": ..}`); None = keep."""
    sides = {"size": longest_edge, "max_image_size": max_image_size}
    values: dict[str, Any] = {key: {"longest_edge": int(side)} for key, side in sides.items() if side}
    if image_seq_len:
        values["image_seq_len"] = int(image_seq_len)
    return values


def load_processor(path: str, revision: str | None, **processor: int) -> Any:
    """The checkpoint's processor as `processor_class` (PIL backend), the `model.processor` values given overriding
    its own."""
    return processor_class().from_pretrained(path, revision=revision, backend="pil", **settings(**processor))


def offline_processor(longest_edge: int = 4 * 364, max_image_size: int = 364, image_seq_len: int = 169) -> Any:
    """Idefics3Processor as Idefics3-8B ships it (images up to `longest_edge`, tiles of `max_image_size`,
    `image_seq_len` tokens per view), with the offline tokenizer."""
    from transformers import Idefics3ImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    images = settings(longest_edge, max_image_size)
    return processor_class()(image_processor=Idefics3ImageProcessorPil(**images), tokenizer=llama3_tokenizer(),
                             image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE)


def token_ids(processor: Any) -> dict[str, Any]:
    tokenizer = processor.tokenizer
    return {"image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
            "text_config": {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                            "pad_token_id": tokenizer.pad_token_id}}


IDEFICS3 = ModelAdapter(
    family="idefics3",
    model_class="Idefics3ForConditionalGeneration",
    config_class="Idefics3Config",
    decoder_layers="model.text_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_id",
    positions="rope",
    load_processor=load_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
)
