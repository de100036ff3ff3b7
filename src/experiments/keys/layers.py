"""Resolve layer positions (`early`, `middle`, `late`, `every`) or explicit indices to decoder-layer indices.

Rule: in a decoder of L layers, a named position with fraction f is layer floor(f * (L - 1) + 0.5).
The fractions live in `conf/layer/*.yaml` (defaults early 0.1, middle 0.5, late 0.9): LLaVA-1.5-7B
(L=32) -> 3, 16, 28; Qwen2.5-VL-7B (L=28) -> 3, 14, 24; the tiny models (L=4) -> 0, 2, 3.
`every` (`conf/layer/every.yaml`) expands to all layers 0..L-1, labelled like explicit indices ("0", "1",
...), so its rows pool with those of `layer.positions=[...]` jobs in the aggregate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.validation import ConfigError

EVERY = "every"  # the position that expands to every decoder layer


@dataclass(frozen=True)
class LayerSpec:
    label: str  # what the results row calls it: the position name, or the index as text
    index: int  # decoder-layer index, 0-based


def resolve_layers(positions: list[str], fractions: dict[str, float], depth: int) -> list[LayerSpec]:
    """Layer specs for `positions` in a decoder of `depth` layers, in the order given.

    Args:
        positions: Position names (keys of `fractions`), `every` (layers 0..depth-1, labelled "0", "1", ...)
            or decoder-layer indices as text (negative ones count from the end, as in Python).
        fractions: Fraction of the depth per position name.
        depth: Number of decoder layers of the model.

    Returns:
        One spec per resolved layer, in the order of `positions`.

    Raises:
        ConfigError: an unknown position name, an index outside [-depth, depth), or positions that resolve
            to the same layer twice (e.g. `[every, late]`); the message names `layer.positions`.
    """
    names = [EVERY, *sorted(fractions)]
    specs = []
    for position in positions:
        text = str(position).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not -depth <= index < depth:
                raise ConfigError(
                    f"layer.positions contains {index}, but the model has {depth} decoder layers: "
                    f"use an index in [0, {depth - 1}] (or -{depth}..-1 from the end), or one of {names}")
            specs.append(LayerSpec(label=text, index=index % depth))
        elif text == EVERY:
            specs += [LayerSpec(label=str(index), index=index) for index in range(depth)]
        elif text in fractions:
            specs.append(LayerSpec(label=text, index=math.floor(fractions[text] * (depth - 1) + 0.5)))
        else:
            raise ConfigError(f"layer.positions contains {text!r}: use a layer index or one of {names}")
    if len({s.index for s in specs}) != len(specs):
        raise ConfigError(f"layer.positions {positions} resolve to repeated layers {[s.index for s in specs]} "
                         f"in a {depth}-layer decoder: list each layer once")
    return specs
