"""Classifier two-sample test statistic: cross-validated ROC AUC of a logistic regression.

Contract: label the rows of x 0 and those of y 1, standardise the features and fit
`sklearn.linear_model.LogisticRegression` (L2, C = 1, lbfgs) on k - 1 folds, predict P(y | row) on the
held-out fold, and return the ROC AUC of the out-of-fold predictions pooled over all k folds
(Lopez-Paz & Oquab 2017, with AUC instead of accuracy). About 0.5 when x and y are
indistinguishable, 1 when a linear boundary separates them. Folds are `StratifiedKFold` over rows,
or, with block ids, `StratifiedGroupKFold` (whole blocks held out, class balance kept, which a plain
`GroupKFold` would not, since here every block belongs to one class); both shuffled by `seed`.
Runs on CPU with numpy (sklearn), whatever the inputs' device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.metrics.inputs import Array, as_groups, as_pair, block_index


def c2st_auc(
    x: Array,
    y: Array,
    groups_x: Any = None,
    groups_y: Any = None,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Out-of-fold ROC AUC of a logistic regression telling x's rows from y's.

    Args:
        x: First sample `[n_x, d]` (torch or numpy; `[n]` is read as `[n, 1]`).
        y: Second sample `[n_y, d]`.
        groups_x: Block ids of x's rows `[n_x]` (e.g. sample ids), or None to split folds by row.
        groups_y: Block ids of y's rows `[n_y]`, disjoint from `groups_x`; given together with it.
        folds: Number k of cross-validation folds (at least 2).
        seed: Seed of the fold shuffling.

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: For bad inputs naming the input, `folds < 2`, or fewer rows (blocks) per sample
            than folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    tx, ty = as_pair(x, y, "cpu")
    z = np.concatenate([tx.numpy(), ty.numpy()]).astype(np.float64)
    labels = np.r_[np.zeros(tx.shape[0], dtype=int), np.ones(ty.shape[0], dtype=int)]
    if (groups_x is None) != (groups_y is None):
        raise ValueError("groups_x and groups_y must be given together (or neither)")
    if groups_x is None:
        units, groups = (tx.shape[0], ty.shape[0]), None
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        index, g_x, g_y = block_index(as_groups(groups_x, tx.shape[0], "groups_x"),
                                      as_groups(groups_y, ty.shape[0], "groups_y"))
        units, groups = (g_x, g_y), index.numpy()
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    if min(units) < folds:
        raise ValueError(f"folds={folds} needs at least {folds} rows (blocks) per sample, got {units}")
    scores = np.empty(len(labels))
    for train, test in splitter.split(z, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(z[train], labels[train])
        scores[test] = model.predict_proba(z[test])[:, 1]
    return float(roc_auc_score(labels, scores))
