"""Per-sample paired distances: is the modality gap a property of each sample, or of the modalities?

For sample s with image-key mean m_s and text-key mean t_s (over its cached tokens of one layer):
`own` = ||m_s - t_s|| (the gap inside the sample) and `other` = mean over the other samples r of
||m_s - t_r|| (the same image against other samples' text). own ≈ other means the gap separates the
modalities as a whole; own << other would mean image and text keys of one sample sit together. A
Wilcoxon signed-rank test (scipy) over the samples compares the two.
"""

from __future__ import annotations

import numpy as np
import torch


def paired_distances(image_means: torch.Tensor, text_means: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Own and other-sample distances of every sample.

    Args:
        image_means: [samples, dim] each sample's mean image key (float64).
        text_means: [samples, dim] each sample's mean text key, same sample order.

    Returns:
        (own [samples], other [samples]) as float64 numpy arrays.

    Raises:
        ValueError: fewer than 2 samples or mismatched shapes.
    """
    if image_means.shape != text_means.shape or image_means.ndim != 2 or len(image_means) < 2:
        raise ValueError(f"need [samples >= 2, dim] means of equal shape, got {tuple(image_means.shape)} and "
                         f"{tuple(text_means.shape)}")
    distances = torch.cdist(image_means.double(), text_means.double())  # [s, r]: image of s vs text of r
    own = distances.diagonal()
    other = (distances.sum(dim=1) - own) / (len(own) - 1)
    return own.numpy(), other.numpy()


def paired_test(own: np.ndarray, other: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of own vs other (NaN when every difference is 0)."""
    from scipy.stats import wilcoxon

    if np.all(own == other):
        return float("nan")
    return float(wilcoxon(own, other).pvalue)
