"""Benchmark registry: `load_samples(cfg)` returns the samples of the benchmark named in the config.

Loaders skip rows they cannot use (corrupt or missing image, unparsable options) and report them in
`BenchmarkData.skipped` instead of failing; the job fails only when nothing is left.

Each loader is keyed by the short name that is written into every results row; an unknown name
raises an error listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from experiments.benchmarks import mmbench, mmmu
from experiments.benchmarks.sample import BenchmarkData, Sample
from experiments.benchmarks.synthetic import synthetic_samples
from experiments.config import BenchmarkConfig

LOADERS: dict[str, Callable[[BenchmarkConfig], BenchmarkData]] = {
    "synthetic": synthetic_samples,
    **dict.fromkeys(mmbench.LANGUAGES, mmbench.mmbench_samples),  # mmbench_cn, mmbench_en: one loader
    "mmmu": mmmu.mmmu_samples,
}
# benchmark -> its `benchmark.prompt_style` choices (the config schema checks the field against this); synthetic
# questions follow `benchmark.style`, laid out as VLMEvalKit's prompt
PROMPT_STYLES: dict[str, tuple[str, ...]] = {"synthetic": ("vlmevalkit",),
                                             **dict.fromkeys(mmbench.LANGUAGES, tuple(mmbench.PROMPT_STYLES)),
                                             "mmmu": tuple(mmmu.PROMPT_STYLES)}


def load_samples(cfg: BenchmarkConfig) -> BenchmarkData:
    """Samples of benchmark `cfg.name`, in the benchmark's own order, with the rows it skipped.

    The fields were checked against their schema before (`validation`).

    Raises:
        ValueError: no usable sample.
    """
    data = LOADERS[cfg.name](cfg)
    if not data.samples:
        reasons = "; ".join(f"{s['sample_id']}: {s['reason']}" for s in data.skipped[:3])
        raise ValueError(f"benchmark {cfg.name!r} (path {cfg.path}) gave no usable sample; "
                         f"{len(data.skipped)} rows skipped, e.g. {reasons or 'none'}")
    return data


__all__ = ["BenchmarkData", "Sample", "load_samples", "LOADERS", "PROMPT_STYLES"]
