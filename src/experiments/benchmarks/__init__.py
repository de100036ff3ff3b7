"""Benchmark registry: `load_samples(cfg)` returns the samples of the benchmark named in the config.

Loaders skip rows they cannot use (corrupt or missing image, unparsable options) and report them in
`BenchmarkData.skipped` instead of failing; the job fails only when nothing is left.

Each loader is keyed by the short name that is written into every results row; an unknown name
raises an error listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from experiments.benchmarks.mmbench import mmbench_samples
from experiments.benchmarks.mmmu import mmmu_samples
from experiments.benchmarks.sample import BenchmarkData, Sample
from experiments.benchmarks.synthetic import synthetic_samples
from experiments.config import BenchmarkConfig

LOADERS: dict[str, Callable[[BenchmarkConfig], BenchmarkData]] = {
    "synthetic": synthetic_samples,
    "mmbench_cn": mmbench_samples,
    "mmmu": mmmu_samples,
}


def load_samples(cfg: BenchmarkConfig) -> BenchmarkData:
    """Samples of benchmark `cfg.name`, in the benchmark's own order, with the rows it skipped.

    Raises:
        ValueError: unknown benchmark name (the message lists the valid names), or no usable sample.
    """
    if cfg.name not in LOADERS:
        raise ValueError(
            f"benchmark.name={cfg.name!r} is not a known benchmark; valid names: {sorted(LOADERS)}. "
            "Pick one with benchmark=<name> on the command line."
        )
    data = LOADERS[cfg.name](cfg)
    if not data.samples:
        reasons = "; ".join(f"{s['sample_id']}: {s['reason']}" for s in data.skipped[:3])
        raise ValueError(f"benchmark {cfg.name!r} (path {cfg.path}) gave no usable sample; "
                         f"{len(data.skipped)} rows skipped, e.g. {reasons or 'none'}")
    return data


__all__ = ["BenchmarkData", "Sample", "load_samples", "LOADERS"]
