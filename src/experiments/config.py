"""Structured-config schemas: the types behind every YAML file in `conf/`.

`register_configs()` stores each schema as `schema/<group>` in Hydra's ConfigStore. Every option file
starts its defaults list with `/schema/<group>@_here_`, so a typo, a wrong type or a missing `???`
fails at compose time, before any job starts or any SLURM submission is made. `pipeline.run` turns
the composed config into these dataclasses once (`OmegaConf.to_object`); stage modules never see
OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    name: str = "???"  # short name written into every results row (tiny_llava, llava, ...)
    family: str = "???"  # adapter registry key: llava | llava_next | qwen2_5_vl
    weights: str = "pretrained"  # pretrained: load `path` | random: build `architecture` with random weights
    path: str | None = None  # pretrained: hub id or local checkpoint folder; unused by weights=random
    # weights=random: the folder under which each build is saved once, in a subfolder named by a hash of
    # family, seed, architecture and processor settings, then loaded with from_pretrained (the tiny models);
    # None builds in memory on the device (full-size smoke runs, GPU benchmarks: nothing written to disk).
    build_dir: str | None = None
    revision: str | None = None  # hub revision (commit, tag); None = default branch
    seed: int = 0  # seed of random weights
    # Published config.json fields of the architecture (nested text_config / vision_config), used by
    # weights=random; the parameter-count test checks them against the published sizes.
    architecture: dict[str, Any] = field(default_factory=dict)
    # Keyword arguments for the processor: Qwen min_pixels / max_pixels (both weights modes); for
    # weights=random also the offline processor's settings (LLaVA image_size, ...).
    processor: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (bf16 on GPU, fp32 on CPU)
    device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)
    attn_implementation: str = "sdpa"  # sdpa | eager; keys do not depend on it, speed does
    fast_paths: bool = True  # swap slow transformers modules for exact faster ones (adapter.fast_paths)


@dataclass
class BenchmarkConfig:
    name: str = "???"  # short name written into every results row (synthetic, mmbench_cn, mmmu)
    path: str | None = None  # hub id or local file/folder of a real benchmark; unused by synthetic
    split: str = "dev"  # benchmark split (MMBench: dev | test; MMMU: dev | validation | test)
    subjects: list[str] | None = None  # MMMU subjects; None = all 30
    limit: int | None = 32  # synthetic: samples generated; real: max samples (seeded selection), None = all
    seed: int = 0  # seed of the generated samples, or of the selection under `limit`
    prompt_style: str = "vlmevalkit"  # which toolkit's prompt convention; recorded in every results row
    image_order: str = "interleaved"  # MMMU multi-image: interleaved at <image k> | images_first
    drop_circular: bool = True  # MMBench: drop CircularEval copies (index >= 1e6)
    style: str = "mmbench_cn"  # synthetic question style: mmbench_cn (Chinese) | mmmu (English) | mixed
    image_size: int = 96  # synthetic image side, pixels (the processor resizes them)


@dataclass
class LayerConfig:
    # Layer positions or explicit decoder-layer indices, e.g. [early, middle, late] or [3, 17].
    positions: list[str] = field(default_factory=lambda: ["early", "middle", "late"])
    # Where a named position sits in a decoder of L layers: index = floor(fraction * (L - 1) + 0.5).
    fractions: dict[str, float] = field(default_factory=lambda: {"early": 0.1, "middle": 0.5, "late": 0.9})


@dataclass
class KeysConfig:
    site: str = "post_rope"  # post_rope (what enters q.k, = the KV cache) | pre_rope (k_proj output)
    batch_size: int = 8  # samples per forward pass
    num_workers: int = 0  # DataLoader processes that preprocess the next batches while the model runs
    shard_size: int = 16  # samples per cache shard: the unit of resume
    max_tokens_per_sample: int | None = 256  # per-modality cap per sample, seeded; None keeps all tokens
    # dtype of the cached keys: auto (the model's compute dtype: bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    # | float16; statistics always run in float32
    store_dtype: str = "auto"
    seed: int = 0  # seed of the per-sample token subsampling


@dataclass
class AnalysisConfig:
    n_splits: int = 5  # R: repeats of the random split of samples into halves A and B
    max_tokens_per_group: int = 1000  # cap per (half, modality), seeded, stratified by sample
    seed: int = 0  # seed of the splits and of the token caps
    device: str = "auto"  # where the statistics run: cpu | cuda | auto
    # leave attention-sink tokens out of every comparison and the t-SNE: the first position (BOS / first token)
    # and, per layer, tokens whose key norm exceeds sink_norm_factor x that layer's median key norm
    exclude_sinks: bool = False
    sink_norm_factor: float = 4.0
    # which text tokens the text groups take: all (every non-image token) | content (the sample's own question,
    # hint and options; chat template, system prompt and special tokens left out)
    text_tokens: str = "all"
    # also compare text before the image block with text after it (comparison text_before_vs_text_after): a
    # position-matched control, since RoPE / M-RoPE positions alone can separate keys
    position_control: bool = False
    # samples (seeded choice) in the per-sample paired-distance table paired.parquet; 0 = no table
    paired_samples: int = 200


@dataclass
class MetricConfig:
    # metrics computed per comparison: mmd2 | mmd_agg | jsd | energy | sliced_wasserstein | c2st_auc
    names: list[str] = field(default_factory=lambda: ["mmd2", "jsd"])
    # block permutations (whole samples) of every metric's test: p-value and null mean/std (0 = no test)
    n_permutations: int = 200
    # sample-bootstrap replicates (whole samples resampled per side) of each value's BCa confidence interval,
    # ci_low/ci_high in the results (0 = no interval; c2st_auc and mmd_agg have none, NaN)
    n_bootstrap: int = 200
    ci_level: float = 0.95  # two-sided confidence level of that interval
    # replicates per vectorized call of that bootstrap (and of BCa's jackknife, one replicate per sample): memory
    # O(batch x tokens), so it stays flat however many samples the groups span; the interval does not depend on it
    # beyond the order random draws are taken in
    bootstrap_batch: int = 100
    # metrics that get that interval: mmd2 and energy have tested coverage; jsd and sliced_wasserstein also have
    # a weighted form, but their intervals can miss the estimate (estimator bias under resampling; see
    # metrics/bootstrap.py), so they are opt-in until that is fixed
    bootstrap_metrics: list[str] = field(default_factory=lambda: ["mmd2", "energy"])
    unbiased: bool = True  # unbiased MMD^2 estimator (off-diagonal means) or biased
    jsd_projection: str = "pca"  # pca | random | none: 1-D projections the JSD is averaged over
    jsd_n_projections: int = 16  # how many projections
    # histogram bins per projection, edges from the pooled sample: "auto" = ceil(2 (2 n_min)^(1/3)) equal-mass bins
    # (n_min the smaller group; bounded bias, see metrics/jsd.py) or a number: that many equal-width bins (old: 64)
    jsd_bins: str = "auto"
    # miller_madow (second-order bias correction of each entropy; may dip below 0 under the null) | plugin
    jsd_estimator: str = "miller_madow"
    sw_n_projections: int = 128  # random directions of the sliced Wasserstein distance
    c2st_folds: int = 5  # cross-validation folds of the classifier two-sample test (split by sample)
    c2st_alpha: float = 1.0  # ridge penalty of the C2ST's closed-form classifier (standardised features)
    # mmd_agg (MMD-FUSE style): kernels of the collection, each with a bandwidth: rbf | laplacian | imq
    agg_kernels: list[str] = field(default_factory=lambda: ["rbf", "laplacian"])
    # mmd_agg: factors on each kernel's median bandwidth; collection = agg_kernels x these (one row each, rbf@0.5)
    agg_bandwidth_scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    agg_temperature: float = 1.0  # mmd_agg soft-maximum temperature over null-scaled MMD^2s (large: max, small: mean)


@dataclass
class KernelConfig:
    name: str = "rbf"  # kernel registry key: rbf | laplacian | linear | polynomial | imq | energy
    bandwidth: str = "median"  # "median" (heuristic over the pooled sample) or a number: sigma itself
    bandwidth_scale: float = 1.0  # multiplies sigma, for bandwidth ablations


@dataclass
class ReportConfig:
    tsne_points: int = 600  # points per layer in the t-SNE picture (seeded, balanced by modality)
    tsne_pca_dim: int = 50  # PCA components before t-SNE
    perplexity: float = 30.0  # t-SNE perplexity
    # t-SNE at most this many of the job's layers (evenly spaced, first and last included): layer=every has
    # 32 layers in LLaVA-1.5-7B, too many panels to read and minutes of t-SNE each job
    tsne_max_layers: int = 8
    seed: int = 0


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    project: str = "keyspace"  # W&B project
    entity: str | None = None  # W&B entity (team or user); None = the default of the login
    mode: str = "offline"  # offline | online | disabled; the WANDB_MODE environment variable wins


@dataclass
class PathsConfig:
    cache_dir: str = "???"  # shared key cache and built tiny checkpoints; shared storage on a cluster


@dataclass
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    layer: LayerConfig = field(default_factory=LayerConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default


GROUP_SCHEMAS = {
    "model": ModelConfig,
    "benchmark": BenchmarkConfig,
    "layer": LayerConfig,
    "metric": MetricConfig,
    "kernel": KernelConfig,
    "logger": LoggerConfig,
}


def register_configs() -> None:
    """Store the job schema and one schema per config group in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="job_schema", node=JobConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group="schema", name=group, node=schema)
