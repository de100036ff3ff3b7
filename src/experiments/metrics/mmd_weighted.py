"""MMD² of weighted pooled rows (the sample bootstrap), and its leave-one-sample-out values in closed form.

`WeightedMMD2(z, ...)` computes σ and the kernel matrix of the pooled rows once; calling it with weight
columns gives one MMD² per column (`mmd2_weighted_columns`), and `leave_one_block_out()` gives the MMD²
of the observed split with each block (sample) left out in turn, which BCa's jackknife needs: from
one kernel product with [1_x, 1_y] and the per-block sums (diag K and each block's within sum, which no
weighting changes and are computed once), where the same values as weight columns would cost one kernel
product per block (`bootstrap`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from experiments.metrics.inputs import check_weights
from experiments.metrics.kernels import kernel_class
from experiments.metrics.mmd import _pairwise_rows, _prepare, _resolve_sigma


def mmd2_weighted_columns(
    z: torch.Tensor,
    wx: torch.Tensor,
    wy: torch.Tensor,
    *,
    kernel: str = "rbf",
    bandwidth: float | str = "median",
    bandwidth_scale: float = 1.0,
    unbiased: bool = True,
    seed: int = 0,
    blocks: torch.Tensor | None = None,
) -> torch.Tensor:
    """MMD² of weighted empirical distributions of the pooled rows, one per column (sample bootstrap).

    Column c puts weight a_i = wx[i, c] ≥ 0 on pooled row i for the x side and b_i = wy[i, c] for the y
    side (a bootstrap replicate: each row weighted by how often its sample was drawn). Each row belongs
    to a block (`blocks`, a sample; None: every row its own block) whose rows share one weight, the
    block's multiplicity c_B. With n_x = Σ a, n_y = Σ b, g = diag K and S_B = Σ_{i,j∈B} K_ij, m_B = |B|,

        within x = (aᵀKa - D_x) / (n_x² - P_x),   D_x = Σ_B (c_B² - c_B) S_B  [+ Σ_i a_i g_i if unbiased]
                                                  P_x = Σ_B (c_B² - c_B) m_B² [+ n_x if unbiased]
        MMD²     = within x + within y (same with b) - 2 aᵀKb / (n_x n_y)

    Materialise the replicate (block B repeated c_B times): the within-sample means run over its pairs of
    rows except those between two distinct copies of one block (pairs the data never had: a duplicated
    sample would otherwise pair with its own copy, raising the share of within-sample pairs, and the
    replicates would drift from the estimate by that alone; e.g. keys of one prompt template repeated
    across samples), and the unbiased form also drops each row's pair with itself. So the biased form
    keeps the original's share of i = j pairs, and a = s, b = 1 - s for a 0/1 split s gives
    `mmd2_columns` (up to float32 round-off). σ comes from the pooled rows z as given (median heuristic
    over z, not over a replicate), so every column shares one kernel.

    Args:
        z: Pooled sample `[N, d]`, float32.
        wx: x-side weights `[N, C]`, non-negative.
        wy: y-side weights `[N, C]`, non-negative; the unbiased form needs two distinct rows per side.
        kernel: Kernel short name (`kernels.KERNELS`).
        bandwidth: `"median"` (over the pooled z) or σ itself.
        bandwidth_scale: Factor applied to σ.
        unbiased: Unbiased (default) or biased (V-statistic) form.
        seed: Seed of the median subsample when N > 4000.
        blocks: Block of every pooled row `[N]` int64 in [0, G) (e.g. `inputs.block_index`), or None.

    Returns:
        `[C]` float64 on CPU.

    Raises:
        ValueError: For an unknown kernel, a bad bandwidth, bad `blocks`, or weights of the wrong shape,
            negative, or not constant within a block.
    """
    return WeightedMMD2(z, kernel=kernel, bandwidth=bandwidth, bandwidth_scale=bandwidth_scale,
                        unbiased=unbiased, seed=seed, blocks=blocks)(wx, wy)


class WeightedMMD2:
    """`mmd2_weighted_columns` with z fixed: σ and the kernel matrix (when it fits one block) computed once.

    `self(wx [N, C], wy [N, C]) -> [C]` float64 on CPU, for any number of calls (the bootstrap's batches).

    Raises:
        ValueError: For an unknown kernel, a bad bandwidth or bad `blocks` (here), bad weights (when called).
    """

    def __init__(
        self,
        z: torch.Tensor,
        *,
        kernel: str = "rbf",
        bandwidth: float | str = "median",
        bandwidth_scale: float = 1.0,
        unbiased: bool = True,
        seed: int = 0,
        blocks: torch.Tensor | None = None,
    ):
        self.kind = kernel_class(kernel)
        self.z, raw, full, self.rows = _prepare(self.kind, z)
        self.kern = self.kind(_resolve_sigma(self.z, raw, full, self.kind, bandwidth, bandwidth_scale, seed))
        self.full = None if full is None else self.kern.transform_(full)
        self.unbiased, self.n = unbiased, z.shape[0]
        self.blocks = self.one_hot = self.sizes = None
        if blocks is not None:
            self.blocks = blocks.to(device=z.device, dtype=torch.int64)
            if self.blocks.shape != (self.n,):
                raise ValueError(f"blocks must have shape [N={self.n}], got {tuple(self.blocks.shape)}")
            self.one_hot = torch.zeros(self.n, int(self.blocks.max()) + 1, dtype=torch.float32, device=z.device)
            self.one_hot[torch.arange(self.n, device=z.device), self.blocks] = 1.0
            self.sizes = self.one_hot.sum(0, dtype=torch.float64)
        # what no weighting changes, once: diag K and each block's within sum S_B = Σ_{i,j∈B} K_ij
        f64 = torch.float64
        self.diag = torch.zeros(self.n, dtype=f64, device=z.device)
        self.within = torch.zeros(0 if self.one_hot is None else self.one_hot.shape[1], dtype=f64, device=z.device)
        for start, stop, blk in self._kernel_rows():
            self.diag[start:stop] = blk.diagonal(offset=start)
            if self.one_hot is not None:
                self.within += (self.one_hot[start:stop] * torch.mm(blk, self.one_hot)).sum(0, dtype=f64)

    def _products(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(K·w [N, P] float32, Σ_i w_i (K·w)_i [P] float64)`: one pass over the kernel rows."""
        kw = torch.empty(self.n, w.shape[1], dtype=torch.float32, device=w.device)
        for start, stop, blk in self._kernel_rows():
            kw[start:stop] = torch.mm(blk, w)  # float32 GEMM, float64 reductions
        return kw, (w * kw).sum(0, dtype=torch.float64)

    def _kernel_rows(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """`(start, stop, K[start:stop])` over the kernel matrix, computed block by block unless held whole."""
        for start in range(0, self.n, self.rows):
            stop = min(self.n, start + self.rows)
            if self.full is not None:
                yield start, stop, self.full[start:stop]
            else:
                yield start, stop, self.kern.transform_(_pairwise_rows(self.kind, self.z, start, stop))

    def __call__(self, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
        w = check_weights(wx, wy, self.n).to(self.z.device)  # [N, 2C]
        c, f64 = wx.shape[1], torch.float64
        kw, quad = self._products(w)
        cross = (w[:, :c] * kw[:, c:]).sum(0, dtype=f64)  # aᵀKb
        diag = self.diag
        wd = w.to(f64)
        n_x, n_y = wd[:, :c].sum(0), wd[:, c:].sum(0)
        if self.one_hot is None or self.blocks is None or self.sizes is None:  # every row its own block
            unit_sums, unit_sizes, copies = diag, torch.ones_like(diag), wd
        else:
            unit_sums, unit_sizes = self.within, self.sizes
            copies = (self.one_hot.to(f64).T @ wd) / self.sizes[:, None]  # [G, 2C]: each block's multiplicity
            if not torch.allclose(copies[self.blocks], wd):
                raise ValueError("with blocks, the weights must be constant within each block")
        # pairs between two distinct copies of one block do not exist in the data: drop them (c² - c copies of
        # each within-block pair); the unbiased form also drops each copy's pair with itself, the biased keeps it
        extra = copies.square() - copies
        dropped, count = unit_sums @ extra, unit_sizes.square() @ extra
        if self.unbiased:
            dropped, count = dropped + diag @ wd, count + wd.sum(0)
        xx, yy = quad[:c], quad[c:]
        xx_mean, yy_mean = (xx - dropped[:c]) / (n_x**2 - count[:c]), (yy - dropped[c:]) / (n_y**2 - count[c:])
        return (xx_mean + yy_mean - 2 * cross / (n_x * n_y)).cpu()

    def leave_one_block_out(self, n_x: int) -> np.ndarray:
        """MMD² of the observed split (x = rows < n_x) with block B left out, for every block B, `[G]` float64.

        With a = 1_x, b = 1_y, leaving x's block B out changes aᵀKa by -2 Σ_{i∈B} (Ka)_i + S_B, aᵀKb by
        -Σ_{i∈B} (Kb)_i, n_x by -m_B and Σ_x g by -Σ_{i∈B} g_i (y's blocks alike), so every left-out value
        comes from K·[a, b] and the per-block sums. Equals calling `self` with those 0/1 weight columns.

        Raises:
            ValueError: Without `blocks`, or when a block has rows on both sides of `n_x`.
        """
        if self.one_hot is None or self.sizes is None:
            raise ValueError("leave_one_block_out needs blocks")
        f64, u = torch.float64, float(self.unbiased)
        side = (torch.arange(self.n, device=self.z.device) < n_x).to(torch.float32)
        w = torch.stack([side, 1 - side], dim=1)
        kw, quad = self._products(w)
        diag, within, one_hot = self.diag, self.within, self.one_hot.to(f64)
        in_x = one_hot.T @ side.to(f64)  # rows of each block on the x side
        if not bool(((in_x == 0) | (in_x == self.sizes)).all()):
            raise ValueError("every block must lie on one side of the split")
        per_block = one_hot.T @ torch.cat([kw.to(f64), diag[:, None]], dim=1)  # [G, 3]: Σ_B Ka, Σ_B Kb, Σ_B g
        ka, kb, g = per_block.unbind(1)
        wd = w.to(f64)
        sizes, totals, diag_sums = self.sizes, wd.sum(0), diag @ wd  # n_x, n_y; Σ_x g, Σ_y g
        cross = (wd[:, 0] * kw[:, 1].to(f64)).sum()
        is_x = in_x > 0

        def within_mean(q: torch.Tensor, n: torch.Tensor, g_sum: torch.Tensor) -> torch.Tensor:
            return (q - u * g_sum) / (n.square() - u * n)

        own = torch.where(is_x, 0, 1)  # the side that loses the block
        q_own = quad[own] - 2 * torch.where(is_x, ka, kb) + within
        n_own = totals[own] - sizes
        left = within_mean(q_own, n_own, diag_sums[own] - g)
        kept = within_mean(quad[1 - own], totals[1 - own], diag_sums[1 - own])
        cross_left = cross - torch.where(is_x, kb, ka)
        return (left + kept - 2 * cross_left / (n_own * totals[1 - own])).cpu().numpy()

