"""Run a model over samples in batches and keep, per sample, the keys of its real tokens.

For each sample: image tokens are the positions holding the config's image-token id, text tokens
every other non-padding position. Padding never reaches the output. A per-modality cap per sample
(seeded by the sample's number, so independent of batching) bounds what is stored.

Samples that cannot give comparable keys are skipped with their reason, never cut or stored: an image that
does not decode, no image token, a prompt longer than the model's context (`max_position_embeddings`; the
processor never truncates, so no image token is silently lost), or keys holding NaN or Inf (e.g. a float16
overflow).

Speed without changing a number: samples are bucketed by size so batches carry little padding;
preprocessing runs in `num_workers` DataLoader workers while the model runs; only the kept tokens
leave the device, copied asynchronously into pinned host memory and collected one batch later, so
the copy of batch i overlaps the forward of batch i+1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from experiments.benchmarks.sample import Sample, SkipRow
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
        is_content: [tokens] True at the sample's own text (question, hint, options), False at the chat
            template, system prompt, special and image tokens (`ModelAdapter.content_mask`).
        position: [tokens] position of each token in the sample's own (unpadded) sequence.
        n_image_tokens, n_text_tokens: the sample's token counts before the per-sample cap.
    """

    number: int
    sample_id: str
    keys: dict[int, torch.Tensor]
    is_image: torch.Tensor
    is_content: torch.Tensor
    position: torch.Tensor
    n_image_tokens: int
    n_text_tokens: int


@dataclass
class _Staged:
    """A batch whose kept keys are (possibly still) being copied to the host."""

    rows: list[tuple[int, str, torch.Tensor, torch.Tensor, torch.Tensor, int, int]]  # number, id, is_image,
    # is_content, position, counts
    keys: dict[int, torch.Tensor]  # layer -> [kept tokens of the whole batch, dim], host memory
    done: Any  # CUDA event, or None when the copy was synchronous

    def finish(self) -> list[SampleKeys]:
        if self.done is not None:
            self.done.synchronize()
        sizes = [len(row[4]) for row in self.rows]
        split = {layer: keys.split(sizes) for layer, keys in self.keys.items()}
        return [SampleKeys(number=number, sample_id=sample_id, is_image=is_image, is_content=is_content,
                           position=position,
                           keys={layer: parts[i] for layer, parts in split.items()},
                           n_image_tokens=n_image, n_text_tokens=n_text)
                for i, (number, sample_id, is_image, is_content, position, n_image, n_text) in enumerate(self.rows)]


def extract_keys(loaded: LoadedModel, samples: list[tuple[int, Sample]], layers: list[int], site: str,
                 batch_size: int, max_tokens_per_sample: int | None, seed: int, store_dtype: torch.dtype,
                 num_workers: int = 0) -> tuple[list[SampleKeys], list[dict[str, str]]]:
    """Keys of `samples` ((number, sample) pairs) at `layers`; returns (kept, skipped), kept in number order.

    A sample whose image fails to decode (in the loader workers), whose images produced no image tokens
    (nothing to compare), whose prompt is longer than the model's context, or whose keys are not finite is
    skipped with a warning and listed in `skipped` as {"sample_id", "reason"}.
    """
    from torch.utils.data import DataLoader

    model, adapter = loaded.model, loaded.adapter
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    image_token = adapter.image_token_id(model)
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    batches = _buckets(samples, batch_size)
    loader: DataLoader[Any] = DataLoader(
        cast(Any, batches), batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
        collate_fn=partial(_prepare, adapter, loaded.processor))
    kept: list[SampleKeys] = []
    skipped: list[dict[str, str]] = []
    pending: _Staged | None = None
    with KeyCapture(model, adapter, layers, site, dtype=store_dtype) as capture:
        for batch, inputs, undecodable in tqdm(loader, desc="extract keys", unit="batch", leave=False):
            skipped += undecodable
            if not batch:
                continue
            ids, real, content = inputs["input_ids"], inputs["attention_mask"].bool(), inputs.pop("is_content")
            too_long = real.sum(dim=1) > context if context else torch.zeros(len(batch), dtype=torch.bool)
            for row in too_long.nonzero().squeeze(1).tolist():
                reason = (f"its prompt has {int(real[row].sum())} tokens ({int((ids[row] == image_token).sum())} "
                          f"image tokens), more than the model's context of {context}; not cut, skipped")
                log.warning("skipping sample %s: %s", batch[row][1].id, reason)
                skipped.append({"sample_id": batch[row][1].id, "reason": reason})
            if too_long.all():
                continue
            inputs = inputs.to(device, non_blocking=True)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            captured = capture.run(**inputs)
            rows, flat_rows, flat_positions = [], [], []
            for row, (number, sample) in enumerate(batch):
                if too_long[row]:
                    continue
                is_image = ids[row] == image_token
                if not is_image.any():
                    reason = (f"its {len(sample.images)} image(s) produced no image tokens; check that the "
                              f"benchmark row has an image and that model.path's processor inserts the "
                              f"image token (id {image_token})")
                    log.warning("skipping sample %s: %s", sample.id, reason)
                    skipped.append({"sample_id": sample.id, "reason": reason})
                    continue
                positions = _kept_positions(is_image[real[row]], max_tokens_per_sample, seed, number)
                where = real[row].nonzero().squeeze(1)[positions]
                n_image = int(is_image[real[row]].sum())
                rows.append((number, sample.id, is_image[where], content[row][where], positions, n_image,
                             int(real[row].sum()) - n_image))
                flat_rows.append(torch.full_like(where, row))
                flat_positions.append(where)
            staged = _stage(captured, layers, site, rows, flat_rows, flat_positions, device)
            if pending is not None:
                kept += _finite(pending.finish(), skipped)
            pending = staged
    if pending is not None:
        kept += _finite(pending.finish(), skipped)
    return sorted(kept, key=lambda r: r.number), skipped


