"""Hydra callbacks: at the end of a multirun, aggregate the sweep (`experiments.aggregate`).

Registered in `conf/config.yaml` under `hydra.callbacks.aggregate`. `on_multirun_end` runs in the
submitting process after every job returned (also with the SLURM and local submitit launchers). Hydra
1.3 skips it when any job of the sweep failed (the sweeper re-raises the job's error first), and a
sweep whose submitting shell died never reaches it: then run `python -m experiments.aggregate <sweep dir>`.
An aggregation error becomes a warning: the jobs' results are on disk whatever happens here.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AggregateCallback(Callback):
    """Calls `experiments.aggregate.aggregate(<sweep dir>)` when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Aggregate `config.hydra.sweep.dir`; log a warning instead of raising on any error."""
        sweep_dir = str(config.hydra.sweep.dir)
        try:
            from experiments.aggregate import aggregate

            aggregate(sweep_dir)
        except Exception as error:
            log.warning("aggregating %s failed (%s: %s); rerun: python -m experiments.aggregate %s",
                        sweep_dir, type(error).__name__, error, sweep_dir)
