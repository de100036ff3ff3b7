"""Weights & Biases logging, called only after results are on disk, so a W&B failure loses nothing.

Offline by default: the run files go under the job dir (`<job>/wandb/`) and `wandb sync` uploads them
later. The `WANDB_MODE` environment variable, when set, wins over `logger.mode`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.config import LoggerConfig

log = logging.getLogger(__name__)
LOGGERS = ("wandb", "none")


def log_run(cfg: LoggerConfig, output_dir: Path, config: dict[str, Any], results: pd.DataFrame,
            figures: list[Path], name: str, group: str | None) -> None:
    """One W&B run: resolved config, mean value per metric/comparison/layer as summary, table, figures."""
    if cfg.name == "none":
        return
    try:
        import wandb

        run = wandb.init(project=cfg.project, entity=cfg.entity, dir=str(output_dir), name=name, group=group,
                         config=config, mode=os.environ.get("WANDB_MODE", cfg.mode))  # type: ignore[arg-type]
        try:
            means = results.groupby(["metric", "comparison", "layer"])["value"].mean()
            run.summary.update({f"{m}/{c}/{layer}": float(v) for (m, c, layer), v in means.items()})
            run.log({"results": wandb.Table(dataframe=results),
                     **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
        finally:
            run.finish()
    except Exception:
        log.exception("W&B logging failed; the results are safe in %s", output_dir)
