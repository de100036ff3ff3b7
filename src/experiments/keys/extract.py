"""Run a model over samples in batches and keep, per sample, the keys of its real tokens.

For each sample: image tokens are the positions holding the config's image-token id, text tokens
every other non-padding position. Padding never reaches the output. A per-modality cap per sample
(seeded by the sample's number, so independent of batching) bounds what is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from experiments.benchmarks.sample import Sample
from experiments.keys.capture import KeyCapture, key_name
from experiments.models import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class SampleKeys:
    """Keys of one sample's kept tokens, the same tokens for every layer.

    Attributes:
        number: the sample's index in benchmark order (its block id in the statistics).
        sample_id: the benchmark's id of the sample.
        keys: layer index -> [tokens, kv_heads*head_dim].
        is_image: [tokens] True at image-token positions.
        position: [tokens] position of each token in the sample's own (unpadded) sequence.
    """

    number: int
    sample_id: str
    keys: dict[int, torch.Tensor]
    is_image: torch.Tensor
    position: torch.Tensor


def extract_keys(loaded: LoadedModel, samples: list[tuple[int, Sample]], layers: list[int], site: str,
                 batch_size: int, max_tokens_per_sample: int | None, seed: int, store_dtype: torch.dtype,
                 ) -> tuple[list[SampleKeys], list[dict[str, str]]]:
    """Keys of `samples` ((number, sample) pairs) at `layers`; returns (kept, skipped).

    A sample whose images produced no image tokens is skipped with a warning (it has nothing to
    compare) and listed in `skipped` as {"sample_id", "reason"}.
    """
    model, adapter = loaded.model, loaded.adapter
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    image_token = adapter.image_token_id(model)
    kept, skipped = [], []
    with KeyCapture(model, adapter.layers(model), layers, site, dtype=store_dtype) as capture:
        for start in tqdm(range(0, len(samples), batch_size), desc="extract keys", unit="batch", leave=False):
            batch = samples[start:start + batch_size]
            inputs = adapter.model_inputs(loaded.processor, [s for _, s in batch]).to(device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            captured = capture.run(**inputs)
            real = inputs["attention_mask"].bool().cpu()
            is_image = inputs["input_ids"].cpu() == image_token
            for row, (number, sample) in enumerate(batch):
                if not is_image[row].any():
                    reason = (f"its {len(sample.images)} image(s) produced no image tokens; check that the "
                              f"benchmark row has an image and that model.path's processor inserts the "
                              f"image token (id {image_token})")
                    log.warning("skipping sample %s: %s", sample.id, reason)
                    skipped.append({"sample_id": sample.id, "reason": reason})
                    continue
                positions = _kept_positions(is_image[row][real[row]], max_tokens_per_sample, seed, number)
                where = real[row].nonzero().squeeze(1)[positions]
                kept.append(SampleKeys(
                    number=number, sample_id=sample.id,
                    keys={i: captured[key_name(i, site)][row, where].clone() for i in layers},
                    is_image=is_image[row, where], position=positions))
    return kept, skipped


def _kept_positions(is_image: torch.Tensor, cap: int | None, seed: int, number: int) -> torch.Tensor:
    """Positions (within the real tokens) kept: all, or `cap` per modality drawn without replacement."""
    if cap is None:
        return torch.arange(len(is_image))
    rng = np.random.default_rng([seed, number])
    keep = []
    for mask in (is_image, ~is_image):
        idx = mask.nonzero().squeeze(1).numpy()
        keep.append(idx if len(idx) <= cap else rng.choice(idx, size=cap, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(keep)))
