"""keyspace's MMD² against the peer libraries on one case each (skipped where a peer is not installed).

The peers live outside keyspace's dependencies (see the docstring of `bench/metrics.py` for the venv):
    PYTHONPATH=src /work/benchvenv/bin/python -m pytest tests/unit/test_metrics_peers.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.metrics import mmd2, mmd_test


def _sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 5)).astype(np.float32), (rng.normal(size=(50, 5)) + 0.5).astype(np.float32)


def test_unbiased_mmd2_equals_alibi_detect_with_the_same_sigma() -> None:
    pytest.importorskip("alibi_detect", reason="alibi-detect not installed (bench peer)")
    from alibi_detect.cd import MMDDrift

    x, y = _sample()
    result = mmd_test(x, y, n_permutations=10)
    detector = MMDDrift(x, backend="pytorch", sigma=np.array([result.bandwidth], dtype=np.float32),
                        configure_kernel_from_x_ref=False, n_permutations=10, device="cpu")
    _, alibi_mmd2, _ = detector.score(y)
    assert alibi_mmd2 == pytest.approx(result.statistic, rel=1e-5)


def test_biased_mmd2_equals_hyppo_after_undoing_its_normalisation() -> None:
    pytest.importorskip("hyppo", reason="hyppo not installed (bench peer)")
    from hyppo.ksample import MMD
    from scipy.spatial.distance import cdist

    x, y = _sample()
    n, m = len(x), len(y)
    big_n = n + m
    z = np.concatenate([x, y]).astype(np.float64)
    sigma = mmd_test(x, y, n_permutations=1).bandwidth  # hyppo's gamma = 1 / (2 median²): same σ
    stat = MMD(compute_kernel="gaussian", bias=True).statistic(x.astype(np.float64), y.astype(np.float64))
    # hyppo: stat = 2n²m²/N⁴ · sqrt(tr(HKH·HLH) / (‖HKH‖_F ‖HLH‖_F)), L the gaussian label kernel with
    # off-class value e = exp(-1/2); tr(HKH·HLH) = (1 - e) 2n²m²/N² · MMD²_b, ‖HLH‖_F = (1 - e) 2nm/N.
    k = np.exp(-cdist(z, z, "sqeuclidean") / (2 * sigma**2))
    h = np.eye(big_n) - 1.0 / big_n
    e = math.exp(-0.5)
    norm_hlh = (1 - e) * 2 * n * m / big_n
    covar = (stat * big_n**4 / (2 * n**2 * m**2)) ** 2 * np.linalg.norm(h @ k @ h) * norm_hlh
    hyppo_mmd2 = covar * big_n**2 / ((1 - e) * 2 * n**2 * m**2)
    assert hyppo_mmd2 == pytest.approx(mmd2(x, y, unbiased=False), rel=1e-6)
