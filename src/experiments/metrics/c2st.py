"""Classifier two-sample test statistic: held-out ROC AUC of a ridge classifier, for every split at once.

Contract: standardise the pooled sample z = x ∪ y (mean and standard deviation of every feature over
z, unit scale for a constant one: label-free, so the same for every split), label the rows of x -1 and
those of y +1, and split the units (whole blocks with block ids, else rows) into k folds, the x units
and the y units each dealt round-robin in a seeded random order, so every fold holds as many x units
as y units (±1) and a block never straddles two folds. For each fold, fit a ridge regression of the
labels on the features (penalty λ‖w‖² with λ = `alpha`, unpenalised intercept:
`sklearn.linear_model.RidgeClassifier(alpha)`) on the other k - 1 folds and score the held-out
rows. The statistic is the AUC over the (x row, y row) pairs held out in the same fold,
P(score_y > score_x) + ½ P(tie):

    AUC = Σ_f U_f / Σ_f n_x,f n_y,f,    U_f the Mann-Whitney count of fold f (average ranks for ties)

(Lopez-Paz & Oquab 2017, with AUC instead of accuracy). About 0.5 when x and y are indistinguishable,
1 when a linear boundary separates them; 0.5 where no fold holds both classes.

Why a ridge classifier and within-fold pairs (this module used a logistic regression and the AUC of
the out-of-fold scores pooled over folds before). A permutation test needs the statistic for B
relabellings: refitting a logistic regression B·k times is too slow, while ridge is closed-form and
its fit is linear in the labels, so one factorisation per fold serves all 1 + B label columns. The
folds are those of the observed split for every column (dealt once), so a permuted split's folds are
balanced only on average; pooling scores across folds would then mix the folds' intercepts, which
shifts with a fold's class balance and biases the pooled AUC below 0.5 (the 0.33-0.45 seen on
controls, issue 10), while within-fold pairs ignore each fold's intercept. The observed split's
balanced folds give its AUC a slightly smaller variance than a permuted split's, so the test is a
little conservative (type-I rate 0.032 at level 0.05 in tests/unit/test_permutation_engine.py).

Compute: one Cholesky factor per fold serves the labels of all splits `T [|R|, 1 + B]` (training rows
R, held-out rows E, T̃ = T centred per column), in whichever form has the smaller system. Primal
(d < N (k-1)/k): X̃ = Z_R centred over R, w = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀT̃ `[d, 1 + B]`, scores (Z_E - μ_R) w.
Dual (otherwise): with K = Z Zᵀ `[N, N]`, K̃ = C K_RR C (C centres over R), α = (K̃ + λI)⁻¹ T̃ and
scores K_ER α. Both are the ridge decision values up to one constant per fold and column (1ᵀα = 0),
invisible to within-fold ranks. Z and K float32, solves and ranks float64, on z's device.
"""

from __future__ import annotations

from typing import Any

import torch

from experiments.metrics.inputs import Array, Device, as_groups, as_pair, block_index
from experiments.metrics.permutations import split_masks


def c2st_auc(
    x: Array,
    y: Array,
    groups_x: Any = None,
    groups_y: Any = None,
    folds: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
    device: Device = None,
) -> float:
    """Held-out ROC AUC of a ridge classifier telling x's rows from y's (module docstring).

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        groups_x: Block ids of x's rows `[n_x]` (e.g. sample ids), or None to split folds by row.
        groups_y: Block ids of y's rows `[n_y]`, disjoint from `groups_x`; given together with it.
        folds: Number k of cross-validation folds (at least 2).
        alpha: Ridge penalty λ (> 0) on the standardised features.
        seed: Seed of the fold assignment.
        device: Compute device; None keeps the inputs' device (CPU for numpy).

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: For bad inputs naming the input, `folds < 2`, `alpha <= 0`, or fewer rows (blocks)
            per sample than folds.
    """
    tx, ty = as_pair(x, y, device)
    n_x, n_y = tx.shape[0], ty.shape[0]
    if (groups_x is None) != (groups_y is None):
        raise ValueError("groups_x and groups_y must be given together (or neither)")
    units = torch.arange(n_x + n_y)
    if groups_x is not None:
        units = block_index(as_groups(groups_x, n_x, "groups_x"), as_groups(groups_y, n_y, "groups_y"))[0]
    masks = split_masks(n_x, n_y, 0, seed).to(tx.device)
    z = torch.cat([tx, ty])
    return float(c2st_columns(z, masks, units=units, folds=folds, alpha=alpha, seed=seed)[0])


