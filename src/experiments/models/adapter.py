"""What keyspace needs to know about a model family, declared once per family.

An adapter names the transformers classes, where the decoder layers sit, how the processor is loaded
(or built offline for random weights) and where the image-token id lives; everything else (hooks,
cache reading, masks) is shared code in `keys/`. Adding a family is one module declaring a
`ModelAdapter`, registered in `models/__init__.py`, plus one YAML in `conf/model/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from experiments.benchmarks.sample import Sample


@dataclass(frozen=True)
class ModelAdapter:
    """Declarative description of one VLM family.

    Attributes:
        family: registry key, written into the config (`model.family`).
        model_class: transformers class name of the full image-text-to-text model.
        config_class: transformers class name of its config (built from `model.architecture`).
        decoder_layers: attribute path from that model to its text decoder's `nn.ModuleList`.
        load_processor: `(path, revision, **model.processor) -> processor` of a real checkpoint.
        offline_processor: `(**model.processor) -> processor` built without downloads (weights=random).
        token_ids: `processor -> config fields` that tie the architecture's special-token ids to the
            offline tokenizer (image token, padding, ...), so random-weight models accept its ids.
        fast_paths: `model -> None` functions that swap slow modules for exact faster ones
            (`model.fast_paths=false` turns them off); each has a CPU test of exactness.
    """

    family: str
    model_class: str
    config_class: str
    decoder_layers: str
    load_processor: Callable[..., Any]
    offline_processor: Callable[..., Any]
    token_ids: Callable[[Any], dict[str, Any]]
    fast_paths: tuple[Callable[[Any], Any], ...] = ()

    def layers(self, model: Any) -> Any:
        """The text decoder layers (`nn.ModuleList`); never the vision tower's layers."""
        return attrgetter(self.decoder_layers)(model)

    def image_token_id(self, model: Any) -> int:
        """Id of the placeholder token that the processor expands into one token per image patch."""
        return int(model.config.image_token_id)

    def conversation(self, sample: Sample) -> list[dict[str, Any]]:
        """The sample as one user turn in the chat-template message format, parts in reading order."""
        return [{"role": "user", "content": [
            {"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": part}
            for part in sample.parts]}]

    def model_inputs(self, processor: Any, samples: list[Sample]) -> Any:
        """Processor outputs for a batch: the checkpoint's chat template applied to each sample, right-padded.

        Right padding keeps every real token at the position it has when run alone (LLaVA takes
        `arange` positions; Qwen's M-RoPE index is mask-aware either way).
        """
        processor.tokenizer.padding_side = "right"
        return processor.apply_chat_template(
            [self.conversation(sample) for sample in samples], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt", processor_kwargs={"padding": True})


def auto_processor(path: str, revision: str | None, **kwargs: Any) -> Any:
    """The checkpoint's own processor class, PIL image backend (bit-reproducible across machines)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, revision=revision, backend="pil", **kwargs)
