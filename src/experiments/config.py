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

from experiments.validation import Allowed, Each, LocalPath, Matches, Needs, OneOf, Range, checked

DEVICE = Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
DTYPE = OneOf(("auto",), registry="experiments.models:DTYPES")


@dataclass
class ModelConfig:
    name: str = "???"  # short name written into every results row (tiny_llava, llava, ...)
    # adapter registry key: llava | llava_next | qwen2_5_vl | qwen2_vl | idefics3 | qwen3_vl | llava_onevision
    # | gemma3 | paligemma | internvl | mistral3 | any family added by register_adapter
    family: str = checked("???", OneOf(registry="experiments.models:ADAPTERS"))
    # pretrained: load `path` | random: build `architecture` with random weights
    weights: str = checked("pretrained", OneOf(registry="experiments.models:WEIGHTS"))
    # pretrained: hub id or local checkpoint folder; unused by weights=random
    path: str | None = checked(None, Needs("model.weights", "pretrained", "give a hub id or a local checkpoint folder, "
                                           "or use model.weights=random", LocalPath(hub=True)))
    # weights=random: the folder under which each build is saved once, in a subfolder named by a hash of
    # family, seed, architecture and processor settings, then loaded with from_pretrained (the tiny models);
    # None builds in memory on the device (full-size smoke runs, GPU benchmarks: nothing written to disk).
    build_dir: str | None = None
    revision: str | None = None  # hub revision (commit, tag); None = default branch
    seed: int = 0  # seed of random weights
    # Published config.json fields of the architecture (nested text_config / vision_config), used by
    # weights=random; the parameter-count test checks them against the published sizes.
    architecture: dict[str, Any] = checked({}, Needs("model.weights", "random", "the published config fields"))
    # Keyword arguments for the processor: Qwen min_pixels / max_pixels (both weights modes); for
    # weights=random also the offline processor's settings (LLaVA image_size, ...).
    processor: dict[str, Any] = field(default_factory=dict)
    dtype: str = checked("auto", DTYPE)  # float32 | bfloat16 | float16 | auto (bf16 on GPU, fp32 on CPU)
    device: str = checked("auto", DEVICE)  # cpu | cuda | cuda:N | auto (cuda when available)
    # sdpa | eager; keys do not depend on it, speed does
    attn_implementation: str = checked("sdpa", OneOf(("sdpa", "eager")))
    fast_paths: bool = True  # swap slow transformers modules for exact faster ones (adapter.fast_paths)


@dataclass
class BenchmarkConfig:
    # short name written into every results row (synthetic, mmbench_cn, mmbench_en, mmmu)
    name: str = checked("???", OneOf(registry="experiments.benchmarks:LOADERS"))
    # hub id or local file/folder of a real benchmark; unused by synthetic
    path: str | None = checked(None, LocalPath(hub=True))
    # hub branch, tag or commit of a hub dataset `path`; None = the default branch. The key cache hashes the commit
    # it resolves to, so a dataset updated on the hub gets new keys; unused for local files and synthetic
    revision: str | None = None
    split: str = "dev"  # benchmark split (MMBench: dev | test; MMMU: dev | validation | test)
    # MMMU subjects; None = all 30
    subjects: list[str] | None = checked(None, Each(OneOf(registry="experiments.benchmarks.mmmu:SUBJECTS")))
    # synthetic: samples generated; real: max samples (seeded selection), None = all
    limit: int | None = checked(32, Needs("benchmark.name", "synthetic", "a number of samples to draw",
                                          Range(low=1)))
    seed: int = 0  # seed of the generated samples, or of the selection under `limit`
    # which toolkit's prompt convention (choices per benchmark); recorded in every results row
    prompt_style: str = checked("vlmevalkit", OneOf(registry="experiments.benchmarks:PROMPT_STYLES",
                                                    by="benchmark.name"))
    # MMMU multi-image: interleaved at <image k> | images_first
    image_order: str = checked("interleaved", OneOf(registry="experiments.benchmarks.mmmu:IMAGE_ORDERS"))
    drop_circular: bool = True  # MMBench: drop CircularEval copies (index >= 1e6)
    # synthetic question style: mmbench_cn (Chinese) | mmmu (English) | mixed
    style: str = checked("mmbench_cn", OneOf(registry="experiments.benchmarks.synthetic:STYLES"))
    # synthetic image side, pixels (the processor resizes them); >= 17 leaves room for the digit (about 12 x 14 px,
    # 2 px from the edges)
    image_size: int = checked(96, Range(low=17))


