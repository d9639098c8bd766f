"""Gaussian fit of the paired image-text difference d = v - t (METHOD.md section 1, finding 2).

One streaming pass accumulates exact moments of d (and the centroids of v and t); a seeded reservoir
keeps a uniform subsample for the tests that need raw samples. The report answers four questions:
how big is the gap (centroid gap, share of E||d||^2 due to the mean), is d zero-mean (per dimension
with BH-FDR, Hotelling T^2), is it Gaussian (per dimension, on projections, multivariate; always next
to a Gaussian control with the same n, means and variances), and is an isotropic sigma^2 I a fair
model (eigen-spectrum, participation ratio). The fitted noise model is saved for the captioner.

"Centred d": subtracting the sample mean of d from d makes its sample mean exactly zero, so a test on
it can never reject and says nothing. The meaningful version is split-sample: estimate the centroid
on one half of the images and test whether it removes the mean on the other half (a two-sample test
of equal means). That asks whether a fixed offset, as a captioner would apply it, generalises.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from scipy import special, stats

from analysis.moments import Reservoir, StreamingMoments
from maccap.errors import UserError

log = logging.getLogger(__name__)

INJECTED_SIGMA2 = 0.016  # the training-time noise variance of CapDec/MacCap (per dimension)
NOISE_MODEL_FORMAT = "maccap-noise-model"
NOISE_MODEL_VERSION = 1


@dataclass
class GapConfig:
    reservoir_size: int = 5000  # raw-sample subsample for Shapiro-Wilk, Anderson-Darling, projections
    mardia_n: int = 2000  # Mardia's statistics cost O(n^2)
    mardia_dims: int = 20  # Mardia runs on the top principal components (p << n keeps it calibrated)
    alpha: float = 0.05
    n_random_proj: int = 16
    n_principal_proj: int = 5
    top_k: tuple[int, ...] = (1, 5, 10)
    seed: int = 0
    injected_sigma2: float = INJECTED_SIGMA2
    control_max_n: int = 2_000_000  # the full-n Gaussian control for D'Agostino is capped here
    rel_tol: float = 1e-9  # eigenvalues / variances below rel_tol * max count as zero


# ---------------------------------------------------------------------------------------------
# Accumulation
# ---------------------------------------------------------------------------------------------
@dataclass
class GapAccumulator:
    """Everything the report needs, filled batch by batch."""

    dim: int
    reservoir_size: int = 5000
    seed: int = 0
    d: StreamingMoments = field(init=False)
    v: StreamingMoments = field(init=False)
    t: StreamingMoments = field(init=False)
    half_a: StreamingMoments = field(init=False)  # mean and variances only; half b = all minus half a
    reservoir: Reservoir = field(init=False)

    def __post_init__(self) -> None:
        self.d = StreamingMoments(self.dim)
        self.v = StreamingMoments(self.dim, full_cov=False, higher=False)
        self.t = StreamingMoments(self.dim, full_cov=False, higher=False)
        self.half_a = StreamingMoments(self.dim, full_cov=False, higher=False)
        self.reservoir = Reservoir(self.reservoir_size, self.dim, self.seed)

    def update(self, v: np.ndarray, t: np.ndarray, groups: np.ndarray | None = None) -> None:
        """Fold a batch of paired rows; `groups` (e.g. image index) decides the split-sample half."""
        v = np.asarray(v, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if v.shape != t.shape or v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"paired batches must both be [n, {self.dim}], got {v.shape} and {t.shape}")
        d = v - t
        start = self.d.n
        self.d.update(d)
        self.v.update(v)
        self.t.update(t)
        self.reservoir.update(d)
        g = np.arange(start, start + len(d)) if groups is None else np.asarray(groups)
        in_a = _half_of(g) == 0
        if in_a.any():
            self.half_a.update(d[in_a])

    @property
    def halves(self) -> tuple[StreamingMoments, StreamingMoments]:
        return self.half_a, self.d.minus(self.half_a)


def _half_of(groups: np.ndarray) -> np.ndarray:
    """Assign each group to half 0/1 by a fixed integer hash, so all captions of an image go together."""
    g = groups.astype(np.uint64)
    h = (g * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)
    return h.astype(np.int64)


def paired_batches(image_feats: np.ndarray, text_feats: np.ndarray, text_image: np.ndarray,
                   one_per_image: bool = False, seed: int = 0, batch_size: int = 4096
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (v, t, image index) batches over every (image, caption) pair, or one caption per image."""
    text_image = np.asarray(text_image)
    idx = np.arange(len(text_image))
    if one_per_image:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(text_image))
        _, first = np.unique(text_image[order], return_index=True)
        idx = np.sort(order[first])
    for s in range(0, len(idx), batch_size):
        j = idx[s:s + batch_size]
        img = text_image[j]
        yield np.asarray(image_feats[img]), np.asarray(text_feats[j]), img


