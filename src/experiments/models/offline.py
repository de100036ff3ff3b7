"""Offline tokenizers and chat templates, for checkpoints built here with random weights.

Nothing can be downloaded on our machines, so `weights=random` builds a tokenizer by training a small
BPE with `tokenizers` (Llama-style Metaspace for the LLaVA families, Qwen2-style byte-level for
Qwen2.5-VL) on a corpus that covers every word the synthetic benchmark emits. The chat templates are
the ones the real checkpoints ship. Recipe verified in `shared/notes/tiny_vlm/`.
"""

from __future__ import annotations

from typing import Any

from experiments.benchmarks.synthetic import vocabulary_text

CORPUS = [
    "A photo of a cat sitting on a red mat.",
    "Describe the image in detail.",
    "What is shown in this picture? The picture shows a dog and a ball.",
    "USER: ASSISTANT: system user assistant You are a helpful assistant.",
    "How many objects are in the image? There are three objects.",
    "line one\nline two\n",
]

# llava-hf/llava-1.5-7b-hf and llava-v1.6-vicuna chat_template.json (also in transformers' own LLaVA
# processor tests): all images of a turn first, then its texts, then "ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN_CHAT_TEMPLATE = (  # as shipped with Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def training_corpus() -> list[str]:
    """What the offline tokenizers train on: every word the synthetic benchmark and the chat templates emit."""
    return (CORPUS + vocabulary_text()) * 10


def llama_tokenizer(image_token: str = "<image>") -> Any:
    """Metaspace BPE with `<unk> <s> </s> <pad>`, BOS prepended, `image_token` as an added special token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(training_corpus(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    return tokenizer


def qwen_tokenizer(specials: list[str] = QWEN_SPECIALS, **named_tokens: str) -> Any:
    """Byte-level BPE with `specials` as ids 0.. (by default the 14 Qwen2-VL special tokens, ids 0-13).

    `named_tokens` (e.g. `context_image_token="<IMG_CONTEXT>"`) become tokenizer attributes saved with it, the
    way InternVL's -hf tokenizer names its image tokens for its processor.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(training_corpus(), trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="right", additional_special_tokens=specials[1:], **named_tokens)


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]  # ids 0-6


def gemma_tokenizer(named: dict[str, str] | None = None) -> Any:
    """`GemmaTokenizer` (spaces as "▁", split after each space, byte fallback, `<bos>` prepended) over a trained BPE.

    Args:
        named: special tokens the family's processor reads as tokenizer attributes, name -> token (Gemma 3:
            `image_token`, `boi_token`, `eoi_token`); they follow `GEMMA_SPECIALS` in the vocabulary.
    """
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    named = named or {}
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.train_from_iterator(training_corpus(), trainers.BpeTrainer(
        vocab_size=700, special_tokens=GEMMA_SPECIALS + list(named.values()), show_progress=False))
    trained = json.loads(tok.to_str())["model"]
    merges: Any = [tuple(m) for m in trained["merges"]]  # `tokenizers` takes pairs (typed as str in transformers)
    tokenizer = GemmaTokenizer(vocab=trained["vocab"], merges=merges,
                               add_bos_token=True, padding_side="right", extra_special_tokens=named)
    tokenizer.add_special_tokens({"additional_special_tokens": GEMMA_SPECIALS[5:]})
    return tokenizer
