"""Mistral 3 (`Mistral3ForConditionalGeneration`, e.g. mistralai/Mistral-Small-3.1-24B-Instruct-2503).

    Mistral3ForConditionalGeneration
    ├── model: Mistral3Model
    │   ├── vision_tower: PixtralVisionModel             (2-D RoPE over patch rows / columns, vision side only)
    │   ├── multi_modal_projector                        (Mistral3PatchMerger: 2x2 patches -> one token)
    │   └── language_model: MistralModel
    │       ├── embed_tokens, rotary_emb: MistralRotaryEmbedding (1-D RoPE)
    │       └── layers[i]: MistralDecoderLayer
    │           └── self_attn.k_proj: Linear(hidden -> kv_heads*head_dim, bias=False)
    └── lm_head                                          (never run)

Image token: `config.image_token_index` (alias `image_token_id`, `[IMG]`). The image keeps its aspect ratio,
its longest edge at most `longest_edge` px, each side rounded up to a multiple of 28 (patch 14 x merge 2); the
processor writes one `[IMG]` per 28 x 28 block, `[IMG_BREAK]` after every row of blocks but the last and
`[IMG_END]` after it (so (H/28) x (W/28) image tokens; the break and end tokens count as text).
`image_sizes` reaches the forward with the pixels.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from experiments.models.adapter import ModelAdapter
from experiments.models.offline import training_corpus

PATCH = 14
# The first special tokens of Mistral's Tekken tokenizer, at their real ids ([IMG] = 10).
SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
            "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
# Tekken's pre-tokenizer split (then byte-level, no prefix space).
SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
         r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
# chat_template of mistralai/Mistral-Small-3.1-24B-Instruct-2503 (as transformers' Pixtral processor tests copy
# it; indentation dropped, every tag trims whitespace). Its default system prompt holds the day's date, so the
# adapter sends that prompt itself with the date fixed (`SYSTEM`).
CHAT_TEMPLATE = (
    "{%- set today = strftime_now(\"%Y-%m-%d\") %}"
    "{%- set default_system_message = \"You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, "
    "a French startup headquartered in Paris.\\nYour knowledge base was last updated on 2023-10-01. The current date "
    "is \" + today + \".\\n\\nWhen you're not sure about some information, you say that you don't have the "
    "information and don't make up anything.\\nIf the user's question is not clear, ambiguous, or does not provide "
    "enough context for you to accurately answer the question, you do not try to answer it right away and you "
    "rather ask the user to clarify their request (e.g. \\\"What are some good restaurants around me?\\\" => "
    "\\\"Where are you?\\\" or \\\"When is the next flight to Tokyo\\\" => \\\"Where do you travel from?\\\")\" %}"
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}"
    "{%- set loop_messages = messages[1:] %}{%- endif %}"
    "{%- else %}{%- set system_message = default_system_message %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' }}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] == 'image' or block['type'] == 'image_url' %}{{- '[IMG]' }}"
    "{%- else %}{{- raise_exception('Only text and image blocks are supported in message content!') }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- message['content'][0]['text'] + eos_token }}{%- endif %}"
    "{%- else %}{{- raise_exception('Only user, system and assistant roles are supported!') }}{%- endif %}"
    "{%- endfor %}"
)


# The template's default system message with its date fixed at the checkpoint's release (2025-03-17): rendered
# with `strftime_now`, the prompt and so the keys would change every day, while the key cache could not tell.
RELEASE_DATE = "2025-03-17"
SYSTEM = ("You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup "
          "headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is "
          f"{RELEASE_DATE}.\n\nWhen you're not sure about some information, you say that you don't have the "
          "information and don't make up anything.\nIf the user's question is not clear, ambiguous, or does not "
          "provide enough context for you to accurately answer the question, you do not try to answer it right "
          "away and you rather ask the user to clarify their request (e.g. \"What are some good restaurants around "
          "me?\" => \"Where are you?\" or \"When is the next flight to Tokyo\" => \"Where do you travel "
          "from?\")")


@cache
def processor_class() -> Any:
    """transformers' PixtralProcessor, unchanged, importable without torchvision.

    Its module takes one function, `get_resize_output_image_size` (used only to count tokens ahead), from the
    torchvision image processor's module, which imports torchvision; the PIL image processor's module defines
    the same function. Without torchvision that one import is answered by the PIL module, for the import only.
    """
    import importlib
    import sys

    from transformers.utils import is_torchvision_available

    package = "transformers.models.pixtral"
    torchvision_module = f"{package}.image_processing_pixtral"
    if is_torchvision_available() or torchvision_module in sys.modules:
        return importlib.import_module(f"{package}.processing_pixtral").PixtralProcessor
    sys.modules[torchvision_module] = importlib.import_module(f"{package}.image_processing_pil_pixtral")
    try:
        return importlib.import_module(f"{package}.processing_pixtral").PixtralProcessor
    finally:
        del sys.modules[torchvision_module]


def load_processor(path: str, revision: str | None, **kwargs: Any) -> Any:
    """The checkpoint's PixtralProcessor (PIL image backend); `AutoProcessor` refuses it without torchvision."""
    return processor_class().from_pretrained(path, revision=revision, backend="pil", **kwargs)


def tekken_tokenizer() -> Any:
    """Byte-level BPE split as Tekken splits, with Mistral's special tokens at their real ids, BOS prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_corpus() + [SYSTEM] * 10, trainers.BpeTrainer(  # the system prompt in few tokens
        vocab_size=1000, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", SPECIALS.index("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="right", additional_special_tokens=SPECIALS[3:])


def offline_processor(longest_edge: int = 1540, spatial_merge_size: int = 2) -> Any:
    """PixtralProcessor as Mistral Small 3.1 ships it (CLIP normalisation, patch 14) with the offline tokenizer."""
    from transformers import PixtralImageProcessorPil  # type: ignore[attr-defined]  # lazy export

    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": longest_edge}, patch_size={"height": PATCH, "width": PATCH},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    return processor_class()(image_processor=image_processor, tokenizer=tekken_tokenizer(), patch_size=PATCH,
                             spatial_merge_size=spatial_merge_size, chat_template=CHAT_TEMPLATE)


def token_ids(processor: Any) -> dict[str, Any]:
    tokenizer = processor.tokenizer
    return {"image_token_index": processor.image_token_id,
            "text_config": {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                            "pad_token_id": tokenizer.pad_token_id}}


MISTRAL3 = ModelAdapter(
    family="mistral3",
    model_class="Mistral3ForConditionalGeneration",
    config_class="Mistral3Config",
    decoder_layers="model.language_model.layers",
    attention="self_attn",
    key_projection="k_proj",
    query_projection="q_proj",
    image_token="image_token_index",
    positions="rope",
    load_processor=load_processor,
    offline_processor=offline_processor,
    token_ids=token_ids,
    system=SYSTEM,
)
