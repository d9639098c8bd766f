"""All result files into one tidy table, then statistics across seeds and paired method comparisons.

Tidy: one row per run x metric with a fixed column order (TIDY_COLUMNS). A failed run keeps one row
with an empty metric so failures stay visible. Across seeds (rliable's view: a seeds x tasks matrix
per method): mean, sd, n, a 95% percentile bootstrap CI of the mean (seeded; with n < 3 no CI is
given and the note says so), and the IQM when n >= 5. Paired comparisons match runs of two methods
on the same (task, backbone, dataset, train seed, eval seed) and report the mean difference with a
bootstrap CI and the probability of improvement P(X_a > X_b) (ties count one half).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.store import read_result, slug
from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

TIDY_COLUMNS = ["suite", "task", "method", "backbone", "dataset", "seed", "eval_seed", "metric", "value",
                "run_id", "config_hash", "status"]
GROUP_COLUMNS = ["suite", "task", "method", "backbone", "dataset", "metric"]
SUMMARY_COLUMNS = GROUP_COLUMNS + ["n", "mean", "sd", "ci_low", "ci_high", "ci_method", "iqm", "min", "max",
                                   "note", "run_ids"]
PAIRED_COLUMNS = ["suite", "task", "backbone", "dataset", "metric", "method_a", "method_b", "n", "mean_a",
                  "mean_b", "mean_diff", "ci_low", "ci_high", "prob_improvement", "pi_ci_low", "pi_ci_high",
                  "wins_a", "note", "seeds"]
MIN_N_CI = 3
MIN_N_IQM = 5
REFERENCE_METHODS = ("maccap",)


@dataclass
class AggregateResult:
    tidy: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    invalid: list[str] = field(default_factory=list)  # result files that could not be read
    paths: dict[str, Path] = field(default_factory=dict)


def load_results(results_dir: str | Path, suite: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable result.json (below results_dir/<suite> if given) and messages for unreadable ones."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results directory not found: {root}")
    if suite is not None:
        root = root / slug(suite)
        if not root.is_dir():
            raise UserError(f"no results for suite {suite!r}: {root} does not exist (run `maccap-bench run {suite}` first)")
    results, invalid = [], []
    for path in sorted(root.rglob("result.json")):
        try:
            res = read_result(path)
        except UserError as e:
            log.warning("skipping unreadable result: %s", e)
            invalid.append(str(e))
            continue
        res["_path"] = str(path)
        results.append(res)
    return results, invalid


def tidy_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run x metric, in TIDY_COLUMNS order, sorted deterministically."""
    rows = []
    for r in results:
        seeds = r.get("seeds") or {}
        base = {"suite": r["suite"], "task": r["task"], "method": r["method"], "backbone": r["backbone"],
                "dataset": r["dataset"], "seed": seeds.get("train"), "eval_seed": seeds.get("eval"),
                "run_id": r["run_id"], "config_hash": r["config_hash"], "status": r["status"]}
        metrics = r["metrics"] if r["status"] == "ok" else {}
        if not metrics:
            rows.append({**base, "metric": "", "value": np.nan})
        for name, value in metrics.items():
            rows.append({**base, "metric": name, "value": _float(value)})
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    df["seed"] = pd.array(df["seed"], dtype="Int64")
    df["eval_seed"] = pd.array(df["eval_seed"], dtype="Int64")
    df["value"] = df["value"].astype(float)
    return df.sort_values(["suite", "task", "method", "backbone", "dataset", "seed", "metric"], kind="stable",
                          ignore_index=True)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded); a constant sample gives a zero-width CI."""
    values = np.asarray(values, dtype=float)
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    res = stats.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def describe(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
             seed: int = 0) -> dict[str, Any]:
    """mean, sd (ddof=1), n, CI (only for n >= 3), IQM (only for n >= 5)."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    n = len(x)
    out: dict[str, Any] = {"n": n, "mean": np.nan, "sd": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                           "ci_method": "", "iqm": np.nan, "min": np.nan, "max": np.nan, "note": ""}
    if n == 0:
        out["note"] = "no finite values"
        return out
    out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()),
               sd=float(x.std(ddof=1)) if n > 1 else np.nan)
    if n >= MIN_N_CI:
        out["ci_low"], out["ci_high"] = bootstrap_ci(x, confidence, n_resamples, seed)
        out["ci_method"] = f"percentile bootstrap {int(confidence * 100)}% ({n_resamples} resamples, seed {seed})"
    else:
        out["note"] = f"n={n} < {MIN_N_CI}: no CI"
    if n >= MIN_N_IQM:
        out["iqm"] = float(stats.trim_mean(x, 0.25))
    return out


