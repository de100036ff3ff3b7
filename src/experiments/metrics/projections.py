"""1-D projections of a pooled sample, shared by the sliced metrics (JSD, sliced Wasserstein).

Contract: `directions(z, projection, k, seed) -> W [d, k']` with unit-norm columns:

- `pca`: the top-k principal directions of z (eigenvectors of the covariance of the centred pooled
  sample, largest eigenvalue first; k' = min(k, d)). Computed by a float64 symmetric eigensolver on
  the smaller of the d×d scatter matrix and the N×N Gram matrix (both float32 GEMMs on the device);
  the sign of each direction is arbitrary.
- `random`: k directions uniform on the unit sphere, drawn from a CPU `torch.Generator` seeded by
  `seed` (the same directions on every device).
- `none`: the identity, only for d = 1.
"""

from __future__ import annotations

import torch

PROJECTIONS = ("pca", "random", "none")


def directions(z: torch.Tensor, projection: str, k: int, seed: int) -> torch.Tensor:
    """Unit directions to project the pooled sample on.

    Args:
        z: Pooled sample `[N, d]`, float32.
        projection: One of `PROJECTIONS`.
        k: Number of directions asked for.
        seed: Seed of the random directions.

    Returns:
        `W [d, k']`, float32 on `z`'s device.

    Raises:
        ValueError: For an unknown projection (listing the valid ones), `k < 1`, or `none` with d > 1.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; valid projections: {', '.join(PROJECTIONS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"n_projections must be a positive int, got {k!r}")
    n, d = z.shape
    if projection == "none":
        if d != 1:
            raise ValueError(f"projection='none' needs 1-D data (d = 1), got d = {d}")
        return torch.ones(1, 1, dtype=z.dtype, device=z.device)
    if projection == "random":
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(d, k, generator=gen, dtype=torch.float64)
        return (w / w.norm(dim=0, keepdim=True)).to(device=z.device, dtype=z.dtype)
    zc = z - z.mean(dim=0)
    k = min(k, d)
    if d <= n:
        return _top_eigenvectors((zc.T @ zc).double(), k).to(z.dtype)
    w = zc.T.double() @ _top_eigenvectors((zc @ zc.T).double(), k)
    return (w / w.norm(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)).to(z.dtype)


def _top_eigenvectors(a: torch.Tensor, k: int) -> torch.Tensor:
    """Eigenvectors `[m, k]` of the k largest eigenvalues of symmetric `a [m, m]`, largest first.

    On CUDA `torch.linalg.eigh`; on CPU LAPACK `syevr` for the k eigenpairs only (scipy), which is
    about ten times faster there than torch's full decomposition at m = 4096.
    """
    m = a.shape[0]
    if a.is_cuda:
        return torch.linalg.eigh(a).eigenvectors[:, m - k :].flip(1)
    from scipy.linalg import eigh

    _, vecs = eigh(a.numpy(), subset_by_index=[m - k, m - 1], driver="evr")
    return torch.from_numpy(vecs[:, ::-1].copy())