@dataclass
class LayerConfig:
    # Layer positions or explicit decoder-layer indices, e.g. [early, middle, late] or [3, 17].
    positions: list[str] = checked(["early", "middle", "late"], Each(
        Matches(r"-?\d+|[A-Za-z_]\w*", "a layer index or a position name of layer.fractions"), nonempty=True,
        distinct=True))
    # Where a named position sits in a decoder of L layers: index = floor(fraction * (L - 1) + 0.5).
    fractions: dict[str, float] = checked({"early": 0.1, "middle": 0.5, "late": 0.9}, Each(Range(low=0, high=1)))


@dataclass
class KeysConfig:
    # post_rope (what enters q.k, = the KV cache) | pre_rope (k_proj output)
    site: str = checked("post_rope", OneOf(registry="experiments.keys.capture:SITES"))
    batch_size: int = checked(8, Range(low=1))  # samples per forward pass
    # DataLoader processes that preprocess the next batches while the model runs
    num_workers: int = checked(0, Range(low=0))
    shard_size: int = checked(16, Range(low=1))  # samples per cache shard: the unit of resume
    # per-modality cap per sample, seeded; None keeps all tokens
    max_tokens_per_sample: int | None = checked(256, Range(low=1))
    # dtype of the cached keys: auto (the model's compute dtype: bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    # | float16; statistics always run in float32
    store_dtype: str = checked("auto", DTYPE)
    seed: int = 0  # seed of the per-sample token subsampling


@dataclass
class AnalysisConfig:
    n_splits: int = checked(5, Range(low=1))  # R: repeats of the random split of samples into halves A and B
    # cap per (half, modality), seeded, stratified by sample; every metric needs 2 tokens per group
    max_tokens_per_group: int = checked(1000, Range(low=2))
    seed: int = 0  # seed of the splits and of the token caps
    device: str = checked("auto", DEVICE)  # where the statistics run: cpu | cuda | auto
    # leave attention-sink tokens out of every comparison and the t-SNE: the first position (BOS / first token)
    # and, per layer, tokens whose key norm exceeds sink_norm_factor x that layer's median key norm
    exclude_sinks: bool = False
    sink_norm_factor: float = checked(4.0, Range(low=0, open_low=True))
    # which text tokens the text groups take: all (every non-image token) | content (the sample's own question,
    # hint and options; chat template, system prompt and special tokens left out)
    text_tokens: str = checked("all", OneOf(("all", "content")))
    # also compare text before the image block with text after it (comparison text_before_vs_text_after): a
    # position-matched control, since RoPE / M-RoPE positions alone can separate keys
    position_control: bool = False
    # samples (seeded choice) in the per-sample paired-distance table paired.parquet; 0 = no table (its test needs 2)
    paired_samples: int = checked(200, Range(low=2, special=(0,)))
    # attention analysis (experiments.attention): post-RoPE queries captured beside the keys at the job's layers,
    # scores and attention allocation recomputed per head in chunks; adds rows attn_image_share, attn_utilization,
    # image_context_share, logit_gap, mmd2_head, spearman_mmd2_share (with a head column) and two figures;
    # causal families only (the recomputed attention is causal)
    attention: bool = checked(False, Allowed("experiments.models:attention_problem"))
    # samples (seeded choice) run again, every token kept, for the attention analysis
    attention_samples: int = checked(8, Range(low=1))
    # MiB of float32 scores per chunk (heads x query rows x keys): bounds memory
    attention_chunk_mib: float = checked(32.0, Range(low=0, open_low=True))


