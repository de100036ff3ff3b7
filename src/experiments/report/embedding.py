"""2-D picture of one layer's keys: a balanced, seeded subsample, PCA, then t-SNE.

Select, then read: `embedding_rows` picks the tokens from the per-token metadata alone, so only those
rows of each layer are read from the key cache before `embed_keys` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch


def embedding_rows(is_image: np.ndarray, *, n_points: int, seed: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Sorted token rows to embed: up to `n_points`, half image and half text where possible (seeded), among
    the `eligible` tokens (all when None)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for modality in (True, False):
        idx = np.flatnonzero((is_image == modality) if eligible is None else (is_image == modality) & eligible)
        chosen.append(idx if len(idx) <= n_points // 2 else rng.choice(idx, n_points // 2, replace=False))
    return np.sort(np.concatenate(chosen))


def embed_keys(keys: torch.Tensor, is_image: np.ndarray, sample: np.ndarray, *, pca_dim: int, perplexity: float,
               seed: int) -> pd.DataFrame:
    """t-SNE coordinates of the given tokens (those of `embedding_rows`).

    Args:
        keys: [n, kv_heads*head_dim]; is_image, sample: [n], the same tokens.

    Returns:
        DataFrame with columns x, y, modality ("image" | "text"), sample_number.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    points = keys.double().numpy()
    # One thread: for a few hundred points OpenMP threads gain little, and when another process holds a
    # core they spin-wait, which made t-SNE 6x slower on a 2-core machine.
    with threadpool_limits(limits=1):
        reduced = PCA(n_components=min(pca_dim, *points.shape), random_state=seed).fit_transform(points)
        tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(points) - 1) / 3), init="pca", random_state=seed)
        xy = tsne.fit_transform(reduced)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "modality": np.where(is_image, "image", "text"),
                         "sample_number": sample})
