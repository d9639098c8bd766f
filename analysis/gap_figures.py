"""Figures for the gap and subregion studies (PNG and SVG, Agg backend, written atomically)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.figsave import savefig_stable  # noqa: E402
from maccap.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)
FORMATS = ("png", "svg")


def save_figure(fig: plt.Figure, out_dir: str | Path, name: str) -> dict[str, str]:
    """Write `name`.png and `name`.svg; return {name.ext: file name} for the run's artefacts."""
    out = {}
    for ext in FORMATS:
        path = Path(out_dir) / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            savefig_stable(fig, tmp, ext, dpi=150 if ext == "png" else None)
        out[f"{name}.{ext}"] = path.name
    plt.close(fig)
    return out


def _directions(result: Any, n_each: int = 4) -> list[tuple[str, np.ndarray]]:
    dirs = [(f"random {i + 1}", result.random_dirs[:, i]) for i in range(min(n_each, result.random_dirs.shape[1]))]
    rank = int(result.report["gap"]["rank"])
    dirs += [(f"PC {i + 1}", result.eigvecs[:, i]) for i in range(min(n_each, rank))]
    return dirs


def fig_projections(result: Any) -> plt.Figure:
    """Histogram of d projected on random and principal directions, fitted Gaussian overlaid."""
    dirs = _directions(result)
    cols = 4
    rows = max(1, -(-len(dirs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (label, u) in zip(axes.flat, dirs):
        x = result.sample @ u
        mu, sd = x.mean(), x.std(ddof=1)
        ax.hist(x, bins=50, density=True, color=sns.color_palette()[0], alpha=0.7)
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, stats.norm.pdf(grid, mu, sd), color="k", lw=1.2)
        k = stats.kurtosis(x)
        ax.set_title(f"{label}: skew {stats.skew(x):.2f}, ex.kurt {k:.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(dirs):]:
        ax.axis("off")
    fig.suptitle("d = v - t projected on random and principal directions (line: fitted Gaussian)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_qq(result: Any) -> plt.Figure:
    """Normal QQ plots of the same projections, with the Gaussian control in grey."""
    dirs = _directions(result)
    cols = 4
    rows = max(1, -(-len(dirs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.8 * rows), squeeze=False)
    for ax, (label, u) in zip(axes.flat, dirs):
        for data, colour, name in ((result.control_sample @ u, "0.7", "Gaussian control"),
                                   (result.sample @ u, sns.color_palette()[3], "d")):
            z = (data - data.mean()) / data.std(ddof=1)
            (osm, osr), _ = stats.probplot(z, dist="norm")
            ax.plot(osm, osr, ".", ms=2, color=colour, label=name)
        lim = [-4, 4]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, markerscale=3)
    for ax in list(axes.flat)[len(dirs):]:
        ax.axis("off")
    fig.suptitle("Normal QQ plots of standardised projections of d", fontsize=10)
    fig.tight_layout()
    return fig


def fig_per_dim_mean(result: Any) -> plt.Figure:
    """Per-dimension mean of d with 95% CI, sorted, BH-rejected dimensions highlighted."""
    pd = result.per_dim
    order = np.argsort(pd["mean"])
    x = np.arange(len(order))
    rej = pd["reject_mean"][order]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.fill_between(x, pd["mean_lo"][order], pd["mean_hi"][order], color="0.8", label="95% CI")
    ax.plot(x[~rej], pd["mean"][order][~rej], ".", ms=3, color="0.3", label="mean (not rejected)")
    ax.plot(x[rej], pd["mean"][order][rej], ".", ms=3, color=sns.color_palette()[3], label="mean != 0 (BH 5%)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("dimension (sorted by mean)")
    ax.set_ylabel("mean of d")
    ax.legend(fontsize=7)
    ax.set_title(f"Per-dimension mean of d: {rej.mean():.0%} of dimensions differ from 0", fontsize=10)
    fig.tight_layout()
    return fig


def fig_spectrum(result: Any) -> plt.Figure:
    """Eigen-spectrum of cov(d) against the isotropic fit and the injected training noise."""
    ev = result.eigvals
    g = result.report["gap"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    r = np.arange(1, len(ev) + 1)
    pos = ev > 0
    ax.semilogy(r[pos], ev[pos], color=sns.color_palette()[0], label="eigenvalues of cov(d)")
    ax.axhline(g["isotropic_sigma2"], color="k", ls="--", lw=1, label=f"isotropic fit {g['isotropic_sigma2']:.4f}")
    ax.axhline(g["injected_sigma2"], color=sns.color_palette()[3], ls=":", lw=1.2,
               label=f"injected in training {g['injected_sigma2']}")
    ax.set_xlabel("rank")
    ax.set_ylabel("variance")
    ax2 = ax.twinx()
    ax2.plot(r, np.cumsum(ev) / max(ev.sum(), 1e-300), color="0.5", lw=0.8)
    ax2.set_ylabel("cumulative share", color="0.5")
    ax2.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="center right")
    ax.set_title(f"Eigen-spectrum: participation ratio {g['participation_ratio']:.1f} of {g['dim']} dims", fontsize=10)
    fig.tight_layout()
    return fig


def gap_figures(result: Any, out_dir: str | Path, prefix: str = "gap") -> dict[str, str]:
    files: dict[str, str] = {}
    for name, fn in (("projections", fig_projections), ("qq", fig_qq), ("per_dim_mean", fig_per_dim_mean),
                     ("spectrum", fig_spectrum)):
        files.update(save_figure(fn(result), out_dir, f"{prefix}_{name}"))
    return files


# ---------------------------------------------------------------------------------------------
# Subregion figures
# ---------------------------------------------------------------------------------------------
def fig_win_rate(study: dict[str, Any]) -> plt.Figure:
    """Win-rate of the best subregion per kind/scale, own caption vs mismatched caption."""
    rows = []
    for kind, res in study["kinds"].items():
        parts = [("all captions", res)]
        if "split" in res:
            parts += [(f"{p} scene", res["split"][p]) for p in ("partial", "full")]
        for label, r in parts:
            rows.append((kind, f"{label}: own", r["matched"].get("win_rate", np.nan)))
            rows.append((kind, f"{label}: mismatched", r["control"].get("win_rate", np.nan)))
    import pandas as pd

    df = pd.DataFrame(rows, columns=["kind", "caption", "win_rate"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * df["kind"].nunique() + 2), 3.6))
    sns.barplot(df, x="kind", y="win_rate", hue="caption", ax=ax, palette="Paired")
    ax.set_ylim(0, 1)
    ax.set_ylabel("best subregion beats whole image")
    ax.set_xlabel("crop kind and scale")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("Subregion win-rate: own caption vs mismatched-caption control", fontsize=10)
    fig.tight_layout()
    return fig


def fig_best_minus_whole(study: dict[str, Any], scores: dict[str, dict[str, np.ndarray]] | None) -> plt.Figure | None:
    """Distribution of (best subregion - whole image) cosine, own vs mismatched caption."""
    if not scores:
        return None
    import pandas as pd

    rows = [(kind, side, float(v)) for kind, sides in scores.items() for side, arr in sides.items() for v in arr]
    df = pd.DataFrame(rows, columns=["kind", "caption", "best_minus_whole"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * df["kind"].nunique() + 2), 3.6))
    sns.boxplot(df, x="kind", y="best_minus_whole", hue="caption", ax=ax, fliersize=1)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("Best subregion minus whole image (cosine to caption)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_image_grid(images: Sequence[Any], boxes: Sequence[tuple[float, float, float, float]],
                   best: np.ndarray, captions: Sequence[str], title: str) -> plt.Figure:
    """Images with the winning crop outlined and the caption underneath."""
    n = len(images)
    cols = min(4, n)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 3.2 * rows), squeeze=False)
    for ax, im, b, cap in zip(axes.flat, images, best, captions):
        w, h = im.size
        ax.imshow(im)
        x0, y0, x1, y1 = boxes[int(b)]
        ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False, lw=2,
                               edgecolor="yellow"))
        ax.set_title("\n".join(textwrap.wrap(cap, 34)[:3]), fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def subregion_figures(study: dict[str, Any], out_dir: str | Path, scores: dict | None = None,
                      grid: dict[str, Any] | None = None, prefix: str = "subregion") -> dict[str, str]:
    files = save_figure(fig_win_rate(study), out_dir, f"{prefix}_win_rate")
    fig = fig_best_minus_whole(study, scores)
    if fig is not None:
        files.update(save_figure(fig, out_dir, f"{prefix}_best_minus_whole"))
    if grid:
        files.update(save_figure(fig_image_grid(**grid), out_dir, f"{prefix}_image_grid"))
    return files
