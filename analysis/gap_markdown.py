"""Markdown sections for the gap and subregion studies: each number with one sentence on what it means."""

from __future__ import annotations

import math
from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    if isinstance(x, float) and (abs(x) < 1e-3 and x != 0):
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _cell(text: str) -> str:
    """Escape pipes so norms like ||x|| do not split a table cell."""
    return text.replace("|", "\\|")


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}%"


def gap_section(report: dict[str, Any], retrieval: dict[str, Any] | None = None,
                figures: dict[str, str] | None = None, title: str = "Modality gap") -> str:
    g, z, nrm = report["gap"], report["zero_mean"], report["normality"]
    meta = report.get("meta", {})
    per = nrm["per_dim"]
    hot, hot_c = z["raw"]["hotelling"], z["centred_split_sample"]["hotelling"]
    mard = nrm["mardia"]
    who = ", ".join(f"{k} {v}" for k, v in meta.items() if k in ("backbone", "dataset", "split"))
    lines = [f"## {title}" + (f" ({who})" if who else ""), "",
             f"d = v - t over {g['n_pairs']} paired (image, caption) features of dimension {g['dim']} "
             f"(rank of cov(d): {g['rank']}, zero-variance dimensions: {g['degenerate_dims']}).", "",
             "| quantity | value | what it means |", "|---|---|---|"]
    rows = [
        ("learned temperature (logit scale)", _f(g.get("logit_scale")),
         "how sharply the backbone's contrastive loss separated pairs; a larger scale tolerates a larger gap"),
        ("centroid gap ||mean v - mean t||", _f(g["centroid_gap"]),
         "distance between the two modality centroids (Liang et al.'s modality gap)"),
        ("share of E||d||^2 due to the mean", _pct(g["mean_share_of_energy"]),
         "how much of the pair distance is a constant offset rather than noise; a zero-mean model ignores this part"),
        ("isotropic sigma^2 (95% CI)", f"{_f(g['isotropic_sigma2'])} [{_f(g['isotropic_sigma2_ci'][0])}, "
         f"{_f(g['isotropic_sigma2_ci'][1])}]",
         f"mean per-dimension variance of d, {_f(g['sigma2_ratio_to_injected'], 3)} x the {g['injected_sigma2']} "
         "injected during text-only training"),
        ("participation ratio", f"{_f(g['participation_ratio'], 3)} of {g['dim']}",
         "effective number of dimensions the variance spreads over; far below D means sigma^2 I is a poor model"),
        ("top-k variance share", ", ".join(f"top-{k}: {_pct(v)}" for k, v in g["top_k_variance_share"].items()),
         "variance held by the leading principal directions"),
        ("zero mean, per dimension (BH 5%)", _pct(z["raw"]["per_dim_reject_fraction"]),
         "fraction of dimensions whose mean differs from zero"),
        ("zero mean, Hotelling T^2 p", _f(hot["p"]), "multivariate test that d has zero mean; small p rejects"),
        ("centred (split-sample) Hotelling p", _f(hot_c["p"]),
         "whether a centroid fitted on half the images removes the mean on the other half (a fixed offset transfers)"),
        ("normality: Shapiro-Wilk rejected (control)", f"{_pct(per['shapiro']['data'])} ({_pct(per['shapiro']['control'])})",
         f"fraction of dimensions rejecting normality after FDR on a subsample of {per['subsample_n']}, next to a "
         "Gaussian with the same n, means and variances"),
        ("normality: D'Agostino K^2 rejected (control)",
         f"{_pct(per['dagostino']['data'])} ({_pct(per['dagostino']['control'])}); all n: "
         f"{_pct(per['dagostino_full_n']['data'])} ({_pct(per['dagostino_full_n']['control'])})",
         "skewness-and-kurtosis test on the subsample and, streamed, on every pair (very sensitive at large n)"),
        ("normality: Anderson-Darling rejected (control)",
         f"{_pct(per['anderson']['data'])} ({_pct(per['anderson']['control'])})", "tail-sensitive test per dimension"),
        ("projections rejected (random / principal, Shapiro-Wilk)",
         f"{_pct(nrm['projections']['random'].get('shapiro', {}).get('data'))} / "
         f"{_pct(nrm['projections']['principal'].get('shapiro', {}).get('data'))}",
         "normality along random and leading principal directions, where a Gaussian model matters for sampling"),
        ("Mardia kurtosis z (control)", f"{_f(mard['data'].get('kurt_z'), 3)} ({_f(mard['control'].get('kurt_z'), 3)})",
         f"multivariate tail weight on the top {mard['principal_dims']} principal components; |z| >> 2 means heavier/lighter tails than Gaussian"),
        ("Mardia skewness p (control)", f"{_f(mard['data'].get('skew_p'))} ({_f(mard['control'].get('skew_p'))})",
         "multivariate asymmetry test on the same components"),
        ("per-dim excess kurtosis (median, 95th pct)",
         f"{_f(nrm['excess_kurtosis'].get('median'), 3)}, {_f(nrm['excess_kurtosis'].get('q95'), 3)}",
         "0 for a Gaussian; positive means heavier tails"),
        ("per-dim |skewness| (median, 95th pct)",
         f"{_f(nrm['abs_skewness'].get('median'), 3)}, {_f(nrm['abs_skewness'].get('q95'), 3)}", "0 for a Gaussian"),
    ]
    lines += [f"| {_cell(a)} | {_cell(b)} | {_cell(c)} |" for a, b, c in rows]
    if retrieval:
        m = retrieval["metrics"]
        lines += ["", "Retrieval on the same split (first 5 captions per image): "
                  f"i2t R@1/5/10 = {_pct(m['i2t_r1'])} / {_pct(m['i2t_r5'])} / {_pct(m['i2t_r10'])}, "
                  f"t2i R@1/5/10 = {_pct(m['t2i_r1'])} / {_pct(m['t2i_r5'])} / {_pct(m['t2i_r10'])} "
                  f"({retrieval['counts']['images']} images, {retrieval['counts']['captions']} captions); "
                  "read it beside the gap: a small gap with poor recall means the modalities overlap without aligning."]
    lines += ["", "Caveat: with several captions per image the pairs share their image, so they are not independent "
              "and per-pair p-values are optimistic; rerun with one caption per image for clean tests."]
    lines += _figure_lines(figures)
    return "\n".join(lines) + "\n"


