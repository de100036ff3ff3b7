"""Speed and agreement of keyspace's MMD permutation test against a floor and two peer libraries.

Peers are never keyspace dependencies. Install them in a separate virtual environment that reuses
the system torch (check with --dry-run first that pip does not replace torch):

    python3 -m venv /work/benchvenv --system-site-packages
    /work/benchvenv/bin/pip install --dry-run -e ".[bench]"   # must not list torch
    /work/benchvenv/bin/pip install -e ".[bench]"
    PYTHONPATH=src /work/benchvenv/bin/python bench/metrics.py --quick

A peer that cannot be imported is skipped with the reason printed. In one process, on identical data
(x ~ N(0, I), y ~ N(0.1·1, I), float32, n rows each, rbf kernel, σ = median pooled distance, B
permutations) it times:

- keyspace  `experiments.metrics.mmd_test` (unbiased MMD², blocks of the pooled kernel, one GEMM).
- reference the floor, written here: pooled kernel matrix once, all permutations as one matrix product.
- alibi     alibi-detect `MMDDrift` (pytorch backend) given keyspace's σ (its default would be
            exp(-d²/med(d²)), i.e. σ/√2); unbiased MMD², same definition as keyspace.
- hyppo     `hyppo.ksample.MMD(compute_kernel="gaussian", bias=True).test(auto=False)` (without
            auto=False hyppo silently uses a chi² approximation). Same σ rule. Its statistic is the
            distance-correlation form 2n²m²/N⁴ · sqrt(tr(HKH·HLH) / (‖HKH‖_F ‖HLH‖_F)) with L the
            gaussian label kernel; it is mapped back to biased MMD² = wᵀKw with ‖HKH‖_F from the
            float64 kernel matrix, and compared with keyspace's biased MMD².

Columns: seconds per test, keyspace / reference (target ≤ 1.5), faster peer / keyspace (target ≥ 30),
relative differences of MMD² with keyspace. hyppo is skipped above --hyppo-max-n rows per group by
default (its Python loop over O(N²) permutations takes hours at n = 4000).

A second table times `experiments.metrics.permutation_test` for every metric on the same kind of data
(n = 1,000 rows each, d = 4,096, B = 500 by default; the pipeline's options, `ENGINE_OPTIONS`), each
as seconds and as a ratio to the mmd2 test's time in the same run (issue 10's target: each ≤ 3).
`--table` picks the tables.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from experiments.metrics import mmd2, mmd_test, permutation_test

SIZES = [(n, d) for n in (1000, 4000) for d in (128, 512, 4096)]
ENGINE_SIZES = [(1000, 4096)]
ENGINE_OPTIONS: dict[str, dict[str, Any]] = {  # conf/metric/all.yaml, kernel=rbf
    "mmd2": {"kernel": "rbf"},
    "jsd": {"projection": "pca", "n_projections": 16, "bins": "auto", "estimator": "miller_madow"},
    "energy": {},
    "sliced_wasserstein": {"n_projections": 128},
    "c2st_auc": {"folds": 5},
}


def reference_test(x: torch.Tensor, y: torch.Tensor, n_permutations: int, seed: int) -> tuple[float, float]:
    """Unbiased rbf MMD² permutation test from one pooled kernel matrix and one permutation GEMM."""
    n, m = x.shape[0], y.shape[0]
    z = torch.cat([x, y])
    big_n = n + m
    sq = z.square().sum(1)
    k = (z @ z.T).mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0.0).fill_diagonal_(0.0)
    sub = k
    if big_n > 4000:  # same seeded subsample as keyspace's median rule
        idx = torch.randperm(big_n, generator=torch.Generator().manual_seed(seed))[:4000].sort().values
        sub = k[idx][:, idx]
    d2 = sub[torch.ones_like(sub, dtype=torch.bool).triu_(1)]
    sigma = float(np.median(np.sqrt(d2.double().numpy())))
    k.mul_(-0.5 / sigma**2).exp_()
    gen = torch.Generator().manual_seed(seed)
    s = (torch.rand(n_permutations, big_n, generator=gen).argsort(dim=1) < n).float()  # [B, N]
    quad = (k @ s.T).mul_(s.T).sum(0, dtype=torch.float64)  # sᵀKs for every permutation
    r = k.sum(1, dtype=torch.float64)
    s64 = s.double()
    s_r, total = s64 @ r, r.sum()
    null = ((quad - n) / (n * (n - 1)) + (total - 2 * s_r + quad - m) / (m * (m - 1))
            - 2 * (s_r - quad) / (n * m))
    kxx, kyy, kxy = (k[:n, :n].sum(dtype=torch.float64), k[n:, n:].sum(dtype=torch.float64),
                     k[:n, n:].sum(dtype=torch.float64))
    observed = float((kxx - n) / (n * (n - 1)) + (kyy - m) / (m * (m - 1)) - 2 * kxy / (n * m))
    return observed, (1 + int((null >= observed).sum())) / (1 + n_permutations)


def alibi_test(x: np.ndarray, y: np.ndarray, sigma: float, n_permutations: int) -> tuple[float, float]:
    """alibi-detect MMDDrift (pytorch backend) with a fixed σ; returns (MMD², p)."""
    from alibi_detect.cd import MMDDrift

    detector = MMDDrift(x, backend="pytorch", sigma=np.array([sigma], dtype=np.float32),
                        configure_kernel_from_x_ref=False, n_permutations=n_permutations, device="cpu")
    p, stat, _ = detector.score(y)
    return float(stat), float(p)


def hyppo_test(x: np.ndarray, y: np.ndarray, n_permutations: int, workers: int) -> tuple[float, float]:
    """hyppo MMD (gaussian, biased, permutation p-value); returns (hyppo statistic, p)."""
    from hyppo.ksample import MMD

    stat, p = MMD(compute_kernel="gaussian", bias=True).test(x, y, reps=n_permutations, workers=workers,
                                                             auto=False, random_state=0)
    return float(stat), float(p)


def hyppo_to_biased_mmd2(stat: float, x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Undo hyppo's normalisation: biased MMD² from its distance-correlation statistic (docstring above)."""
    n, m = len(x), len(y)
    big_n = n + m
    z = torch.from_numpy(np.concatenate([x, y])).double()
    k = torch.exp(-torch.cdist(z, z).square() / (2 * sigma**2))
    hkh = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    e = math.exp(-0.5)  # label kernel off-class value: gaussian on 0/1 labels, median label distance 1
    norm_l = (1 - e) * 2 * n * m / big_n  # ‖HLH‖_F
    covar = (stat * big_n**4 / (2 * n**2 * m**2)) ** 2 * float(hkh.norm()) * norm_l
    return covar * big_n**2 / ((1 - e) * 2 * n**2 * m**2)


