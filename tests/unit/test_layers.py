"""Layer positions resolve by the documented rule; bad positions name `layer.positions` and the range."""

from __future__ import annotations

import pytest

from experiments.keys.layers import resolve_layers

FRACTIONS = {"early": 0.1, "middle": 0.5, "late": 0.9}


@pytest.mark.parametrize(("depth", "expected"), [(32, [3, 16, 28]), (28, [3, 14, 24]), (4, [0, 2, 3])],
                         ids=["llava-7b", "qwen-7b", "tiny"])
def test_named_positions(depth, expected):
    specs = resolve_layers(["early", "middle", "late"], FRACTIONS, depth)
    assert [s.index for s in specs] == expected
    assert [s.label for s in specs] == ["early", "middle", "late"]


def test_explicit_and_negative_indices():
    specs = resolve_layers(["0", "-1"], FRACTIONS, 4)
    assert [(s.label, s.index) for s in specs] == [("0", 0), ("-1", 3)]


@pytest.mark.parametrize("depth", [4, 28, 32], ids=["tiny", "qwen-7b", "llava-7b"])
def test_every_expands_to_all_layers_labelled_like_indices(depth):
    specs = resolve_layers(["every"], FRACTIONS, depth)
    assert [s.index for s in specs] == list(range(depth))
    assert specs == resolve_layers([str(i) for i in range(depth)], FRACTIONS, depth)


@pytest.mark.parametrize(("positions", "needle"), [
    (["4"], "has 4 decoder layers"), (["-5"], "has 4 decoder layers"), (["deep"], "'deep'"),
    (["deep"], "'every'"), (["late", "3"], "repeated layers"), (["every", "late"], "repeated layers")],
    ids=["too-deep", "too-negative", "unknown-name", "unknown-lists-every", "duplicate", "every-and-named"])
def test_bad_positions(positions, needle):
    with pytest.raises(ValueError, match="layer.positions") as info:
        resolve_layers(positions, FRACTIONS, 4)
    assert needle in str(info.value)