def c2st_columns(
    z: torch.Tensor,
    masks: torch.Tensor,
    *,
    units: torch.Tensor,
    folds: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Held-out ridge AUC of every split (the column function of `engine.permutation_test`).

    Args:
        z: Pooled sample `[N, d]`, float32, x rows first.
        masks: Splits `S [N, 1 + B]`, 0/1 float32 (column 0 the observed split, 1 = x row).
        units: Unit of every row `[N]` int64 (block index or row index); a unit lies on one side of
            every split.
        folds: Number k of folds (at least 2).
        alpha: Ridge penalty λ > 0.
        seed: Seed of the fold assignment.

    Returns:
        `[1 + B]` float64 on z's device.

    Raises:
        ValueError: For `folds < 2`, `alpha <= 0`, or fewer units per side of the observed split than folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha must be a positive float, got {alpha!r}")
    dev, f64 = z.device, torch.float64
    fold = _deal_folds(units.to(dev), masks[:, 0].to(dev) > 0, folds, seed)  # [N]
    var, mean = torch.var_mean(z, dim=0, correction=0)
    zs = (z - mean) / torch.where(var > 0, var.sqrt(), 1.0)
    n, d = z.shape
    gram = None if d < n * (folds - 1) // folds else zs @ zs.T  # dual form: [N, N] float32
    is_y = 1.0 - masks.to(device=dev, dtype=f64)  # [N, 1 + B]
    labels = 2.0 * is_y - 1.0  # +1 for y rows, -1 for x rows
    pairs = torch.zeros(masks.shape[1], dtype=f64, device=dev)
    wins = torch.zeros_like(pairs)
    for f in range(folds):
        test, train = fold == f, fold != f
        t = labels[train]
        scores = _ridge_scores(zs, gram, train, test, t - t.mean(0), alpha)  # [|E|, 1 + B]
        wins += _mann_whitney(scores, is_y[test])
        n_y_test = is_y[test].sum(0)
        pairs += n_y_test * (test.sum() - n_y_test)
    return torch.where(pairs > 0, wins / pairs.clamp_min(1.0), 0.5)


def _ridge_scores(
    zs: torch.Tensor,
    gram: torch.Tensor | None,
    train: torch.Tensor,
    test: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Held-out ridge scores `[|E|, C]` (up to a constant per column) for centred targets `[|R|, C]`.

    Primal when `gram` is None (a d×d system), else dual from the pooled Gram matrix `[N, N]`.
    """
    if gram is None:
        x_r = zs[train].double()
        centre = x_r.mean(0)
        x_r -= centre
        system = x_r.T @ x_r
        system.diagonal().add_(alpha)
        coef = torch.cholesky_solve(x_r.T @ targets, torch.linalg.cholesky(system))  # [d, C]
        return (zs[test].double() - centre) @ coef
    k_rr = gram[train][:, train].double()
    system = k_rr - k_rr.mean(0) - k_rr.mean(1, keepdim=True) + k_rr.mean()  # C K_RR C
    system.diagonal().add_(alpha)
    coef = torch.cholesky_solve(targets, torch.linalg.cholesky(system))  # [|R|, C]
    return gram[test][:, train].double() @ coef


def _deal_folds(units: torch.Tensor, row_in_x: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold of every row `[N]`: x units, then y units, dealt round-robin in a seeded random order."""
    fold_of_unit = torch.empty(int(units.max()) + 1, dtype=torch.int64, device=units.device)
    gen = torch.Generator().manual_seed(seed)
    dealt = 0
    for side in (row_in_x, ~row_in_x):
        members = units[side].unique()
        if members.numel() < folds:
            counts = (units[row_in_x].unique().numel(), units[~row_in_x].unique().numel())
            raise ValueError(f"folds={folds} needs at least {folds} rows (blocks) per sample, got {counts}")
        order = members[torch.randperm(members.numel(), generator=gen).to(units.device)]
        fold_of_unit[order] = (torch.arange(order.numel(), device=units.device) + dealt) % folds
        dealt += order.numel()
    return fold_of_unit[units]


def _mann_whitney(scores: torch.Tensor, is_y: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney count per column: #{(x, y) pairs with score_y > score_x} + ½ #{ties}.

    Args:
        scores: `[n, C]` float64.
        is_y: `[n, C]` float64 0/1, 1 for y rows.

    Returns:
        `[C]` float64: Σ_{y rows} average rank - n_y (n_y + 1) / 2.
    """
    cols = scores.T.contiguous()  # [C, n]
    ordered = cols.sort(dim=1).values
    below = torch.searchsorted(ordered, cols, right=False)
    through = torch.searchsorted(ordered, cols, right=True)
    ranks = (below + through + 1).to(scores.dtype).T / 2  # average 1-based rank, [n, C]
    n_y = is_y.sum(0)
    return (ranks * is_y).sum(0) - n_y * (n_y + 1) / 2
