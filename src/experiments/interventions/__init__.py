"""Interventions on image-token keys inside the forward pass, and what they change.

`INTERVENTIONS` is the registry behind `intervention.name`; `intervention_results` is the pipeline stage
(`stage.py`); key maps in `transforms.py`, the forward-pass mechanism in `hooks.py`, accuracy by option
likelihood in `accuracy.py`, attention share in `measure.py`.
"""

from __future__ import annotations

from typing import Any

INTERVENTIONS: dict[str, str] = {
    "none": "no intervention: no stage runs",
    "mean_shift": "image keys + strength x (mean text key - mean image key), per KV head (calibration means)",
    "coral": "image keys whitened by their calibration covariance, coloured by the text keys' (shrunk); "
             "strength interpolates",
    "random_shift": "control: a shift as long as mean_shift's, in a seeded random direction per KV head",
    "attention_boost": "PAI-style: text-query x image-key scores s -> s + strength |s|",
}


def intervention_results(*args: Any, **kwargs: Any) -> Any:
    """`stage.intervention_results`, imported on use (it loads models)."""
    from experiments.interventions.stage import intervention_results as run

    return run(*args, **kwargs)


__all__ = ["INTERVENTIONS", "intervention_results"]