def subregion_section(study: dict[str, Any], figures: dict[str, str] | None = None,
                      title: str = "Subregion proximity") -> str:
    lines = [f"## {title}", "",
             "For each (image, caption) pair: does the best subregion sit closer (cosine) to the caption than the "
             "whole image? The control asks the same with another image's caption; the best of K crops wins there "
             "too by selection alone, so the finding is the difference.", "",
             "| kind | crops | win-rate own | win-rate control | difference | best - whole own (control) | "
             "mean crop - whole | Wilcoxon p own | p vs control |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, r in study["kinds"].items():
        m, c, e = r["matched"], r["control"], r["effect"]
        lines.append(f"| {kind} | {r['n_crops']} | {_pct(m['win_rate'])} | {_pct(c['win_rate'])} | "
                     f"{100 * e['win_rate_diff']:+.1f} pts | {_f(m['best_minus_whole_mean'], 3)} "
                     f"({_f(c['best_minus_whole_mean'], 3)}) | {_f(m['mean_crop_minus_whole_mean'], 3)} | "
                     f"{_f(m['wilcoxon_p'])} | {_f(e['wilcoxon_p_vs_control'])} |")
    first = next(iter(study["kinds"].values()), {})
    if "split" in first:
        lines += ["", "Split by how much of the scene the caption names (own caption / control):", "",
                  "| kind | partial: win-rate | partial: best - whole | full: win-rate | full: best - whole |",
                  "|---|---|---|---|---|"]
        for kind, r in study["kinds"].items():
            p, f = r["split"]["partial"], r["split"]["full"]
            cell = lambda s, k, fmt: f"{fmt(s['matched'].get(k))} / {fmt(s['control'].get(k))}"  # noqa: E731
            lines.append(f"| {kind} | {cell(p, 'win_rate', _pct)} | {cell(p, 'best_minus_whole_mean', _f)} | "
                         f"{cell(f, 'win_rate', _pct)} | {cell(f, 'best_minus_whole_mean', _f)} |")
        lines += ["", "If subregions matter because captions mention only part of a scene, the own-minus-control "
                  "difference is large for partial captions and small for captions naming everything."]
    lines += ["", "Win-rate: share of pairs where the best subregion beats the whole image. Difference: own minus "
              "control, the part not explained by taking a maximum. Mean crop - whole: the average crop, free of the "
              "selection effect. Wilcoxon p: paired signed-rank test on per-image averages (images are the units)."]
    lines += _figure_lines(figures)
    return "\n".join(lines) + "\n"


def _figure_lines(figures: dict[str, str] | None) -> list[str]:
    if not figures:
        return []
    pngs = [v for k, v in figures.items() if k.endswith(".png")]
    return ["", *[f"![{p.removesuffix('.png')}]({p})" for p in pngs]]
