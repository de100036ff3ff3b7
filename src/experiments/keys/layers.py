"""Resolve layer positions (`early`, `middle`, `late`) or explicit indices to decoder-layer indices.

Rule: in a decoder of L layers, a named position with fraction f is layer floor(f * (L - 1) + 0.5).
The fractions live in `conf/layer/*.yaml` (defaults early 0.1, middle 0.5, late 0.9): LLaVA-1.5-7B
(L=32) -> 3, 16, 28; Qwen2.5-VL-7B (L=28) -> 3, 14, 24; the tiny models (L=4) -> 0, 2, 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSpec:
    label: str  # what the results row calls it: the position name, or the index as text
    index: int  # decoder-layer index, 0-based


def resolve_layers(positions: list[str], fractions: dict[str, float], depth: int) -> list[LayerSpec]:
    """Layer specs for `positions` in a decoder of `depth` layers, in the order given.

    Raises:
        ValueError: an unknown position name, or an index outside [-depth, depth) (negative indices
            count from the end, as in Python); the message names `layer.positions` and the valid range.
    """
    specs = []
    for position in positions:
        text = str(position).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not -depth <= index < depth:
                raise ValueError(
                    f"layer.positions contains {index}, but the model has {depth} decoder layers: "
                    f"use an index in [0, {depth - 1}] (or -{depth}..-1 from the end), or one of {sorted(fractions)}")
            specs.append(LayerSpec(label=text, index=index % depth))
        elif text in fractions:
            specs.append(LayerSpec(label=text, index=math.floor(fractions[text] * (depth - 1) + 0.5)))
        else:
            raise ValueError(f"layer.positions contains {text!r}: use a layer index or one of {sorted(fractions)}")
    if len({s.index for s in specs}) != len(specs):
        raise ValueError(f"layer.positions {positions} resolve to repeated layers {[s.index for s in specs]} "
                         f"in a {depth}-layer decoder: list each layer once")
    return specs