@dataclass
class MetricConfig:
    # metrics computed per comparison: mmd2 | mmd_agg | jsd | energy | sliced_wasserstein | c2st_auc
    names: list[str] = checked(["mmd2", "jsd"], Each(OneOf(registry="experiments.metrics.splits:OPTIONS"),
                                                     nonempty=True, distinct=True))
    # block permutations (whole samples) of every metric's test: p-value and null mean/std (0 = no test)
    n_permutations: int = checked(200, Range(low=0))
    # sample-bootstrap replicates (whole samples resampled per side) of each value's BCa confidence interval,
    # ci_low/ci_high in the results (0 = no interval; c2st_auc and mmd_agg have none, NaN)
    n_bootstrap: int = checked(200, Range(low=0))
    # two-sided confidence level of that interval
    ci_level: float = checked(0.95, Range(low=0, high=1, open_low=True, open_high=True))
    # replicates per vectorized call of that bootstrap (and of BCa's jackknife, one replicate per sample): memory
    # O(batch x tokens), so it stays flat however many samples the groups span; the interval does not depend on it
    # beyond the order random draws are taken in
    bootstrap_batch: int = checked(100, Range(low=1))
    # metrics that get that interval: mmd2 and energy have tested coverage; jsd and sliced_wasserstein also have
    # a weighted form, but their intervals can miss the estimate (estimator bias under resampling; see
    # metrics/bootstrap.py), so they are opt-in until that is fixed
    bootstrap_metrics: list[str] = checked(["mmd2", "energy"],
                                           Each(OneOf(registry="experiments.metrics.bootstrap:WEIGHTED_FUNCTIONS")))
    unbiased: bool = True  # unbiased MMD^2 estimator (off-diagonal means) or biased
    # pca | random | none: 1-D projections the JSD is averaged over
    jsd_projection: str = checked("pca", OneOf(registry="experiments.metrics.projections:PROJECTIONS"))
    jsd_n_projections: int = checked(16, Range(low=1))  # how many projections
    # histogram bins per projection, edges from the pooled sample: "auto" = ceil(2 (2 n_min)^(1/3)) equal-mass bins
    # (n_min the smaller group; bounded bias, see metrics/jsd.py) or a number: that many equal-width bins (old: 64)
    jsd_bins: str = checked("auto", Range(low=1, integer=True, special=("auto",)))
    # miller_madow (second-order bias correction of each entropy; may dip below 0 under the null) | plugin
    jsd_estimator: str = checked("miller_madow", OneOf(registry="experiments.metrics.jsd:ESTIMATORS"))
    sw_n_projections: int = checked(128, Range(low=1))  # random directions of the sliced Wasserstein distance
    # cross-validation folds of the classifier two-sample test (split by sample)
    c2st_folds: int = checked(5, Range(low=2))
    # ridge penalty of the C2ST's closed-form classifier (standardised features)
    c2st_alpha: float = checked(1.0, Range(low=0, open_low=True))
    # mmd_agg (MMD-FUSE style): kernels of the collection, each with a bandwidth: rbf | laplacian | imq
    agg_kernels: list[str] = checked(["rbf", "laplacian"], Each(
        OneOf(registry="experiments.metrics.mmd_agg:AGG_KERNELS"), nonempty=True, distinct=True))
    # mmd_agg: factors on each kernel's median bandwidth; collection = agg_kernels x these (one row each, rbf@0.5)
    agg_bandwidth_scales: list[float] = checked([0.25, 0.5, 1.0, 2.0, 4.0], Each(Range(low=0, open_low=True),
                                                                                nonempty=True, distinct=True))
    # mmd_agg soft-maximum temperature over null-scaled MMD^2s (large: max, small: mean)
    agg_temperature: float = checked(1.0, Range(low=0, open_low=True))


@dataclass
class KernelConfig:
    # kernel registry key: rbf | laplacian | linear | polynomial | imq | energy
    name: str = checked("rbf", OneOf(registry="experiments.metrics.kernels:KERNELS"))
    # "median" (heuristic over the pooled sample) or a number: sigma itself
    bandwidth: str = checked("median", Range(low=0, open_low=True, special=("median",)))
    bandwidth_scale: float = checked(1.0, Range(low=0, open_low=True))  # multiplies sigma, for bandwidth ablations