def accumulate(batches: Iterable[tuple[np.ndarray, ...]], dim: int, config: GapConfig) -> GapAccumulator:
    acc = GapAccumulator(dim, config.reservoir_size, config.seed)
    for batch in batches:
        acc.update(*batch)
    if acc.d.n < 3:
        raise UserError(f"the gap analysis needs at least 3 image-text pairs, got {acc.d.n}")
    return acc


# ---------------------------------------------------------------------------------------------
# Statistics helpers (pure functions; the tests plant ground truth into these)
# ---------------------------------------------------------------------------------------------
def bh_reject(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg step-up: boolean mask of rejected hypotheses (NaN p-values never reject)."""
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(p)
    out = np.zeros(p.shape, dtype=bool)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    thresh = alpha * np.arange(1, m + 1) / m
    below = np.nonzero(pv[order] <= thresh)[0]
    if below.size:
        rej = np.zeros(m, dtype=bool)
        rej[order[: below[-1] + 1]] = True
        out[ok] = rej
    return out


def simes_p(p: np.ndarray) -> float:
    """Global null p-value from per-dimension p-values (valid under positive dependence)."""
    p = np.sort(np.asarray(p)[np.isfinite(p)])
    if p.size == 0:
        return float("nan")
    return float(min(1.0, np.min(p * p.size / np.arange(1, p.size + 1))))


def mean_ci(mean: np.ndarray, var: np.ndarray, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval for per-dimension means."""
    half = stats.t.ppf(0.5 + level / 2, max(n - 1, 1)) * np.sqrt(var / n)
    return mean - half, mean + half


def var_ci(var: np.ndarray, m4: np.ndarray, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Asymptotic interval for per-dimension variances that does not assume normality.

    se(s^2)^2 = (mu4 - sigma^4 (n - 3) / (n - 1)) / n, with mu4 the 4th central moment; the chi-square
    interval would be far too narrow for heavy-tailed d.
    """
    mu4 = m4 / n
    se = np.sqrt(np.maximum(mu4 - var**2 * (n - 3) / (n - 1), 0.0) / n)
    z = stats.norm.ppf(0.5 + level / 2)
    return var - z * se, var + z * se


def dagostino_from_moments(skew: np.ndarray, kurt: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """D'Agostino-Pearson K^2 and its p-value from biased skewness g1 and Pearson kurtosis b2.

    Same transformations as the skewness and kurtosis tests of D'Agostino (1970) and Anscombe-Glynn
    (1983), so it runs on streamed moments of any n (n >= 20 for the kurtosis approximation).
    """
    if n < 8:
        nan = np.full(np.shape(skew), np.nan)
        return nan, nan
    skew = np.asarray(skew, dtype=np.float64)
    kurt = np.asarray(kurt, dtype=np.float64)
    y = skew * math.sqrt((n + 1) * (n + 3) / (6.0 * (n - 2)))
    beta2 = 3.0 * (n * n + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2.0) * (n + 5) * (n + 7) * (n + 9))
    w2 = -1 + math.sqrt(2 * (beta2 - 1))
    delta = 1 / math.sqrt(0.5 * math.log(w2))
    alpha = math.sqrt(2.0 / (w2 - 1))
    y = np.where(y == 0, 1, y)
    zs = delta * np.log(y / alpha + np.sqrt((y / alpha) ** 2 + 1))
    e = 3.0 * (n - 1) / (n + 1)
    varb2 = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) * (n + 1.0) * (n + 3) * (n + 5))
    x = (kurt - e) / math.sqrt(varb2)
    sb1 = 6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9)) * math.sqrt(6.0 * (n + 3) * (n + 5) / (n * (n - 2) * (n - 3)))
    a = 6.0 + 8.0 / sb1 * (2.0 / sb1 + math.sqrt(1 + 4.0 / sb1**2))
    term1 = 1 - 2 / (9.0 * a)
    denom = 1 + x * math.sqrt(2 / (a - 4.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        term2 = np.sign(denom) * np.where(denom == 0.0, np.nan, ((1 - 2.0 / a) / np.abs(denom)) ** (1 / 3.0))
    zk = (term1 - term2) / math.sqrt(2 / (9.0 * a))
    k2 = zs**2 + zk**2
    return k2, stats.chi2.sf(k2, 2)


def anderson_darling(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anderson-Darling normality test per column (mean and variance estimated), with a p-value.

    The p-value uses the modified statistic A*^2 = A^2 (1 + 0.75/n + 2.25/n^2) and the piecewise
    approximation of D'Agostino & Stephens (1986, table 4.9), continuous rather than tabulated.
    """
    x = np.sort(np.asarray(x, dtype=np.float64), axis=0)
    n = x.shape[0]
    sd = x.std(axis=0, ddof=1)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    i = np.arange(1, n + 1)[:, None]
    a2 = -n - np.sum((2 * i - 1) * (special.log_ndtr(z) + special.log_ndtr(-z[::-1])), axis=0) / n
    a = a2 * (1 + 0.75 / n + 2.25 / n**2)
    with np.errstate(over="ignore"):
        p = np.where(a >= 0.6, np.exp(1.2937 - 5.709 * a + 0.0186 * a * a),
            np.where(a >= 0.34, np.exp(0.9177 - 4.279 * a - 1.38 * a * a),
            np.where(a >= 0.2, 1 - np.exp(-8.318 + 42.796 * a - 59.938 * a * a),
                     1 - np.exp(-13.436 + 101.14 * a - 223.73 * a * a))))
    p = np.where(sd > 0, np.clip(p, 0.0, 1.0), np.nan)
    return a2, p


def shapiro_columns(x: np.ndarray) -> np.ndarray:
    """Shapiro-Wilk p-value per column (NaN for constant columns or n < 3)."""
    out = np.full(x.shape[1], np.nan)
    if x.shape[0] < 3:
        return out
    for j in range(x.shape[1]):
        col = x[:, j]
        if np.ptp(col) > 0:
            out[j] = stats.shapiro(col).pvalue
    return out


def normality_columns(x: np.ndarray) -> dict[str, np.ndarray]:
    """Shapiro-Wilk, D'Agostino K^2 and Anderson-Darling p-values for every column of raw samples."""
    n = x.shape[0]
    m = StreamingMoments.from_batch(x, full_cov=False)
    _, p_k2 = dagostino_from_moments(m.skewness(), m.kurtosis(), n)
    _, p_ad = anderson_darling(x)
    return {"shapiro": shapiro_columns(x), "dagostino": p_k2, "anderson": p_ad}


def hotelling_one_sample(mean: np.ndarray, cov: np.ndarray, n: int, rel_tol: float = 1e-9) -> dict[str, float]:
    """Hotelling T^2 test of mean = 0 on the non-degenerate subspace of cov (pseudo-inverse)."""
    w, u = np.linalg.eigh(cov)
    keep = w > rel_tol * max(w.max(), 0.0) if w.max() > 0 else np.zeros_like(w, dtype=bool)
    r = int(keep.sum())
    if r == 0 or n <= r:
        return {"t2": float("nan"), "f": float("nan"), "df1": r, "df2": n - r, "p": float("nan"),
                "reason": f"needs n > rank (n={n}, rank={r})"}
    proj = u[:, keep].T @ mean
    t2 = float(n * np.sum(proj**2 / w[keep]))
    f = t2 * (n - r) / (r * (n - 1))
    return {"t2": t2, "f": f, "df1": r, "df2": n - r, "p": float(stats.f.sf(f, r, n - r))}


def hotelling_two_sample(a: StreamingMoments, b: StreamingMoments, total: StreamingMoments | None = None,
                         rel_tol: float = 1e-9) -> dict[str, float]:
    """Two-sample Hotelling T^2 (pooled covariance): does a centroid fitted on half a remove the mean of b?

    The pooled within-half M2 is a.m2 + b.m2, or, when the halves hold only means and variances,
    total.m2 minus the between-half term (so the stream needs one full covariance, not three).
    """
    na, nb = a.n, b.n
    if na < 2 or nb < 2:
        return {"t2": float("nan"), "p": float("nan"), "df1": 0, "df2": 0, "reason": "a half has < 2 pairs"}
    diff = b.mean - a.mean
    if a.full_cov and b.full_cov:
        within = a.m2 + b.m2
    elif total is not None and total.full_cov:
        within = total.m2 - np.outer(diff, diff) * (na * nb / (na + nb))
    else:
        raise ValueError("hotelling_two_sample needs full covariances for the halves or for the total")
    pooled = within / (na + nb - 2)
    w, u = np.linalg.eigh(pooled)
    keep = w > rel_tol * w.max() if w.max() > 0 else np.zeros_like(w, dtype=bool)
    r = int(keep.sum())
    dfree = na + nb - r - 1
    if r == 0 or dfree <= 0:
        return {"t2": float("nan"), "p": float("nan"), "df1": r, "df2": dfree,
                "reason": f"needs n_a + n_b - 1 > rank (n={na + nb}, rank={r})"}
    proj = u[:, keep].T @ diff
    t2 = float(na * nb / (na + nb) * np.sum(proj**2 / w[keep]))
    f = t2 * dfree / (r * (na + nb - 2))
    return {"t2": t2, "f": f, "df1": r, "df2": dfree, "p": float(stats.f.sf(f, r, dfree))}


def mardia(x: np.ndarray) -> dict[str, float]:
    """Mardia's multivariate skewness and kurtosis tests on rows of x (n x p, p small)."""
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    w, u = np.linalg.eigh(s)
    if w.min() <= 0:
        return {"skew_p": float("nan"), "kurt_p": float("nan"), "reason": "singular covariance"}
    z = xc @ u / np.sqrt(w)  # whitened rows: z_i . z_j = x_i^T S^-1 x_j
    g = z @ z.T
    b1 = float(np.mean(g**3))
    b2 = float(np.mean(np.diag(g) ** 2))
    skew_stat = n * b1 / 6.0
    dof = p * (p + 1) * (p + 2) / 6.0
    kurt_z = (b2 - p * (p + 2)) / math.sqrt(8.0 * p * (p + 2) / n)
    return {"b1": b1, "b2": b2, "expected_b2": float(p * (p + 2)), "skew_stat": skew_stat, "skew_df": dof,
            "skew_p": float(stats.chi2.sf(skew_stat, dof)), "kurt_z": kurt_z,
            "kurt_p": float(2 * stats.norm.sf(abs(kurt_z))), "n": n, "p": p}


def _frac(mask: np.ndarray, valid: np.ndarray) -> float:
    return float(mask[valid].mean()) if valid.any() else float("nan")


def _summary(a: np.ndarray) -> dict[str, float]:
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {}
    q = np.quantile(a, [0.05, 0.5, 0.95])
    return {"mean": float(a.mean()), "q05": float(q[0]), "median": float(q[1]), "q95": float(q[2]),
            "min": float(a.min()), "max": float(a.max())}


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
@dataclass
class GapResult:
    report: dict[str, Any]  # JSON-able numbers (see analyze_gap)
    per_dim: dict[str, np.ndarray]  # mean, ci, var, p-values ... (for figures)
    eigvals: np.ndarray  # descending
    eigvecs: np.ndarray  # columns, same order
    sample: np.ndarray  # reservoir of raw d
    control_sample: np.ndarray  # Gaussian control with the same n, means and variances
    noise: "NoiseModel"
    random_dirs: np.ndarray  # [D, n_random_proj] unit directions used for the projection tests


def analyze_gap(batches: Iterable[tuple[np.ndarray, ...]], dim: int, config: GapConfig | None = None,
                logit_scale: float | None = None, meta: dict[str, Any] | None = None) -> GapResult:
    """Stream paired (v, t[, groups]) batches and build the full gap report."""
    config = config or GapConfig()
    acc = accumulate(batches, dim, config)
    return report_from_accumulator(acc, config, logit_scale, meta)


def report_from_accumulator(acc: GapAccumulator, config: GapConfig, logit_scale: float | None = None,
                            meta: dict[str, Any] | None = None) -> GapResult:
    rng = np.random.default_rng(config.seed + 1)
    m, n, dim = acc.d, acc.d.n, acc.dim
    alpha = config.alpha
    mean, var, cov = m.mean, m.var(), m.cov()
    vmax = float(var.max()) if var.size else 0.0
    valid = var > config.rel_tol * vmax if vmax > 0 else np.zeros(dim, dtype=bool)
    safe_var = np.where(valid, var, np.nan)

    # --- size of the gap and isotropy -------------------------------------------------------
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
    total = float(eigvals.sum())
    rank = int((eigvals > config.rel_tol * eigvals[0]).sum()) if eigvals[0] > 0 else 0
    sigma2 = total / dim
    sample = acc.reservoir.sample()
    q = np.sum((sample - mean) ** 2, axis=1)
    sigma2_se = float(q.std(ddof=1) / math.sqrt(n) / dim) if len(q) > 1 else float("nan")
    mean_sq = float(mean @ mean)
    centroid_gap = float(np.linalg.norm(acc.v.mean - acc.t.mean))
    gap = {
        "n_pairs": n, "dim": dim, "rank": rank, "degenerate_dims": int((~valid).sum()),
        "logit_scale": logit_scale,
        "centroid_gap": centroid_gap,
        "mean_d_norm": float(math.sqrt(mean_sq)),
        "mean_share_of_energy": mean_sq / (mean_sq + total) if mean_sq + total > 0 else float("nan"),
        "expected_sq_norm": mean_sq + total,
        "isotropic_sigma2": sigma2,
        "isotropic_sigma2_ci": [sigma2 - 1.96 * sigma2_se, sigma2 + 1.96 * sigma2_se],
        "injected_sigma2": config.injected_sigma2,
        "sigma2_ratio_to_injected": sigma2 / config.injected_sigma2,
        "participation_ratio": total**2 / float(np.sum(eigvals**2)) if total > 0 else float("nan"),
        "top_k_variance_share": {str(k): float(eigvals[:k].sum() / total) if total > 0 else float("nan")
                                 for k in config.top_k},
        "per_dim_var_spread": _summary(safe_var),
    }

    # --- per-dimension CIs -----------------------------------------------------------------
    lo, hi = mean_ci(mean, var, n)
    vlo, vhi = var_ci(var, m.m4, n)

    # --- zero-mean tests --------------------------------------------------------------------
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = mean / np.sqrt(safe_var / n)
    p_mean = np.where(valid, 2 * stats.t.sf(np.abs(tstat), max(n - 1, 1)), np.nan)
    rej_mean = bh_reject(p_mean, alpha)
    hot = hotelling_one_sample(mean, cov, n, config.rel_tol)
    a, b = acc.halves
    hot_c = hotelling_two_sample(a, b, m, config.rel_tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_c = np.sqrt(a.var() / max(a.n, 1) + b.var() / max(b.n, 1))
        p_c = np.where(valid & (se_c > 0), 2 * stats.norm.sf(np.abs((b.mean - a.mean) / se_c)), np.nan)
    rej_c = bh_reject(p_c, alpha)
    zero_mean = {
        "raw": {"per_dim_reject_fraction": _frac(rej_mean, valid), "simes_p": simes_p(p_mean),
                "hotelling": hot},
        "centred_split_sample": {"n_half_a": a.n, "n_half_b": b.n,
                                 "per_dim_reject_fraction": _frac(rej_c, valid), "simes_p": simes_p(p_c),
                                 "hotelling": hot_c},
    }
    zero_mean_p = hot["p"] if np.isfinite(hot["p"]) else simes_p(p_mean)

    # --- normality -------------------------------------------------------------------------
    skew, kurt = m.skewness(), m.kurtosis()
    _, p_k2_full = dagostino_from_moments(np.where(valid, skew, np.nan), np.where(valid, kurt, np.nan), n)
    control_full = _control_moments(mean, np.where(valid, var, 0.0), n, config, rng)
    _, p_k2_ctrl_full = dagostino_from_moments(np.where(valid, control_full.skewness(), np.nan),
                                               np.where(valid, control_full.kurtosis(), np.nan), control_full.n)
    ctrl_sample = rng.standard_normal(sample.shape) * np.sqrt(np.where(valid, var, 0.0)) + mean
    sub = {k: np.where(valid, v_, np.nan) for k, v_ in normality_columns(sample).items()}
    sub_ctrl = {k: np.where(valid, v_, np.nan) for k, v_ in normality_columns(ctrl_sample).items()}
    per_dim_norm: dict[str, Any] = {
        "subsample_n": int(len(sample)),
        "dagostino_full_n": {"data": _frac(bh_reject(p_k2_full, alpha), valid),
                             "control": _frac(bh_reject(p_k2_ctrl_full, alpha), valid), "n": n,
                             "control_n": control_full.n},
    }
    for k in sub:
        per_dim_norm[k] = {"data": _frac(bh_reject(sub[k], alpha), valid),
                           "control": _frac(bh_reject(sub_ctrl[k], alpha), valid), "n": int(len(sample))}
    dirs = rng.standard_normal((dim, config.n_random_proj))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    n_pc = min(config.n_principal_proj, rank)
    projections = {"random": _projection_tests(sample, dirs, rng, alpha),
                   "principal": _projection_tests(sample, eigvecs[:, :n_pc], rng, alpha)}
    pdim = max(1, min(config.mardia_dims, rank, len(sample) // 20))
    # reservoir slots keep stream order until the reservoir overflows: take a random subset, not the head
    ms = sample[rng.permutation(len(sample))[: config.mardia_n]] @ eigvecs[:, :pdim]
    mc = rng.standard_normal(ms.shape) * np.sqrt(eigvals[:pdim])
    normality = {
        "alpha": alpha, "per_dim": per_dim_norm, "projections": projections,
        "mardia": {"data": mardia(ms), "control": mardia(mc), "principal_dims": pdim},
        "skewness": _summary(np.where(valid, skew, np.nan)),
        "abs_skewness": _summary(np.abs(np.where(valid, skew, np.nan))),
        "excess_kurtosis": _summary(np.where(valid, kurt - 3.0, np.nan)),
    }
    report = {"gap": gap, "zero_mean": zero_mean, "normality": normality, "config": _config_json(config),
              "meta": meta or {},
              "definitions": {
                  "d": "v - t for paired L2-normalised image feature v and caption feature t",
                  "centroid_gap": "||mean(v) - mean(t)||",
                  "isotropic_sigma2": "mean per-dimension variance of d (trace(cov)/D)",
                  "centred_test": "centroid of d fitted on one half of the images, tested on the other half",
              },
              "metrics": {
                  "centroid_gap": centroid_gap, "isotropic_sigma2": sigma2,
                  "normality_reject_fraction": per_dim_norm["shapiro"]["data"],
                  "normality_reject_fraction_control": per_dim_norm["shapiro"]["control"],
                  "normality_reject_fraction_dagostino": per_dim_norm["dagostino"]["data"],
                  "normality_reject_fraction_anderson": per_dim_norm["anderson"]["data"],
                  "normality_reject_fraction_dagostino_full_n": per_dim_norm["dagostino_full_n"]["data"],
                  "zero_mean_p": zero_mean_p,
                  "zero_mean_p_centred": hot_c["p"] if np.isfinite(hot_c["p"]) else simes_p(p_c),
                  "zero_mean_reject_fraction": zero_mean["raw"]["per_dim_reject_fraction"],
                  "mean_share_of_energy": gap["mean_share_of_energy"],
                  "participation_ratio": gap["participation_ratio"],
                  "top1_variance_share": float(eigvals[0] / total) if total > 0 else float("nan"),
                  "mardia_kurtosis_z": normality["mardia"]["data"].get("kurt_z", float("nan")),
              }}
    if logit_scale is not None:
        report["metrics"]["logit_scale"] = float(logit_scale)
    per_dim = {"mean": mean, "mean_lo": lo, "mean_hi": hi, "var": var, "var_lo": vlo, "var_hi": vhi,
               "p_mean": p_mean, "reject_mean": rej_mean, "skew": skew, "kurt": kurt, "valid": valid,
               **{f"p_{k}": v_ for k, v_ in sub.items()}}
    noise = NoiseModel(mean=mean, var=var, cov=cov, isotropic_sigma2=sigma2, n=n,
                       meta={**(meta or {}), "centroid_gap": centroid_gap})
    return GapResult(report=_jsonable(report), per_dim=per_dim, eigvals=eigvals, eigvecs=eigvecs,
                     sample=sample, control_sample=ctrl_sample, noise=noise, random_dirs=dirs)


def _control_moments(mean: np.ndarray, var: np.ndarray, n: int, config: GapConfig,
                     rng: np.random.Generator, batch: int = 8192) -> StreamingMoments:
    """Per-dimension moments of an independent Gaussian with the same n (capped), means and variances."""
    nc = min(n, config.control_max_n)
    out = StreamingMoments(len(mean), full_cov=False)
    sd = np.sqrt(var)
    for s in range(0, nc, batch):
        k = min(batch, nc - s)
        out.update(rng.standard_normal((k, len(mean))) * sd + mean)
    return out


def _projection_tests(sample: np.ndarray, dirs: np.ndarray, rng: np.random.Generator, alpha: float) -> dict:
    """Normality of 1-D projections of d, each beside a Gaussian control of the same n and variance."""
    if dirs.shape[1] == 0 or len(sample) < 20:
        return {"n_directions": 0}
    proj = (sample - sample.mean(axis=0)) @ dirs
    ctrl = rng.standard_normal(proj.shape) * proj.std(axis=0, ddof=1)
    res: dict[str, Any] = {"n_directions": int(dirs.shape[1]), "n": int(len(sample))}
    data_p, ctrl_p = normality_columns(proj), normality_columns(ctrl)
    for k in data_p:
        res[k] = {"data": float(bh_reject(data_p[k], alpha).mean()), "control": float(bh_reject(ctrl_p[k], alpha).mean()),
                  "min_p": float(np.nanmin(data_p[k]))}
    m = StreamingMoments.from_batch(proj, full_cov=False)
    res["skewness"] = [float(x) for x in m.skewness()]
    res["excess_kurtosis"] = [float(x) for x in m.kurtosis() - 3]
    return res


def _config_json(config: GapConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}


def _jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays to plain JSON types; non-finite floats stay floats (JSON NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Noise model for the captioner
# ---------------------------------------------------------------------------------------------
@dataclass
class NoiseModel:
    """Fitted model of d: mean offset, per-dim variances, full covariance, isotropic sigma^2.

    `sample(n, kind)` draws noise for text features: "isotropic" N(0, sigma^2 I), "diagonal"
    N(0, diag var), "full" N(0, cov); "+mean" variants add the mean offset (image minus text).
    """

    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray
    isotropic_sigma2: float
    n: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sigma2(self) -> float:
        """Alias read by maccap.noise.NoiseModel.from_fitted."""
        return self.isotropic_sigma2

    def sample(self, n: int, kind: str = "isotropic", seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        base, with_mean = kind.removesuffix("+mean"), kind.endswith("+mean")
        dim = len(self.mean)
        if base == "isotropic":
            x = rng.standard_normal((n, dim)) * math.sqrt(self.isotropic_sigma2)
        elif base == "diagonal":
            x = rng.standard_normal((n, dim)) * np.sqrt(self.var)
        elif base == "full":
            w, u = np.linalg.eigh(self.cov)
            x = (rng.standard_normal((n, dim)) * np.sqrt(np.clip(w, 0, None))) @ u.T
        else:
            raise UserError(f"unknown noise kind {kind!r}; expected isotropic, diagonal or full, optionally '+mean'")
        return x + self.mean if with_mean else x


def save_noise_model(path: str | Path, model: NoiseModel) -> None:
    """Write the noise model as safetensors (float64 tensors mean [D], var [D], cov [D, D]) + metadata."""
    import torch
    from safetensors.torch import save

    from maccap.io import atomic_write_bytes, canonical_safetensors

    tensors = {"mean": torch.from_numpy(np.ascontiguousarray(model.mean, dtype=np.float64)),
               "var": torch.from_numpy(np.ascontiguousarray(model.var, dtype=np.float64)),
               "cov": torch.from_numpy(np.ascontiguousarray(model.cov, dtype=np.float64))}
    metadata = {"format": NOISE_MODEL_FORMAT, "version": str(NOISE_MODEL_VERSION),
                "isotropic_sigma2": repr(float(model.isotropic_sigma2)), "n": str(int(model.n)),
                "meta": json.dumps(_jsonable(model.meta), sort_keys=True)}
    atomic_write_bytes(path, canonical_safetensors(save(tensors, metadata=metadata)))  # same model, same bytes


def load_noise_model(path: str | Path) -> NoiseModel:
    """Read a noise model written by save_noise_model; user errors name the file and what is wrong."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"noise model not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            md = f.metadata() or {}
            if md.get("format") != NOISE_MODEL_FORMAT:
                raise UserError(f"{path} is not a noise model (metadata 'format' is {md.get('format')!r}, "
                                f"expected {NOISE_MODEL_FORMAT!r})")
            if md.get("version") != str(NOISE_MODEL_VERSION):
                raise UserError(f"{path}: noise model version {md.get('version')!r}, expected {NOISE_MODEL_VERSION}")
            arr = {k: f.get_tensor(k) for k in ("mean", "var", "cov")}
    except SafetensorError as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    except KeyError as e:
        raise UserError(f"{path}: noise model lacks tensor {e}") from None
    return NoiseModel(mean=arr["mean"], var=arr["var"], cov=arr["cov"],
                      isotropic_sigma2=float(md["isotropic_sigma2"]), n=int(md["n"]),
                      meta=json.loads(md.get("meta", "{}")))
