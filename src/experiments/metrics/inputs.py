"""Boundary checks shared by every metric: arrays in, validated float32 tensors out.

Contract: a metric accepts torch tensors or numpy arrays of shape `[n, d]` (a 1-D array is read as
`[n, 1]`), and raises `ValueError` naming the offending input (`x`, `y`, `groups_x`, ...) for NaN or
inf, a wrong rank, mismatched `d`, fewer than two rows, or block ids of the wrong length. Nothing
here computes a statistic.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import torch

Array: TypeAlias = "torch.Tensor | np.ndarray"
Device: TypeAlias = "str | torch.device | None"


def resolve_device(x: Array, device: Device) -> torch.device:
    """Pick the compute device: `device` if given, else the tensor's own device, else CPU for numpy.

    Args:
        x: The first input of the metric.
        device: Requested device, or None to keep `x` where it is.

    Returns:
        The device every tensor of the computation lives on.
    """
    if device is not None:
        return torch.device(device)
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def as_matrix(a: Array, name: str, device: torch.device, min_rows: int = 2) -> torch.Tensor:
    """Convert one sample to a float32 tensor `[n, d]` on `device` and check it.

    Args:
        a: Sample `[n, d]` or `[n]` (read as `[n, 1]`), torch or numpy.
        name: Name of the input, used in error messages.
        device: Target device.
        min_rows: Smallest allowed `n`.

    Returns:
        Tensor `[n, d]`, float32, contiguous, on `device`.

    Raises:
        ValueError: If `a` is not 1-D or 2-D, has fewer than `min_rows` rows or no columns, or holds
            NaN or inf (after conversion to float32).
    """
    if not isinstance(a, torch.Tensor | np.ndarray):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    t = torch.as_tensor(np.asarray(a, dtype=np.float32) if isinstance(a, np.ndarray) else a)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d] or [n], got {tuple(t.shape)}")
    if t.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {t.shape[0]}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} has no columns: shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf (after conversion to float32)")
    return t


def as_pair(x: Array, y: Array, device: Device) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two samples that must share their feature dimension.

    Args:
        x: First sample `[n_x, d]`.
        y: Second sample `[n_y, d]`.
        device: Compute device, or None (see `resolve_device`).

    Returns:
        `(x, y)` as float32 tensors on one device.

    Raises:
        ValueError: As `as_matrix`, or if the two `d` differ.
    """
    dev = resolve_device(x, device)
    tx, ty = as_matrix(x, "x", dev), as_matrix(y, "y", dev)
    if tx.shape[1] != ty.shape[1]:
        raise ValueError(f"x and y must have the same d: x is {tuple(tx.shape)}, y is {tuple(ty.shape)}")
    return tx, ty


def as_groups(groups: Any, n: int, name: str) -> np.ndarray:
    """Check block ids (e.g. sample ids) of one sample and return them as a numpy array.

    Args:
        groups: One id per row, any hashable values (ints, strings), sequence `[n]`.
        n: Number of rows of the sample the ids belong to.
        name: Name of the input, used in error messages.

    Returns:
        The ids as a 1-D numpy array `[n]`.

    Raises:
        ValueError: If the ids are not 1-D of length `n` or contain None/NaN.
    """
    g = groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one id per row ({n}), got shape {g.shape}")
    if g.dtype == object and any(v is None for v in g):
        raise ValueError(f"{name} contains None")
    if g.dtype.kind == "f" and not np.isfinite(g).all():
        raise ValueError(f"{name} contains NaN or inf")
    return g


def block_index(groups_x: np.ndarray, groups_y: np.ndarray) -> tuple[torch.Tensor, int, int]:
    """Map the block ids of both samples to consecutive integers, x blocks first.

    Args:
        groups_x: Block ids of x `[n_x]`.
        groups_y: Block ids of y `[n_y]`.

    Returns:
        `(index [n_x + n_y] int64 on CPU, g_x, g_y)`: the block of each pooled row, and the number of
        distinct blocks in x and in y.

    Raises:
        ValueError: If a block id occurs in both samples (a block must lie on one side), or a sample
            has fewer than two blocks (block permutation would have at most two distinct splits).
    """
    ux, ix = np.unique(groups_x, return_inverse=True)
    uy, iy = np.unique(groups_y, return_inverse=True)
    shared = np.intersect1d(ux, uy)
    if shared.size:
        raise ValueError(f"groups_x and groups_y share block ids (e.g. {shared[:3].tolist()}); "
                         "each block must lie entirely in x or in y")
    for name, u in (("groups_x", ux), ("groups_y", uy)):
        if u.size < 2:
            raise ValueError(f"{name} has {u.size} distinct block(s); block permutation needs at least 2")
    index = np.concatenate([ix.reshape(-1), iy.reshape(-1) + ux.size])
    return torch.from_numpy(index.astype(np.int64)), int(ux.size), int(uy.size)


def check_weights(wx: torch.Tensor, wy: torch.Tensor, n: int) -> torch.Tensor:
    """`[wx | wy]` `[N, 2C]` float32 after checking both are `[N, C]`, finite, non-negative, each column non-empty.

    Raises:
        ValueError: Naming `wx` or `wy`.
    """
    for name, w in (("wx", wx), ("wy", wy)):
        if w.ndim != 2 or w.shape[0] != n or w.shape != wx.shape:
            raise ValueError(f"{name} must have shape [N={n}, C] like wx, got {tuple(w.shape)}")
        totals = w.sum(0)
        if not bool(torch.isfinite(totals).all()) or not bool((w >= 0).all()):  # NaN fails w >= 0
            raise ValueError(f"{name} must hold finite non-negative weights")
        if bool((totals <= 0).any()):
            raise ValueError(f"every column of {name} needs a positive total weight")
    return torch.cat([wx, wy], dim=1).to(torch.float32)
