"""Mechanism: queries beside keys at the captured layers, attention recomputed in chunks, per-head allocation.

`attention_results` is the pipeline stage (`analysis.attention=true`); `scores` holds the chunked
recomputation and its per-sample reductions.
"""

from experiments.attention.analysis import attention_results

__all__ = ["attention_results"]
