"""Benchmark registry: `load_samples(cfg)` returns the samples of the benchmark named in the config.

Each loader is keyed by the short name that is written into every results row; an unknown name
raises an error listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from experiments.benchmarks.sample import Sample
from experiments.benchmarks.synthetic import synthetic_samples
from experiments.config import BenchmarkConfig

LOADERS: dict[str, Callable[[BenchmarkConfig], list[Sample]]] = {
    "synthetic": synthetic_samples,
}


def load_samples(cfg: BenchmarkConfig) -> list[Sample]:
    """Samples of benchmark `cfg.name`, in the benchmark's own order.

    Raises:
        ValueError: unknown benchmark name (the message lists the valid names).
    """
    if cfg.name not in LOADERS:
        raise ValueError(
            f"benchmark.name={cfg.name!r} is not a known benchmark; valid names: {sorted(LOADERS)}. "
            "Pick one with benchmark=<name> on the command line."
        )
    return LOADERS[cfg.name](cfg)


__all__ = ["Sample", "load_samples", "LOADERS"]
