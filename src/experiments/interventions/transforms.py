"""Key statistics fitted on calibration samples, and the maps they define on image-token keys.

Contract. `fit_statistics(pools)` takes, per layer, the calibration keys of each modality
[tokens, kv_heads, head_dim] (post-RoPE, what enters q.k) and returns float64 means and covariances per KV
head (`KeyStatistics`). `key_map(name, stats, ...)` turns them into an affine map per KV head,
aligned(k) = k @ M + c, and `apply_map` moves image keys toward it:

    k <- k + strength * (aligned(k) - k)        (strength 0: k itself, bit for bit; 1: aligned(k))

- `mean_shift`: M = I, c = mu_text - mu_image; the image keys' mean moves by the calibration gap, so on the
  calibration samples it lands on the text mean.
- `coral`: M = C_image^(-1/2) C_text^(1/2), c = mu_text - mu_image @ M (whiten by the image covariance, colour
  by the text covariance, CORAL, Sun et al. 2016), each covariance shrunk toward its mean eigenvalue,
  C <- (1 - lambda) C + lambda tr(C)/d I, so the inverse root exists whatever the token count.
- `random_shift`: M = I, c = a seeded random direction with the norm of mu_text - mu_image (per head): the
  control that moves keys as far, but not toward the text keys.
Matrices are computed in float64 (symmetric eigendecomposition) and cast to the keys' dtype once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KEY_MAPS = ("mean_shift", "coral", "random_shift")


@dataclass
class KeyStatistics:
    """Calibration statistics of one layer, float64, per KV head.

    Attributes:
        image_mean, text_mean: [kv_heads, head_dim].
        image_cov, text_cov: [kv_heads, head_dim, head_dim] (ddof 1, no shrinkage).
        n_image, n_text: calibration tokens per modality.
    """

    image_mean: torch.Tensor
    text_mean: torch.Tensor
    image_cov: torch.Tensor
    text_cov: torch.Tensor
    n_image: int
    n_text: int

    def as_dict(self) -> dict[str, torch.Tensor | int]:
        return {"image_mean": self.image_mean, "text_mean": self.text_mean, "image_cov": self.image_cov,
                "text_cov": self.text_cov, "n_image": self.n_image, "n_text": self.n_text}


class Moments:
    """Running float64 count, sum and sum of outer products of keys per KV head, one sample at a time, so the
    calibration never holds more than one sample's keys: mean = sum / n, cov = (S2 - n mean mean^T) / (n - 1)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None  # [kv_heads, head_dim]
        self.outer: torch.Tensor | None = None  # [kv_heads, head_dim, head_dim]

    def add(self, keys: torch.Tensor) -> None:
        """Add keys [n, kv_heads, head_dim]."""
        x = keys.detach().double().cpu().transpose(0, 1)  # [kv_heads, n, head_dim]
        total, outer = x.sum(1), x.transpose(1, 2) @ x
        self.sum = total if self.sum is None else self.sum + total
        self.outer = outer if self.outer is None else self.outer + outer
        self.n += keys.shape[0]

    def mean_cov(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [kv_heads, head_dim] and covariance (ddof 1) [kv_heads, head_dim, head_dim].

        Raises:
            ValueError: fewer than 2 keys were added.
        """
        if self.n < 2 or self.sum is None or self.outer is None:
            raise ValueError(f"calibration has {self.n} {name} keys: covariances need at least 2")
        mean = self.sum / self.n
        cov = (self.outer - self.n * mean[:, :, None] * mean[:, None, :]) / (self.n - 1)
        return mean, (cov + cov.transpose(1, 2)) / 2


def statistics_of(image: Moments, text: Moments) -> KeyStatistics:
    """`KeyStatistics` from the running moments of each modality."""
    image_mean, image_cov = image.mean_cov("image")
    text_mean, text_cov = text.mean_cov("text")
    return KeyStatistics(image_mean, text_mean, image_cov, text_cov, image.n, text.n)


def fit_statistics(image: torch.Tensor, text: torch.Tensor) -> KeyStatistics:
    """Means and covariances per KV head of calibration keys.

    Args:
        image: [n_image, kv_heads, head_dim] image keys; text: [n_text, kv_heads, head_dim] text keys.

    Raises:
        ValueError: fewer than 2 tokens of a modality.
    """
    moments = Moments(), Moments()
    moments[0].add(image)
    moments[1].add(text)
    return statistics_of(*moments)


def shrink(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(1 - lambda) C + lambda tr(C)/d I per head; [kv_heads, d, d]."""
    d = cov.shape[-1]
    target = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(d, dtype=cov.dtype)
    return (1 - shrinkage) * cov + shrinkage * target


def _matrix_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    """Symmetric matrix power per head through eigh; eigenvalues clamped at 1e-12 x the largest."""
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp(min=1e-12 * values.amax(-1, keepdim=True).clamp(min=1e-300))
    return vectors @ torch.diag_embed(values**power) @ vectors.transpose(-1, -2)


@dataclass
class KeyMap:
    """aligned(k) = k @ matrix + offset per KV head; matrix None is the identity (a pure shift).

    Attributes:
        matrix: [kv_heads, head_dim, head_dim] or None; offset: [kv_heads, head_dim]; float64.
    """

    matrix: torch.Tensor | None
    offset: torch.Tensor


def key_map(name: str, stats: KeyStatistics, shrinkage: float = 0.0, seed: int = 0) -> KeyMap:
    """The affine map of intervention `name` (module docstring) from one layer's statistics.

    Raises:
        ValueError: `name` is not one of `KEY_MAPS`.
    """
    gap = stats.text_mean - stats.image_mean  # [kv_heads, head_dim]
    if name == "mean_shift":
        return KeyMap(None, gap)
    if name == "random_shift":
        generator = torch.Generator().manual_seed(seed)
        direction = torch.randn(gap.shape, generator=generator, dtype=torch.float64)
        return KeyMap(None, direction / direction.norm(dim=-1, keepdim=True) * gap.norm(dim=-1, keepdim=True))
    if name == "coral":
        matrix = (_matrix_power(shrink(stats.image_cov, shrinkage), -0.5)
                  @ _matrix_power(shrink(stats.text_cov, shrinkage), 0.5))
        offset = stats.text_mean - (stats.image_mean[:, None] @ matrix)[:, 0]
        return KeyMap(matrix, offset)
    raise ValueError(f"key map {name!r} is not one of {list(KEY_MAPS)}")


def apply_map(keys: torch.Tensor, is_image: torch.Tensor, mapping: KeyMap, strength: float,
              heads: list[int] | None = None) -> torch.Tensor:
    """Image keys moved toward `mapping`; text keys and unchosen heads untouched.

    Args:
        keys: [B, kv_heads, S, head_dim] post-RoPE keys (the layout the attention function receives).
        is_image: [B, S] True at image tokens.
        mapping: the layer's `KeyMap`; strength: 0 = identity, 1 = the aligned keys.
        heads: KV heads to change; None = all.

    Returns:
        A new tensor like `keys`.
    """
    offset = mapping.offset.to(keys.device, keys.dtype)[None, :, None]  # [1, kv, 1, hd]
    if mapping.matrix is None:
        step = offset.expand_as(keys)
    else:
        step = keys @ mapping.matrix.to(keys.device, keys.dtype)[None] + offset - keys
    chosen = is_image[:, None, :, None].to(keys.device)
    if heads is not None:
        head_mask = torch.zeros(keys.shape[1], dtype=torch.bool, device=keys.device)
        head_mask[heads] = True
        chosen = chosen & head_mask[None, :, None, None]
    return torch.where(chosen, keys + strength * step, keys)
