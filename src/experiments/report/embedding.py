"""2-D picture of one layer's keys: a balanced, seeded subsample, PCA, then t-SNE."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch


def embed_keys(keys: torch.Tensor, is_image: torch.Tensor, sample: torch.Tensor, *, n_points: int, pca_dim: int,
               perplexity: float, seed: int) -> pd.DataFrame:
    """t-SNE coordinates of up to `n_points` tokens, half image and half text where possible.

    Args:
        keys: [tokens, kv_heads*head_dim]; is_image, sample: [tokens].

    Returns:
        DataFrame with columns x, y, modality ("image" | "text"), sample_number.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    image_np = is_image.numpy()
    chosen = []
    for modality in (True, False):
        idx = np.flatnonzero(image_np == modality)
        chosen.append(idx if len(idx) <= n_points // 2 else rng.choice(idx, n_points // 2, replace=False))
    idx = np.sort(np.concatenate(chosen))
    points = keys[idx].double().numpy()
    # One thread: for a few hundred points OpenMP threads gain little, and when another process holds a
    # core they spin-wait, which made t-SNE 6x slower on a 2-core machine.
    with threadpool_limits(limits=1):
        reduced = PCA(n_components=min(pca_dim, *points.shape), random_state=seed).fit_transform(points)
        tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(idx) - 1) / 3), init="pca", random_state=seed)
        xy = tsne.fit_transform(reduced)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1],
                         "modality": np.where(image_np[idx], "image", "text"),
                         "sample_number": sample.numpy()[idx]})
