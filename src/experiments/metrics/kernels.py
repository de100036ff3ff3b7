"""MMD kernels by short name: small classes `(x [n, d], y [m, d]) -> [n, m]`.

Contract: `KERNELS` maps the short name written into result rows (`rbf`, `laplacian`, `linear`,
`polynomial`, `imq`, `energy`) to a class; `make_kernel(name, sigma)` builds one and raises a
`ValueError` listing the valid names for an unknown one. Each kernel is computed in two steps so the
median bandwidth rule can read the distances before the kernel is applied:

    pairwise(x, y) -> p [n, m]    (the distance its bandwidth rule uses, or the dot product)
    transform_(p)  -> k [n, m]    (in place)

Definitions (σ the bandwidth, d the feature dimension):

    rbf         exp(-‖a-b‖² / (2σ²))            rule `median_l2`: σ = median ‖a-b‖₂ over distinct pairs
    laplacian   exp(-‖a-b‖₁ / σ₁)               rule `median_l1`: σ₁ = median ‖a-b‖₁ over distinct pairs
    imq         (1 + ‖a-b‖²/σ²)^(-1/2)          rule `median_l2`
    linear      a·b                             no bandwidth
    polynomial  (a·b / d + 1)³                  no bandwidth
    energy      -‖a-b‖                          no bandwidth; MMD² = 2E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖
                                                (energy distance). The distance-induced kernel
                                                ‖a-z₀‖ + ‖b-z₀‖ - ‖a-b‖ (Sejdinovic et al. 2013, ×2) adds
                                                f(a) + f(b) terms that cancel exactly in both MMD²
                                                estimators; dropping them is exact and avoids round-off.

The rbf convention is hyppo's exp(-d²/(2·med(d)²)); alibi-detect's exp(-d²/med(d²)) is rbf with
`bandwidth_scale = 1/√2` (up to the even-count median). All arithmetic is float32 on the inputs' device.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch


def sq_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `‖a‖² + ‖b‖² - 2a·b`, clamped at 0, via one GEMM.

    Args:
        x: `[n, d]`.
        y: `[m, d]`.

    Returns:
        `[n, m]`, in the dtype of `x`.
    """
    out = torch.addmm(x.square().sum(1)[:, None], x, y.T, alpha=-2.0)
    return out.add_(y.square().sum(1)[None, :]).clamp_(min=0.0)


class Kernel:
    """Base class: `k(x [n, d], y [m, d]) -> [n, m]` as `transform_(pairwise(x, y))`.

    Attributes:
        name: Short name used in configs and result rows.
        bandwidth_rule: `median_l2`, `median_l1`, or None for kernels without a bandwidth.
        shift_invariant: Whether MMD² is unchanged when both samples move by one vector, so the caller
            may centre the pooled data first for float32 accuracy (true of every kernel but polynomial;
            linear kernel values change with the centre, its MMD² does not).
        distance_based: Whether `pairwise` is a distance (zero for a row against itself), so the caller
            may set the diagonal of a pooled block to exactly 0 (float32 GEMM distances are not).
        sigma: The bandwidth σ, or nan for kernels without one.
    """

    name: ClassVar[str]
    bandwidth_rule: ClassVar[str | None] = None
    shift_invariant: ClassVar[bool] = True
    distance_based: ClassVar[bool] = True

    def __init__(self, sigma: float | None = None) -> None:
        if self.bandwidth_rule is not None and (sigma is None or not sigma > 0):
            raise ValueError(f"kernel {self.name!r} needs a bandwidth sigma > 0, got {sigma}")
        self.sigma: float = math.nan if sigma is None else float(sigma)

    @staticmethod
    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance (or dot product) matrix `[n, m]` that `transform_` turns into kernel values."""
        raise NotImplementedError

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        """Turn `pairwise` output `[n, m]` into kernel values, in place; returns it."""
        raise NotImplementedError

    @staticmethod
    def to_distance(p: torch.Tensor) -> torch.Tensor:
        """Map `pairwise` output to the distance whose median is the bandwidth (identity here)."""
        return p

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Kernel matrix `[n, m]` between rows of `x [n, d]` and `y [m, d]`."""
        return self.transform_(self.pairwise(x, y))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class RBF(Kernel):
    """Gaussian kernel exp(-‖a-b‖² / (2σ²)); σ by the median Euclidean distance."""

    name = "rbf"
    bandwidth_rule = "median_l2"

    @staticmethod
    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sq_euclidean(x, y)

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        return p.mul_(-0.5 / self.sigma**2).exp_()

    @staticmethod
    def to_distance(p: torch.Tensor) -> torch.Tensor:
        return p.sqrt()


class IMQ(RBF):
    """Inverse multiquadric kernel (1 + ‖a-b‖²/σ²)^(-1/2); σ by the median Euclidean distance."""

    name = "imq"

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        return p.mul_(1.0 / self.sigma**2).add_(1.0).rsqrt_()


class Laplacian(Kernel):
    """Laplacian kernel exp(-‖a-b‖₁ / σ₁); σ₁ by the median L1 distance."""

    name = "laplacian"
    bandwidth_rule = "median_l1"

    @staticmethod
    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x, y, p=1.0)

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        return p.mul_(-1.0 / self.sigma).exp_()


class Linear(Kernel):
    """Linear kernel a·b (MMD² is then ‖mean(x) - mean(y)‖², biased form)."""

    name = "linear"
    distance_based = False

    @staticmethod
    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, y.T)

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        return p


class Polynomial(Kernel):
    """Cubic polynomial kernel (a·b / d + 1)³, d the feature dimension."""

    name = "polynomial"
    shift_invariant = False
    distance_based = False

    @staticmethod
    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, y.T).div_(x.shape[1])

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        return p.add_(1.0).pow_(3)


class Energy(Kernel):
    """Negative distance -‖a-b‖; its MMD² is the energy distance 2E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖."""

    name = "energy"

    @staticmethod
    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sq_euclidean(x, y).sqrt_()

    def transform_(self, p: torch.Tensor) -> torch.Tensor:
        return p.neg_()


KERNELS: dict[str, type[Kernel]] = {k.name: k for k in (RBF, Laplacian, Linear, Polynomial, IMQ, Energy)}


def kernel_class(name: str) -> type[Kernel]:
    """Look a kernel class up by short name.

    Args:
        name: One of `KERNELS`.

    Returns:
        The kernel class.

    Raises:
        ValueError: For an unknown name; the message lists the valid names.
    """
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; valid kernels: {', '.join(sorted(KERNELS))}") from None


def make_kernel(name: str, sigma: float | None = None) -> Kernel:
    """Build a kernel by short name.

    Args:
        name: One of `KERNELS`.
        sigma: Bandwidth σ (σ₁ for laplacian); required by rbf, laplacian and imq, ignored otherwise.

    Returns:
        The kernel, callable as `(x [n, d], y [m, d]) -> [n, m]`.

    Raises:
        ValueError: For an unknown name, or a missing or non-positive sigma where one is needed.
    """
    cls = kernel_class(name)
    return cls(sigma if cls.bandwidth_rule is not None else None)
