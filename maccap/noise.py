"""Gaussian noise models that stand in for the image-text modality gap during text-only training.

`NoiseModel` covers the isotropic noise of the paper (sigma^2 = 0.016 *per dimension*, so std 0.126
per coordinate), per-dimension variances, a full covariance and an optional mean offset, the latter
three usually fitted by the gap analysis. All sampling goes through an explicit torch.Generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maccap.errors import UserError

KINDS = ("none", "isotropic", "diagonal", "full")


@dataclass
class NoiseModel:
    """Additive Gaussian noise N(mean, cov) on D-dimensional features."""

    kind: str = "isotropic"
    variance: float = 0.016  # isotropic: the variance of every coordinate
    diag: torch.Tensor | None = None  # diagonal: per-dimension variances [D]
    chol: torch.Tensor | None = None  # full: Cholesky factor of the covariance [D, D]
    mean: torch.Tensor | None = None  # optional mean offset [D]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown noise kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "isotropic" and self.variance < 0:
            raise UserError(f"noise variance must be >= 0, got {self.variance}")
        if self.kind == "diagonal" and self.diag is None or self.kind == "full" and self.chol is None:
            raise UserError(f"noise kind {self.kind!r} needs its fitted {'variances' if self.kind == 'diagonal' else 'covariance'}")

    @classmethod
    def isotropic(cls, variance: float) -> "NoiseModel":
        return cls(kind="none" if variance == 0 else "isotropic", variance=float(variance))

    @classmethod
    def from_fitted(cls, fitted: Any, kind: str, with_mean: bool = False) -> "NoiseModel":
        """Build from the gap analysis' fitted model (attributes or keys: sigma2 / variances / cov / mean).

        Accepts any object or dict that holds the isotropic variance (``sigma2``/``isotropic_variance``),
        the per-dimension variances (``variances``/``var``/``diag``), the covariance (``cov``/``covariance``)
        and the mean offset (``mean``).
        """
        def get(*names: str) -> Any:
            for n in names:
                v = fitted.get(n) if isinstance(fitted, dict) else getattr(fitted, n, None)
                if v is not None:
                    return v
            return None

        def tensor(x: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), dtype=torch.float64)

        mean = None
        if with_mean:
            m = get("mean", "mean_offset")
            if m is None:
                raise UserError("the fitted noise model holds no mean offset; rerun the gap analysis with it")
            mean = tensor(m).float()
        if kind == "isotropic":
            s2 = get("sigma2", "isotropic_variance", "isotropic")
            if s2 is None:
                raise UserError("the fitted noise model holds no isotropic variance (sigma2)")
            return cls(kind="isotropic", variance=float(s2), mean=mean)
        if kind == "diagonal":
            v = get("variances", "var", "diag", "per_dim_var")
            if v is None:
                raise UserError("the fitted noise model holds no per-dimension variances")
            return cls(kind="diagonal", diag=tensor(v).clamp_min(0).float(), mean=mean)
        if kind == "full":
            c = get("cov", "covariance")
            if c is None:
                raise UserError("the fitted noise model holds no covariance matrix")
            c = tensor(c)
            c = (c + c.T) / 2
            jitter = 1e-10 * float(c.diagonal().mean())
            for _ in range(6):
                chol, info = torch.linalg.cholesky_ex(c + jitter * torch.eye(c.shape[0], dtype=c.dtype))
                if int(info) == 0:
                    return cls(kind="full", chol=chol.float(), mean=mean)
                jitter = max(jitter * 100, 1e-12)
            raise UserError("the fitted covariance is not positive semi-definite")
        raise UserError(f"unknown fitted noise kind {kind!r}; expected isotropic, diagonal or full")

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """Noise of shape [..., D] (float32), drawn on the CPU from `generator` for reproducibility."""
        z = torch.randn(shape, generator=generator, dtype=torch.float32)
        if self.kind == "none":
            z.zero_()
        elif self.kind == "isotropic":
            z = z * self.variance ** 0.5
        elif self.kind == "diagonal":
            z = z * self.diag.sqrt()
        else:
            z = z @ self.chol.T
        if self.mean is not None:
            z = z + self.mean
        return z.to(device)

    def add(self, x: torch.Tensor, generator: torch.Generator | None, renormalise: bool = True) -> torch.Tensor:
        """x + noise, then (by default) L2-normalised, as MacCap does in training and inference."""
        if self.kind == "none" and self.mean is None:
            return torch.nn.functional.normalize(x, dim=-1) if renormalise else x
        y = x + self.sample(tuple(x.shape), generator, x.device).to(x.dtype)
        return torch.nn.functional.normalize(y, dim=-1) if renormalise else y
