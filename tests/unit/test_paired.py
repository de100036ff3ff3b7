"""Per-sample paired distances against a float64 numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.metrics.paired import paired_distances, paired_test


def test_own_and_other_distances_match_numpy():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    own, other = paired_distances(torch.from_numpy(image), torch.from_numpy(text))
    for s in range(6):
        assert own[s] == pytest.approx(np.linalg.norm(image[s] - text[s]), rel=1e-12)
        others = [np.linalg.norm(image[s] - text[r]) for r in range(6) if r != s]
        assert other[s] == pytest.approx(np.mean(others), rel=1e-12)


def test_a_sample_specific_pairing_is_found():
    """Text keys that sit next to their own sample's image keys: own << other, and the test says so."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(30, 8)) * 3
    own, other = paired_distances(torch.from_numpy(image), torch.from_numpy(image + rng.normal(size=(30, 8)) * 0.1))
    assert (own < other).all() and paired_test(own, other) < 1e-6


def test_fewer_than_two_samples_is_refused():
    with pytest.raises(ValueError, match="samples >= 2"):
        paired_distances(torch.zeros(1, 3), torch.zeros(1, 3))
