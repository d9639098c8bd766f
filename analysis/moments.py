"""Exact streaming moments (mean, full covariance, per-dimension 3rd/4th central moments).

Batches are reduced on their own (two-pass within the batch) and merged with the pairwise update
of Chan et al. / Pebay, all in float64, so a million 768-d pairs never sit in memory at once and the
result equals the batch computation to rounding error. A seeded reservoir keeps a uniform subsample
for the tests that need raw samples (Shapiro-Wilk, Anderson-Darling, Mardia, QQ plots).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def _gram(xc: np.ndarray) -> np.ndarray:
    """xc.T @ xc through BLAS syrk (one triangle: half the flops of a general matmul)."""
    from scipy.linalg.blas import dsyrk

    upper = dsyrk(1.0, xc.T, trans=0)  # xc.T is Fortran-ordered when xc is C-ordered: no copy
    return np.triu(upper) + np.triu(upper, 1).T


@dataclass
class StreamingMoments:
    """Running mean, covariance sums and per-dimension M3/M4 of D-dimensional rows.

    `m2` is the D x D matrix of summed centred outer products (covariance * (n - 1)) when
    `full_cov`, else only its diagonal. `m3`/`m4` are per-dimension summed centred powers.
    """

    dim: int
    full_cov: bool = True
    higher: bool = True
    n: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    m3: np.ndarray = field(init=False)
    m4: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros((self.dim, self.dim)) if self.full_cov else np.zeros(self.dim)
        self.m3 = np.zeros(self.dim)
        self.m4 = np.zeros(self.dim)

    @classmethod
    def from_batch(cls, x: np.ndarray, full_cov: bool = True, higher: bool = True) -> "StreamingMoments":
        """Moments of one batch, computed directly (centred first, so no cancellation)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-d array [n, D], got shape {x.shape}")
        out = cls(x.shape[1], full_cov=full_cov, higher=higher)
        n = x.shape[0]
        if n == 0:
            return out
        out.n = n
        out.mean = x.mean(axis=0)
        xc = x - out.mean
        out.m2 = _gram(xc) if full_cov else np.einsum("ij,ij->j", xc, xc)
        if higher:
            sq = xc * xc
            out.m3 = np.einsum("ij,ij->j", sq, xc)
            out.m4 = np.einsum("ij,ij->j", sq, sq)
        return out

    def update(self, x: np.ndarray) -> "StreamingMoments":
        """Fold a batch [n, D] into the running moments."""
        return self.merge(StreamingMoments.from_batch(x, self.full_cov, self.higher))

    def merge(self, other: "StreamingMoments") -> "StreamingMoments":
        """In-place pairwise merge (Chan et al. for M2, Pebay for M3/M4); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {other.dim} into {self.dim}")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean = other.n, other.mean.copy()
            self.m2, self.m3, self.m4 = other.m2.copy(), other.m3.copy(), other.m4.copy()
            return self
        na, nb = float(self.n), float(other.n)
        n = na + nb
        delta = other.mean - self.mean
        m2a_d = np.diag(self.m2) if self.full_cov else self.m2
        m2b_d = np.diag(other.m2) if other.full_cov else other.m2
        if self.higher:
            d2 = delta * delta
            m4 = (self.m4 + other.m4 + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / n**3
                  + 6.0 * d2 * (na * na * m2b_d + nb * nb * m2a_d) / n**2
                  + 4.0 * delta * (na * other.m3 - nb * self.m3) / n)
            m3 = (self.m3 + other.m3 + d2 * delta * na * nb * (na - nb) / n**2
                  + 3.0 * delta * (na * m2b_d - nb * m2a_d) / n)
            self.m3, self.m4 = m3, m4
        if self.full_cov:
            self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (na * nb / n)
        else:
            self.m2 = self.m2 + other.m2 + delta * delta * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = int(n)
        return self

    def minus(self, part: "StreamingMoments") -> "StreamingMoments":
        """Mean and M2 of the rows in self but not in `part` (inverse of merge; M3/M4 not derived).

        The result keeps a full M2 only when both self and part have one; otherwise the diagonal.
        """
        full = self.full_cov and part.full_cov
        out = StreamingMoments(self.dim, full_cov=full, higher=False)
        nb = self.n - part.n
        if nb <= 0:
            return out
        out.n = nb
        out.mean = (self.n * self.mean - part.n * part.mean) / nb
        delta = out.mean - part.mean
        own = self.m2 if full or not self.full_cov else np.diag(self.m2)
        other = part.m2
        corr = np.outer(delta, delta) if full else delta * delta
        out.m2 = own - other - corr * (part.n * nb / self.n)
        return out

    # ---- derived quantities -------------------------------------------------------------------
    def var(self, ddof: int = 1) -> np.ndarray:
        """Per-dimension variance (unbiased by default)."""
        diag = np.diag(self.m2) if self.full_cov else self.m2
        return diag / max(self.n - ddof, 1)

    def cov(self, ddof: int = 1) -> np.ndarray:
        if not self.full_cov:
            raise ValueError("covariance was not accumulated (full_cov=False)")
        return self.m2 / max(self.n - ddof, 1)

    def skewness(self) -> np.ndarray:
        """Biased sample skewness g1 = m3 / m2^1.5 per dimension (NaN where the variance is 0)."""
        m2 = self.var(ddof=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(m2 > 0, (self.m3 / self.n) / m2**1.5, np.nan)

    def kurtosis(self) -> np.ndarray:
        """Biased sample kurtosis b2 = m4 / m2^2 (Pearson, 3 for a Gaussian)."""
        m2 = self.var(ddof=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(m2 > 0, (self.m4 / self.n) / m2**2, np.nan)


class Reservoir:
    """Uniform fixed-size subsample of a stream (algorithm R), seeded, vectorised per batch."""

    def __init__(self, size: int, dim: int, seed: int) -> None:
        self.size = size
        self.data = np.empty((size, dim))
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        start = self.seen
        fill = max(0, min(self.size - start, n))
        if fill:
            self.data[start:start + fill] = x[:fill]
        rest = np.arange(fill, n)
        if rest.size:
            pos = start + rest  # global 0-based index of each remaining row
            j = np.floor(self.rng.random(rest.size) * (pos + 1)).astype(np.int64)
            keep = j < self.size
            # Sequential semantics: a later row overwriting the same slot wins.
            for r, slot in zip(rest[keep], j[keep]):
                self.data[slot] = x[r]
        self.seen += n

    def sample(self) -> np.ndarray:
        return self.data[: min(self.seen, self.size)].copy()