def timed(repeats: int, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Best wall time of `fn(*args)` over `repeats` runs, and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def peer_status(module: str) -> str | None:
    """None when the peer imports, else the reason it is skipped."""
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means the peer is skipped
        return f"{type(exc).__name__}: {exc}"
    return None


def run(sizes: list[tuple[int, int]], n_permutations: int, repeats: int, hyppo_max_n: int) -> None:
    """Time every method at every size and print one table row per size."""
    peer_modules = {"alibi": "alibi_detect.cd", "hyppo": "hyppo.ksample"}
    skipped = {name: peer_status(module) for name, module in peer_modules.items()}
    for name, reason in skipped.items():
        if reason:
            print(f"# {name} skipped: {reason}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; B = {n_permutations} "
          f"permutations; keyspace/reference best of {repeats}, peers one run")
    warm_x = torch.randn(50, 8)
    mmd_test(warm_x, warm_x + 1, n_permutations=10)
    if not skipped["hyppo"]:  # numba compiles on the first call: keep it out of the timings
        hyppo_test(warm_x.double().numpy(), warm_x.double().numpy() + 1, 10, 1)
    header = (f"{'n':>5} {'d':>5} | {'keyspace':>8} {'ref':>8} {'alibi':>8} {'hyppo':>8} | {'ks/ref':>6} "
              f"{'peer/ks':>7} | {'dMMD ref':>10} {'dMMD alibi':>10} {'dMMD hyppo':>10} | "
              "p ks / ref / alibi / hyppo")
    print(header)
    print("-" * len(header))
    for n, d in sizes:
        rng = np.random.default_rng(n + d)
        xn = rng.standard_normal((n, d), dtype=np.float32)
        yn = rng.standard_normal((n, d), dtype=np.float32) + np.float32(0.1)
        peers = [p for p in ("alibi", "hyppo") if not skipped[p] and (p != "hyppo" or n <= hyppo_max_n)]
        print(bench_size(xn, yn, n_permutations, repeats, peers), flush=True)
    if hyppo_max_n < max(n for n, _ in sizes) and not skipped["hyppo"]:
        print(f"# hyppo not run above n = {hyppo_max_n} (raise --hyppo-max-n to run it)")


def bench_size(xn: np.ndarray, yn: np.ndarray, n_permutations: int, repeats: int, peers: list[str]) -> str:
    """One table row: times, ratios, MMD² differences and p-values at one size."""
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    t_ks, ks = timed(repeats, mmd_test, x, y, "rbf", "median", n_permutations, 0)
    res = {"ref": timed(repeats, reference_test, x, y, n_permutations, 0)}
    if "alibi" in peers:
        res["alibi"] = timed(1, alibi_test, xn, yn, ks.bandwidth, n_permutations)
    if "hyppo" in peers:
        res["hyppo"] = timed(1, hyppo_test, xn.astype(np.float64), yn.astype(np.float64), n_permutations,
                             torch.get_num_threads())
    rel = {k: abs(res[k][1][0] - ks.statistic) / abs(ks.statistic) for k in ("ref", "alibi") if k in res}
    if "hyppo" in res:
        biased = mmd2(x, y, unbiased=False)
        converted = hyppo_to_biased_mmd2(res["hyppo"][1][0], xn, yn, ks.bandwidth)
        rel["hyppo"] = abs(converted - biased) / abs(biased)
    faster_peer = min((res[k][0] for k in peers), default=math.nan)
    times = " ".join(f"{res[k][0]:>8.2f}" if k in res else f"{'-':>8}" for k in ("alibi", "hyppo"))
    diffs = " ".join(f"{rel[k]:>10.1e}" if k in rel else f"{'-':>10}" for k in ("ref", "alibi", "hyppo"))
    pvals = " / ".join(f"{res[k][1][1]:.3f}" if k in res else "-" for k in ("ref", "alibi", "hyppo"))
    return (f"{len(xn):>5} {xn.shape[1]:>5} | {t_ks:>8.3f} {res['ref'][0]:>8.3f} {times} | "
            f"{t_ks / res['ref'][0]:>6.2f} {faster_peer / t_ks:>7.1f} | {diffs} | {ks.p_value:.3f} / {pvals}")


def run_engine(sizes: list[tuple[int, int]], n_permutations: int, repeats: int) -> None:
    """Time `permutation_test` for every metric; one row per size: seconds (ratio to mmd2) per metric."""
    print(f"# permutation_test, B = {n_permutations}, best of {repeats}: seconds (time / mmd2 time)")
    header = f"{'n':>5} {'d':>5} | " + " ".join(f"{name:>20}" for name in ENGINE_OPTIONS)
    print(header)
    print("-" * len(header))
    for n, d in sizes:
        rng = np.random.default_rng(n + d)
        x = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
        y = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32) + np.float32(0.1))
        seconds = {}
        for name, options in ENGINE_OPTIONS.items():
            test = functools.partial(permutation_test, metric=name, n_permutations=n_permutations, seed=0,
                                     **options)
            seconds[name] = timed(repeats, test, x, y)[0]
        base = seconds["mmd2"]
        cells = " ".join(f"{f'{t:.2f} (x{t / base:.2f})':>20}" for t in seconds.values())
        print(f"{n:>5} {d:>5} | {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest size only (n = 1000, d = 128)")
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="runs of keyspace and reference (best taken)")
    parser.add_argument("--hyppo-max-n", type=int, default=1000, help="largest n per group hyppo is run at")
    parser.add_argument("--table", choices=("mmd", "engine", "both"), default="both",
                        help="mmd: the MMD test against peers; engine: permutation_test for every metric")
    args = parser.parse_args()
    if args.table != "engine":
        run(SIZES[:1] if args.quick else SIZES, args.permutations, args.repeats, args.hyppo_max_n)
    if args.table != "mmd":
        run_engine([(1000, 128)] if args.quick else ENGINE_SIZES, args.permutations, args.repeats)


if __name__ == "__main__":
    main()
