"""What keyspace needs to know about a model family, declared once per family as data.

An adapter names the transformers classes, the attribute paths of the text decoder's layers, of the
attention module inside a layer and of the key / query projections inside it, the config field that
holds the image-token id, the positional scheme, and how the processor is loaded (or built offline for
random weights). Everything else (hooks, cache reading, masks) is shared code in `keys/`, which reads
modules only through these paths. A family outside the package is one `ModelAdapter` passed to
`experiments.models.register_adapter`, plus a model config (YAML in `conf/model/` or a `ModelConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from experiments.benchmarks.sample import Sample

if TYPE_CHECKING:
    import torch


POSITIONS = ("rope", "mrope", "other")  # 1-D RoPE | multimodal RoPE (t/h/w sections) | anything else
# causal | image tokens also attend to later tokens of their own image | the prefix (images + prompt) attends both ways
MASKS = ("causal", "bidirectional_image", "prefix")


@dataclass(frozen=True)
class ModelAdapter:
    """Declarative description of one VLM family.

    Attributes:
        family: registry key, written into the config (`model.family`).
        model_class: transformers class name of the full image-text-to-text model.
        config_class: transformers class name of its config (built from `model.architecture`).
        load_processor: `(path, revision, **model.processor) -> processor` of a real checkpoint.
        offline_processor: `(**model.processor) -> processor` built without downloads (weights=random).
        token_ids: `processor -> config fields` that tie the architecture's special-token ids to the
            offline tokenizer (image token, padding, ...), so random-weight models accept its ids.
        decoder_layers: attribute path from the model to its text decoder's `nn.ModuleList`.
        attention: attribute path from one decoder layer to its attention module (whose forward
            receives `position_embeddings` and writes the KV cache).
        key_projection: attribute path from the attention module to the module whose output is the pre-RoPE
            keys: the key projection, or the per-head key norm after it where the family has one (`k_norm`).
        query_projection: the same for the queries (`q_proj`, or `q_norm`).
        image_token: field of `model.config` holding the id of the image placeholder token; image tokens
            are the positions holding that id.
        positions: positional scheme of the decoder, one of `POSITIONS`; queries can be captured after
            RoPE only for "rope" and "mrope".
        mask: the decoder's attention pattern over a prompt, one of `MASKS`; the attention analysis, which
            recomputes causal attention, runs only on "causal" families.
        heads_first: the key / query modules' per-head output is [B, heads, S, head_dim] (Gemma 3 transposes
            before its norms), not [B, S, heads, head_dim] or [B, S, heads*head_dim].
        fast_paths: `model -> None` functions that swap slow modules for exact faster ones
            (`model.fast_paths=false` turns them off); each has a CPU test of exactness.
        system: a system message sent before every sample, or None for the template's own default. For a
            template whose default changes from run to run (Mistral 3 writes today's date into it), so that
            the prompt, and so the keys, are the same every day.
        random_init: `model -> None` functions run after transformers' own init of a random-weight build, for
            weights it sets to a constant that a trained checkpoint overwrites but that would leave the random
            model degenerate (Gemma 3's zero image projection: every image would reach the decoder as zeros).
    """

    family: str
    model_class: str
    config_class: str
    load_processor: Callable[..., Any]
    offline_processor: Callable[..., Any]
    token_ids: Callable[[Any], dict[str, Any]]
    decoder_layers: str
    attention: str
    key_projection: str
    query_projection: str
    image_token: str
    positions: str
    mask: str = "causal"
    heads_first: bool = False
    system: str | None = None
    fast_paths: tuple[Callable[[Any], Any], ...] = ()
    random_init: tuple[Callable[[Any], Any], ...] = ()

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"adapter {self.family!r}: positions={self.positions!r} is not one of {list(POSITIONS)}")
        if self.mask not in MASKS:
            raise ValueError(f"adapter {self.family!r}: mask={self.mask!r} is not one of {list(MASKS)}")

    def layers(self, model: Any) -> Any:
        """The text decoder layers (`nn.ModuleList`); never the vision tower's layers."""
        return attrgetter(self.decoder_layers)(model)

    def attention_module(self, layer: Any) -> Any:
        """The attention module of one decoder layer."""
        return attrgetter(self.attention)(layer)

    def key_module(self, layer: Any) -> Any:
        """The module whose output is the pre-RoPE keys ([.., kv_heads*head_dim] or [.., kv_heads, head_dim])."""
        return attrgetter(self.key_projection)(self.attention_module(layer))

    def query_module(self, layer: Any) -> Any:
        """The module whose output is the pre-RoPE queries ([.., heads*head_dim] or [.., heads, head_dim])."""
        return attrgetter(self.query_projection)(self.attention_module(layer))

    def image_token_id(self, model: Any) -> int:
        """Id of the placeholder token that the processor expands into one token per image patch."""
        return int(getattr(model.config, self.image_token))

    def conversation(self, sample: Sample) -> list[dict[str, Any]]:
        """The sample as one user turn in the chat-template message format, parts in reading order (after the
        adapter's `system` message, if it has one)."""
        system = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        return [*system, {"role": "user", "content": [
            {"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": part}
            for part in sample.parts]}]

    def model_inputs(self, processor: Any, samples: list[Sample], offsets: bool = False) -> Any:
        """Processor outputs for a batch: the checkpoint's chat template applied to each sample, right-padded.

        `offsets=True` adds the tokens' character offsets (`offset_mapping`) and where the processor expanded each
        image placeholder (`text_replacement_offsets`), for `content_mask`; remove both before the forward.

        Right padding keeps every real token at the position it has when run alone (LLaVA takes
        `arange` positions; Qwen's M-RoPE index is mask-aware either way). It is passed to the call too, since a
        processor's own default (InternVL's `left`) outranks the tokenizer's attribute.
        """
        processor.tokenizer.padding_side = "right"
        where = {"return_offsets_mapping": True, "return_text_replacement_offsets": True} if offsets else {}
        return processor.apply_chat_template(
            [self.conversation(sample) for sample in samples], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt", processor_kwargs={"padding": True, "padding_side": "right", **where})

    def content_mask(self, processor: Any, samples: list[Sample], inputs: Any) -> torch.Tensor:
        """[B, S] True at the tokens of the samples' own text (question, hint, options), False at the chat
        template, system prompt, special tokens, image tokens and padding.

        Decided from character offsets: each sample's text parts (stripped) are located in its rendered
        (unexpanded) prompt as the processor lays it out. A token of the processor's expanded prompt that overlaps
        the expansion of an image placeholder (its image tokens and any markers around them, such as Idefics3's
        tile rows and columns) is not content; any other token's offset is mapped back by removing the length that
        the expansions before it added (the processor's `text_replacement_offsets`). A token is content when its
        non-whitespace characters lie inside a text part.

        Args:
            processor: the family's processor.
            samples: the batch, decoded.
            inputs: `model_inputs(processor, samples, offsets=True)`, with `offset_mapping` [B, S, 2] and
                `text_replacement_offsets`.
        """
        import torch

        mask = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool)
        for row, sample in enumerate(samples):
            rendered = processor.apply_chat_template(self.conversation(sample), add_generation_prompt=True,
                                                     tokenize=False)
            # the text the processor tokenizes before expanding placeholders (PaliGemma adds "<bos>" and "\n")
            rendered = processor.prepare_inputs_layout(images=sample.images or None, text=[rendered])[1][0]
            spans, cursor = [], 0
            for part in (p.strip() for p in sample.parts if isinstance(p, str)):  # Gemma 3's template trims parts
                start = rendered.index(part, cursor)
                spans.append((start, start + len(part)))
                cursor = start + len(part)
            expansions = [(*r["new_span"], (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
                          for r in inputs["text_replacement_offsets"][row]]  # (start, end, characters added)
            for t, ((begin, end), real) in enumerate(zip(inputs["offset_mapping"][row].tolist(),
                                                         inputs["attention_mask"][row].tolist(), strict=True)):
                if not real or any(begin < e_end and e_start < end for e_start, e_end, _ in expansions):
                    continue
                shift = sum(added for _, e_end, added in expansions if e_end <= begin)
                text = rendered[begin - shift:end - shift]
                first = begin - shift + (len(text) - len(text.lstrip()))
                last = end - shift - (len(text) - len(text.rstrip()))
                mask[row, t] = first < last and any(a <= first and last <= b for a, b in spans)
        return mask


def auto_processor(path: str, revision: str | None, **kwargs: Any) -> Any:
    """The checkpoint's own processor class, PIL image backend (bit-reproducible across machines)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, revision=revision, backend="pil", **kwargs)


@cache
def image_only_processor_class(processor: str) -> Any:
    """transformers' `processor` class (Qwen-VL, InternVL, LLaVA-OneVision) without its video processor.

    The video processor needs torchvision, which keyspace does not require. ProcessorMixin takes
    its sub-processors (and the settings it saves) from the `__init__` signature, so the parent's signature
    without `video_processor` gives an image + text processor that loads real checkpoints and the tiny ones
    alike, and keeps saving the parent's own settings (InternVL's `image_seq_length`).
    """
    import inspect
    import types

    import transformers

    parent = getattr(transformers, processor)
    init = parent.__init__  # the same code (whose argument names `from_pretrained` reads), video_processor=None
    __init__ = types.FunctionType(init.__code__, init.__globals__, "__init__", init.__defaults__, init.__closure__)
    __init__.__kwdefaults__ = init.__kwdefaults__
    signature = inspect.signature(init)
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "video_processor"])
    return type(processor.replace("Processor", "ImageOnlyProcessor"), (parent,), {"__init__": __init__})


@cache
def converted_once(parent: type, drop: tuple[str, ...] = ()) -> type:
    """`parent`, a processor class whose `__call__` converts its outputs to tensors a second time without the base
    class's `skip_tensor_conversion` (Idefics3's, InternVL's, PaliGemma's), with its outputs converted once, the
    base class's list left as Python objects: else `text_replacement_offsets` (for `content_mask`) fail to convert
    on a batch whose first prompt has no image. Outputs named in `drop` are removed (PaliGemma's training `labels`).
    """
    from transformers import BatchFeature

    def __call__(self: Any, *args: Any, return_tensors: str | None = None, **kwargs: Any) -> Any:
        outputs = parent.__call__(self, *args, **kwargs)
        for name in drop:
            outputs.pop(name, None)
        return BatchFeature(dict(outputs), tensor_type=return_tensors,
                            skip_tensor_conversion=self.skip_tensor_conversion)

    return type(parent.__name__, (parent,), {"__call__": __call__})