def _finite(records: list[SampleKeys], skipped: list[dict[str, str]]) -> list[SampleKeys]:
    """The records whose keys are all finite; the others are added to `skipped` (NaN / Inf never reach the cache)."""
    good = []
    for record in records:
        bad = [layer for layer, keys in record.keys.items() if not bool(torch.isfinite(keys).all())]
        if not bad:
            good.append(record)
            continue
        reason = (f"its keys at layer(s) {bad} hold NaN or Inf (a float16 overflow? use model.dtype=bfloat16 or "
                  f"float32 and keys.store_dtype=float32)")
        log.warning("skipping sample %s: %s", record.sample_id, reason)
        skipped.append({"sample_id": record.sample_id, "reason": reason})
    return good


def _prepare(adapter: Any, processor: Any, batch: list[tuple[int, Sample]]
             ) -> tuple[list[tuple[int, Sample]], Any, list[dict[str, str]]]:
    """Collate function (runs in the DataLoader workers): decode the batch's images, then run the processor.

    Args:
        adapter: the model family's `ModelAdapter`.
        processor: its processor.
        batch: (number, sample) pairs whose images are not decoded yet.

    Returns:
        The (number, sample) pairs whose images decoded, as given (still lazy, so no pixels travel back);
        the processor outputs of their decoded samples, row i for pair i, or None when none decoded; and
        {"sample_id", "reason"} for each sample whose image failed to decode, in batch order.
    """
    kept, decoded, skipped = [], [], []
    for number, sample in batch:
        try:
            decoded.append(sample.decoded())
        except SkipRow as err:
            log.warning("skipping sample %s: %s", sample.id, err)
            skipped.append({"sample_id": sample.id, "reason": str(err)})
            continue
        kept.append((number, sample))
    if not decoded:
        return kept, None, skipped
    inputs = adapter.model_inputs(processor, decoded, offsets=True)
    inputs["is_content"] = adapter.content_mask(processor, decoded, inputs)
    for where in ("offset_mapping", "text_replacement_offsets"):  # content_mask's, not the model's
        inputs.pop(where, None)
    return kept, inputs, skipped


def _buckets(samples: list[tuple[int, Sample]], batch_size: int) -> list[list[tuple[int, Sample]]]:
    """Batches of samples of similar size (pixels, then text length), so padding stays small; decodes nothing."""
    def size(item: tuple[int, Sample]) -> tuple[int, int]:
        sample = item[1]
        return sum(width * height for width, height in (image.size for image in sample.images)), len(sample.text)

    ordered = sorted(samples, key=size)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def _stage(captured: dict[str, torch.Tensor], layers: list[int], site: str, rows: list, flat_rows: list,
           flat_positions: list, device: torch.device) -> _Staged:
    """Gather the kept tokens on the device and start their copy to (pinned) host memory."""
    if not rows:
        return _Staged(rows=[], keys={}, done=None)
    batch_index = torch.cat(flat_rows).to(device, non_blocking=True)
    token_index = torch.cat(flat_positions).to(device, non_blocking=True)
    cuda = device.type == "cuda"
    keys = {}
    for layer in layers:
        selected = captured[key_name(layer, site)][batch_index, token_index]  # [kept tokens, dim]
        host = torch.empty(selected.shape, dtype=selected.dtype, pin_memory=cuda)
        keys[layer] = host.copy_(selected, non_blocking=cuda)
    done = None
    if cuda:
        done = torch.cuda.Event()
        done.record()
    return _Staged(rows=rows, keys=keys, done=done)


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
