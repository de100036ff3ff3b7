"""Seeded permutation masks for two-sample tests, token-level or by whole blocks.

Contract: `split_masks` returns a float32 0/1 matrix `S [N, 1 + B]` over the pooled rows z = x ∪ y
(x rows first). Column 0 is the observed split (1 = row in x); column b ≥ 1 is the b-th permuted
split. A permutation shuffles *units*: each row is a unit (token-level), or, with block ids, each
block is one unit and keeps all its rows. The first g_x shuffled units go to the x side, where g_x is
the number of units x has, so the number of blocks per side is fixed while the number of rows per side
varies with the block sizes (any statistic must then use each column's own n_x = Σ S[:, b]).
The draws come from a CPU `torch.Generator` seeded by `seed`: the same seed gives the same masks on
every device. Memory: N · (1 + B) · 4 bytes for the masks.
"""

from __future__ import annotations

import torch


def split_masks(
    n_x: int,
    n_y: int,
    n_permutations: int,
    seed: int,
    blocks: tuple[torch.Tensor, int, int] | None = None,
) -> torch.Tensor:
    """Observed and permuted splits of the pooled sample as a 0/1 matrix.

    Args:
        n_x: Rows of x.
        n_y: Rows of y.
        n_permutations: Number B of permuted splits.
        seed: Seed of the CPU generator.
        blocks: `(index [n_x + n_y], g_x, g_y)` from `inputs.block_index`, or None to permute rows.

    Returns:
        `S [n_x + n_y, 1 + B]`, float32 on CPU; `S[i, b] = 1` when pooled row i is on the x side of
        split b.
    """
    if blocks is None:
        index, g_x, g_y = torch.arange(n_x + n_y), n_x, n_y
    else:
        index, g_x, g_y = blocks
    gen = torch.Generator().manual_seed(seed)
    # argsort of iid uniforms is a uniform random permutation; reading it as the units' ranks puts a
    # uniform random g_x-subset of the units on the x side.
    ranks = torch.rand(n_permutations, g_x + g_y, generator=gen).argsort(dim=1)
    unit_in_x = torch.cat([(torch.arange(g_x + g_y) < g_x)[None, :], ranks < g_x], dim=0)  # [1 + B, G]
    return unit_in_x[:, index].T.to(torch.float32).contiguous()
