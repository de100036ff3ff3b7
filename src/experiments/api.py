"""Notebook API: the job's stages as plain calls on typed configs, keys in memory, figures into your Axes.

    from experiments import api
    job = api.compose("model=tiny_qwen", "benchmark.limit=8")   # conf/ as launch.py composes it
    keys = api.extract(job)                                     # KeySet, through the job's key cache
    results = api.compare(keys, job)                            # the tidy results table
    api.boxplot(results, ax)                                    # draws into ax, returns its Figure

`compose` reads `conf/` with the same defaults, site file (`conf/local/default.yaml`) and schema checks as
a job. `extract` goes through the key cache by default, so it shares entries with `launch.py` jobs of the
same settings and never runs the model twice for them; `cache=False` keeps everything in memory and writes
nothing (the way to use samples of your own). A `KeySet` holds every requested layer's keys in memory: fit
for the benchmark sizes of a notebook; jobs at scale read the cache a layer at a time (`pipeline`). Figure
functions draw into a given matplotlib `Axes` and return its `Figure` without touching the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from experiments.benchmarks import BenchmarkData, Sample, load_samples
from experiments.config import JobConfig
from experiments.keys.layers import LayerSpec, resolve_layers
from experiments.models import LoadedModel, decoder_depth
from experiments.report.figures import boxplot_panel as boxplot
from experiments.report.figures import depth_profile_panel as depth_profile
from experiments.report.figures import tsne_panel as tsne

if TYPE_CHECKING:
    from experiments.keys.extract import SampleKeys

__all__ = ["KeySet", "compose", "load_model", "extract", "compare", "embed", "boxplot", "tsne", "depth_profile"]


@dataclass
class KeySet:
    """Keys of some samples at some layers, with what each token is; rows are tokens, the same for every layer.

    Attributes:
        keys: layer index -> [tokens, kv_heads*head_dim] (float32 on the CPU).
        layers: the layers held, in the order asked for (label as results rows write it, decoder index).
        is_image: [tokens] True at image tokens.
        is_content: [tokens] True at the samples' own text (not chat template, system prompt, special tokens).
        sample: [tokens] number of the sample each token belongs to (its index in the samples given).
        position: [tokens] position of the token in its sample's own sequence.
        sample_ids: sample number -> the benchmark's id.
        skipped: samples that gave no keys, as {"sample_id", "reason"}.
        model, benchmark, site, prompt_style: what the results rows record.
    """

    keys: dict[int, torch.Tensor]
    layers: list[LayerSpec]
    is_image: torch.Tensor
    is_content: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    sample_ids: dict[int, str]
    skipped: list[dict[str, str]]
    model: str
    benchmark: str
    site: str
    prompt_style: str

    def image(self, layer: int | str) -> torch.Tensor:
        """[image tokens, dim] keys of `layer` (decoder index or label)."""
        return self.keys[self._index(layer)][self.is_image]

    def text(self, layer: int | str) -> torch.Tensor:
        """[text tokens, dim] keys of `layer` (decoder index or label)."""
        return self.keys[self._index(layer)][~self.is_image]

    def _index(self, layer: int | str) -> int:
        for spec in self.layers:
            if layer in (spec.index, spec.label):
                return spec.index
        raise KeyError(f"layer {layer!r} is not in this KeySet; it holds {[(s.label, s.index) for s in self.layers]}")


def compose(*overrides: str) -> JobConfig:
    """The typed job config that `python launch.py <overrides>` would run, e.g. `compose("model=tiny_qwen")`.

    Raises:
        ConfigError: a field outside its declared valid values (`validation`), as a job would.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.cache import CONFIG
    from experiments.config import register_configs
    from experiments.validation import check

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG.parent), version_base="1.3"):
        cfg = hydra_compose(config_name=CONFIG.stem, overrides=list(overrides))
    job: JobConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    check(job)
    return job


def load_model(name: str, *overrides: str) -> LoadedModel:
    """The model of config `conf/model/<name>.yaml` (with `model.*` overrides), its processor and adapter."""
    from experiments.models import load_model as load

    return load(compose(f"model={name}", *overrides).model)


def extract(job: JobConfig, layers: Sequence[str | int] | None = None, samples: list[Sample] | None = None,
            cache: bool = True, model: LoadedModel | None = None) -> KeySet:
    """Keys of `samples` (default: the job's benchmark) at `layers` (default: the job's), as the job takes them.

    Args:
        job: from `compose`; its model, benchmark, keys and paths settings apply.
        layers: position names (early, middle, late, every) or decoder indices; None = `job.layer.positions`.
        samples: samples of your own (needs `cache=False`: the cache is keyed by the benchmark config).
        cache: read (and fill where missing) the job's key cache entry; False = run the model, keep it in memory.
        model: an already loaded model for `cache=False` (else loaded from `job.model`).

    Raises:
        ValueError: `samples` given with `cache=True`; no sample gave keys.
    """
    specs = resolve_layers([str(p) for p in (layers or job.layer.positions)], job.layer.fractions,
                           decoder_depth(job.model))
    indices = [s.index for s in specs]
    meta = {"layers": specs, "model": job.model.name, "benchmark": job.benchmark.name, "site": job.keys.site,
            "prompt_style": job.benchmark.prompt_style}
    if cache:
        if samples is not None:
            raise ValueError("samples of your own cannot go through the key cache (it is keyed by the benchmark "
                             "config): pass cache=False")
        return _from_cache(job, indices, meta)
    from experiments.keys.extract import extract_keys
    from experiments.models import load_model as load
    from experiments.store import store_dtype

    data = load_samples(job.benchmark) if samples is None else BenchmarkData(samples)
    records, skipped = extract_keys(model or load(job.model), list(enumerate(data.samples)), indices,
                                    job.keys.site, job.keys.batch_size, job.keys.max_tokens_per_sample, job.keys.seed,
                                    getattr(torch, store_dtype(job)), num_workers=job.keys.num_workers)
    return _from_records(records, data.skipped + skipped, **meta)


