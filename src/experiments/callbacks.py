"""Hydra callbacks: before a multirun, check every job's config; at its end, aggregate the sweep.

`ValidateCallback.on_multirun_start` composes each job of the sweep in the submitting process, as the basic
sweeper will, and checks it against the schema's valid values (`validation`): a bad value stops the sweep
before anything is submitted, with one line per bad job. Hydra turns a callback's exceptions into warnings,
so it exits with `SystemExit`, which Hydra lets through. Sweepers other than the basic one are left to check
each job when it starts (`pipeline.run`).

`AggregateCallback` is registered in `conf/config.yaml` under `hydra.callbacks.aggregate`. `on_multirun_end` runs in the
submitting process after every job returned (also with the SLURM and local submitit launchers). Hydra
1.3 skips it when any job of the sweep failed (the sweeper re-raises the job's error first), and a
sweep whose submitting shell died never reaches it: then run `python -m experiments.aggregate <sweep dir>`.
An aggregation error becomes a warning: the jobs' results are on disk whatever happens here.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class ValidateCallback(Callback):
    """Checks the config of every job of a sweep before any is launched (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Compose each job (sweeper params + command-line overrides) and exit on any bad value."""
        if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from experiments.validation import problems

        loader = GlobalHydra.instance().config_loader()
        params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            params + list(config.hydra.overrides.task))
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        bad = []
        for number, overrides in enumerate(jobs):
            job_cfg = loader.load_sweep_config(config, list(overrides))
            with open_dict(job_cfg):
                del job_cfg["hydra"]
            if found := problems(OmegaConf.to_object(job_cfg)):
                bad.append(f"job {number} ({' '.join(overrides)}): {'; '.join(found)}")
        if bad:
            raise SystemExit(f"configuration error in {len(bad)} of {len(jobs)} jobs, nothing was launched:\n"
                             + "\n".join(bad))
        log.info("checked the configs of all %d jobs of the sweep", len(jobs))


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