def summarize(tidy: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per (suite, task, method, backbone, dataset, metric): statistics across seeds of ok runs."""
    ok = tidy[(tidy["status"] == "ok") & (tidy["metric"] != "")]
    rows = []
    for keys, g in ok.groupby(GROUP_COLUMNS, sort=True):
        d = describe(g["value"].to_numpy(), confidence, n_resamples, seed)
        rows.append({**dict(zip(GROUP_COLUMNS, keys)), **d, "run_ids": ";".join(g["run_id"])})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def prob_improvement(a: np.ndarray, b: np.ndarray) -> float:
    """P(X_a > X_b) over all pairs, ties counted as one half (rliable's probability of improvement)."""
    diff = np.asarray(a, float)[:, None] - np.asarray(b, float)[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _paired_stats(a: np.ndarray, b: np.ndarray, confidence: float, n_resamples: int, seed: int) -> dict[str, Any]:
    n = len(a)
    d = a - b
    out: dict[str, Any] = {"n": n, "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": float(d.mean()),
                           "ci_low": np.nan, "ci_high": np.nan, "prob_improvement": prob_improvement(a, b),
                           "pi_ci_low": np.nan, "pi_ci_high": np.nan, "wins_a": int((d > 0).sum()), "note": ""}
    if n < MIN_N_CI:
        out["note"] = f"n={n} < {MIN_N_CI}: no CI"
        return out
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, confidence, n_resamples, seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(min(n_resamples, 2000), n))
    diff = a[idx][:, :, None] - b[idx][:, None, :]
    pis = ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2))
    alpha = (1 - confidence) / 2
    out["pi_ci_low"], out["pi_ci_high"] = (float(q) for q in np.quantile(pis, [alpha, 1 - alpha]))
    return out


def _pair_order(m1: str, m2: str) -> tuple[str, str]:
    for ref in REFERENCE_METHODS:
        if m2 == ref and m1 != ref:
            return m2, m1
    return m1, m2


def paired_comparisons(tidy: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 10_000,
                       seed: int = 0) -> pd.DataFrame:
    """Every pair of methods within a (suite, task, backbone, dataset, metric), matched on seeds."""
    ok = tidy[(tidy["status"] == "ok") & (tidy["metric"] != "")]
    keys = ["suite", "task", "backbone", "dataset", "metric"]
    rows = []
    for group, g in ok.groupby(keys, sort=True):
        wide = g.pivot_table(index=["seed", "eval_seed"], columns="method", values="value", aggfunc="first")
        for m1, m2 in itertools.combinations(sorted(wide.columns), 2):
            ma, mb = _pair_order(m1, m2)
            both = wide[[ma, mb]].dropna()
            if both.empty:
                continue
            a, b = both[ma].to_numpy(float), both[mb].to_numpy(float)
            st = _paired_stats(a, b, confidence, n_resamples, seed)
            seeds = ";".join(f"{int(s)}/{int(e)}" for s, e in both.index)
            rows.append({**dict(zip(keys, group)), "method_a": ma, "method_b": mb, **st, "seeds": seeds})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def write_table(df: pd.DataFrame, csv_path: Path, parquet: bool = True) -> dict[str, Path]:
    """CSV (and parquet beside it) through atomic writes."""
    paths = {"csv": csv_path}
    atomic_write_text(csv_path, df.to_csv(index=False, lineterminator="\n"))
    faults.checkpoint("aggregate")
    if parquet:
        pq = csv_path.with_suffix(".parquet")
        with atomic_path(pq) as tmp:
            df.to_parquet(tmp, index=False)
        paths["parquet"] = pq
    return paths


def aggregate(results_dir: str | Path, out: str | Path | None = None, suite: str | None = None,
              confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
              progress: bool = False) -> AggregateResult:
    """Tidy table + summary + paired comparisons, written next to the results (or to `out`).

    `out` names the tidy CSV; the parquet, summary.csv and paired.csv go beside it. Default:
    <results_dir>/<suite>/tidy.csv, or <results_dir>/tidy.csv for all suites.
    """
    results, invalid = load_results(results_dir, suite)
    if not results:
        raise UserError(f"no result.json files under {Path(results_dir) / slug(suite) if suite else results_dir}")
    tidy = tidy_table(results)
    summary = summarize(tidy, confidence, n_resamples, seed)
    paired = paired_comparisons(tidy, confidence, n_resamples, seed)
    csv = Path(out) if out else Path(results_dir) / (slug(suite) if suite else "") / "tidy.csv"
    paths = write_table(tidy, csv)
    prefix = "" if csv.stem == "tidy" else f"{csv.stem}-"
    paths["summary"] = write_table(summary, csv.with_name(f"{prefix}summary.csv"), parquet=False)["csv"]
    paths["paired"] = write_table(paired, csv.with_name(f"{prefix}paired.csv"), parquet=False)["csv"]
    log.info("aggregated %d results (%d rows) into %s", len(results), len(tidy), csv)
    return AggregateResult(tidy=tidy, summary=summary, paired=paired, invalid=invalid, paths=paths)