def compare(keys: KeySet, job: JobConfig) -> pd.DataFrame:
    """The tidy results table of `keys` (columns `report.schema.RESULT_COLUMNS`), computed as a job computes it:
    seeded sample splits, per-group caps and every metric with its permutation test, per `job.analysis`,
    `job.metric` and `job.kernel` (text tokens, sink exclusion and position control included)."""
    from experiments.metrics.splits import compare_modalities, plan_splits, rows_needed, text_sides
    from experiments.models import resolve_device
    from experiments.report.schema import results_frame

    is_image, sample = keys.is_image.numpy(), keys.sample.numpy()
    side = text_sides(is_image, sample, keys.position.numpy()) if job.analysis.position_control else None
    rows: list[dict] = []
    for spec in keys.layers:
        splits = plan_splits(is_image, sample, n_splits=job.analysis.n_splits, eligible=_eligible(keys, spec, job),
                             text_side=side, max_tokens_per_group=job.analysis.max_tokens_per_group,
                             seed=job.analysis.seed)
        needed = rows_needed(splits)
        for row in compare_modalities(keys.keys[spec.index][torch.from_numpy(needed)], needed, sample, splits,
                                      seed=job.analysis.seed, metric=job.metric, kernel=job.kernel,
                                      device=resolve_device(job.analysis.device)):
            rows.append({"model": keys.model, "benchmark": keys.benchmark, "layer": spec.label,
                         "layer_index": spec.index, "key_site": keys.site, **row, "seed": job.analysis.seed,
                         "prompt_style": keys.prompt_style})
    return results_frame(rows)


def embed(keys: KeySet, job: JobConfig) -> pd.DataFrame:
    """2-D t-SNE points per layer of a balanced, seeded token subsample (`report.tsne_points`), as the job's
    `embedding.parquet`: columns x, y, modality, sample_id, model, benchmark, layer; for `tsne`."""
    from experiments.report import embed_keys, embedding_rows

    frames = []
    for spec in keys.layers:
        rows = embedding_rows(keys.is_image.numpy(), n_points=job.report.tsne_points, seed=job.report.seed,
                              eligible=_eligible(keys, spec, job))
        frame = embed_keys(keys.keys[spec.index][torch.from_numpy(rows)], keys.is_image.numpy()[rows],
                           keys.sample.numpy()[rows], pca_dim=job.report.tsne_pca_dim,
                           perplexity=job.report.perplexity, seed=job.report.seed)
        frame["sample_id"] = frame.pop("sample_number").map(keys.sample_ids)
        frames.append(frame.assign(model=keys.model, benchmark=keys.benchmark, layer=spec.label))
    return pd.concat(frames, ignore_index=True)


def _eligible(keys: KeySet, spec: LayerSpec, job: JobConfig) -> np.ndarray | None:
    """[tokens] False where `analysis.text_tokens=content` or `analysis.exclude_sinks` leaves a token out."""
    from experiments.metrics.splits import sink_tokens

    eligible = None if job.analysis.text_tokens == "all" else (keys.is_image | keys.is_content).numpy()
    if job.analysis.exclude_sinks:
        norms = keys.keys[spec.index].float().norm(dim=1).numpy()
        usable = ~sink_tokens(keys.position.numpy(), norms, job.analysis.sink_norm_factor)
        eligible = usable if eligible is None else eligible & usable
    return eligible


def _from_cache(job: JobConfig, indices: list[int], meta: dict) -> KeySet:
    """Fill the job's cache entry where it lacks `indices`, then read every token of those layers."""
    from experiments.pipeline import extract_missing
    from experiments.store import KeyStore, cache_descriptor

    data = load_samples(job.benchmark)
    store = KeyStore(job.paths.cache_dir, cache_descriptor(job, data.commit), len(data.samples))
    extract_missing(job, store, data.samples, indices)
    index = store.index()
    every = np.arange(len(index.is_image))
    return KeySet(keys={i: store.read(i, every, index).float() for i in indices}, is_image=index.is_image,
                  is_content=index.is_content, sample=index.sample, position=index.position,
                  sample_ids=index.sample_ids, skipped=data.skipped + index.skipped, **meta)


def _from_records(records: list[SampleKeys], skipped: list[dict[str, str]], **meta) -> KeySet:
    if not records:
        raise ValueError(f"no sample gave keys ({len(skipped)} skipped): first reason: "
                         f"{skipped[0]['reason'] if skipped else 'no samples'}")
    return KeySet(keys={i: torch.cat([r.keys[i] for r in records]).float() for i in records[0].keys},
                  is_image=torch.cat([r.is_image for r in records]),
                  is_content=torch.cat([r.is_content for r in records]),
                  sample=torch.cat([torch.full((len(r.position),), r.number) for r in records]),
                  position=torch.cat([r.position for r in records]),
                  sample_ids={r.number: r.sample_id for r in records}, skipped=skipped, **meta)