@dataclass
class ReportConfig:
    # points per layer in the t-SNE picture (seeded, balanced by modality)
    tsne_points: int = checked(600, Range(low=4))
    tsne_pca_dim: int = checked(50, Range(low=2))  # PCA components before t-SNE (init="pca" takes 2)
    perplexity: float = checked(30.0, Range(low=0, open_low=True))  # t-SNE perplexity
    # t-SNE at most this many of the job's layers (evenly spaced, first and last included): layer=every has
    # 32 layers in LLaVA-1.5-7B, too many panels to read and minutes of t-SNE each job
    tsne_max_layers: int = checked(8, Range(low=1))
    seed: int = 0


@dataclass
class LoggerConfig:
    name: str = checked("wandb", OneOf(registry="experiments.tracking:LOGGERS"))  # wandb | none
    project: str = "keyspace"  # W&B project
    entity: str | None = None  # W&B entity (team or user); None = the default of the login
    # offline | online | disabled; the WANDB_MODE environment variable wins
    mode: str = checked("offline", OneOf(("offline", "online", "disabled")))


@dataclass
class PathsConfig:
    cache_dir: str = "???"  # shared key cache and built tiny checkpoints; shared storage on a cluster
    # lock of a cache entry while a job extracts into it: fcntl (kernel locks) | lockfile (an O_EXCL lock file, for
    # NFS / Lustre mounts without working fcntl locks; see store/lock.py). Jobs sharing a cache use the same kind.
    cache_lock: str = checked("fcntl", OneOf(registry="experiments.store.lock:LOCKS"))
    # lockfile: seconds a lock file may go without its holder's heartbeat before a waiter breaks it (dead holder)
    cache_lock_stale_s: float = checked(120.0, Range(low=0, open_low=True))
    # Site file (conf/local/default.yaml, see conf/local.example.yaml): model config name -> local checkpoint
    # folder, benchmark name -> local file or folder. The model and benchmark configs take their `path` from here
    # when their name is listed, else their hub id; so one sweep over several models and benchmarks runs offline.
    models: dict[str, str] = field(default_factory=dict)
    benchmarks: dict[str, str] = field(default_factory=dict)


@dataclass
class InterventionConfig:
    # image-key intervention inside the forward pass (experiments.interventions), after RoPE at `layers`:
    # none | mean_shift | coral | random_shift | attention_boost; none runs no intervention stage at all
    name: str = checked("none", OneOf(registry="experiments.interventions:INTERVENTIONS"))
    # 0 = the unmodified model (bit for bit); key maps interpolate to the aligned keys at 1; attention_boost adds
    # strength x |score| to text-query x image-key scores
    strength: float = checked(0.0, Range(low=0))
    # decoder layers that get it: position names of layer.fractions or indices; None = the job's layer.positions
    layers: list[str] | None = checked(None, Each(Matches(r"-?\d+|[A-Za-z_]\w*", "a layer index or a position name"),
                                                  nonempty=True, distinct=True))
    # KV heads that change (attention_boost: the query heads reading them); None = all
    heads: list[int] | None = checked(None, Each(Range(low=0, integer=True), nonempty=True, distinct=True))
    # share of the samples (seeded) whose keys fit the statistics; the rest (held out) are measured
    calibration_fraction: float = checked(0.5, Range(low=0, high=1, open_low=True, open_high=True))
    # at most this many calibration / held-out samples (seeded choice); None = all of each part
    max_samples: int | None = checked(None, Range(low=2))
    # coral: covariances shrunk toward their mean eigenvalue, (1 - s) C + s tr(C)/d I, so C^(-1/2) exists
    shrinkage: float = checked(0.1, Range(low=0, high=1))
    # key-space MMD^2 after the intervention: at most this many held-out keys per modality (evenly over samples)
    max_tokens_per_group: int = checked(1000, Range(low=2))
    seed: int = 0  # seed of the calibration split, the random_shift directions and the bootstrap


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
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    num_threads: int | None = checked(None, Range(low=1))  # torch CPU threads; None leaves torch's default


GROUP_SCHEMAS = {
    "model": ModelConfig,
    "benchmark": BenchmarkConfig,
    "layer": LayerConfig,
    "metric": MetricConfig,
    "kernel": KernelConfig,
    "logger": LoggerConfig,
    "intervention": InterventionConfig,
}


def register_configs() -> None:
    """Store the job schema and one schema per config group in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="job_schema", node=JobConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group="schema", name=group, node=schema)
