"""Aggregation on hand-made result sets whose means, sds, CIs and comparisons are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import (PAIRED_COLUMNS, SUMMARY_COLUMNS, TIDY_COLUMNS, aggregate, bootstrap_ci, describe,
                                prob_improvement)
from benchmark.store import RunKey, TaskOutput, build_result, write_run
from maccap.errors import UserError


def _put(root: Path, method: str, seed: int, metrics: dict[str, float], backbone: str = "bb", status: str = "ok",
         task: str = "caption", suite: str = "hand", dataset: str = "coco") -> None:
    key = RunKey(suite, task, method, backbone, seed)
    cfg = {"method": method, "seed": seed}
    res = build_result(key, dataset, cfg, {"train": seed, "eval": 100 + seed}, TaskOutput(metrics=metrics if status == "ok" else {}),
                       {"total_s": 0.1}, status=status, error=None if status == "ok" else "RuntimeError: boom")
    write_run(key.dir(root), res)


def _hand_set(root: Path) -> None:
    a = [0.30, 0.32, 0.34, 0.36]
    b = [0.20, 0.25, 0.24, 0.31]
    for s in range(4):
        _put(root, "maccap", s, {"CIDEr-D": a[s], "BLEU-4": 0.1})
        _put(root, "capdec", s, {"CIDEr-D": b[s], "BLEU-4": 0.1})
    _put(root, "decap", 0, {"CIDEr-D": 0.5})
    _put(root, "decap", 1, {"CIDEr-D": 0.7})
    _put(root, "broken", 0, {}, status="failed")


def test_tidy_table_rows_and_columns(tmp_path: Path) -> None:
    _hand_set(tmp_path)
    res = aggregate(tmp_path, suite="hand", n_resamples=2000)
    tidy = res.tidy
    assert list(tidy.columns) == TIDY_COLUMNS
    assert len(tidy) == 8 * 2 + 2 + 1  # run x metric, plus one row for the failed run
    failed = tidy[tidy["status"] == "failed"]
    assert len(failed) == 1 and failed["metric"].iloc[0] == "" and np.isnan(failed["value"].iloc[0])
    row = tidy[(tidy["method"] == "maccap") & (tidy["seed"] == 2) & (tidy["metric"] == "CIDEr-D")].iloc[0]
    assert row["value"] == pytest.approx(0.34) and row["eval_seed"] == 102
    assert row["run_id"] == "hand/caption/maccap/bb/seed2" and row["dataset"] == "coco"
    csv = pd.read_csv(res.paths["csv"], keep_default_na=False, na_values=[""])
    assert list(csv.columns) == TIDY_COLUMNS and len(csv) == len(tidy)
    pq = pd.read_parquet(res.paths["parquet"])
    assert list(pq.columns) == TIDY_COLUMNS
    np.testing.assert_allclose(pq["value"].to_numpy(), tidy["value"].to_numpy())
    assert res.paths["summary"].name == "summary.csv" and res.paths["paired"].name == "paired.csv"


def test_summary_known_means_sd_and_ci(tmp_path: Path) -> None:
    _hand_set(tmp_path)
    summ = aggregate(tmp_path, suite="hand", n_resamples=5000).summary
    assert list(summ.columns) == SUMMARY_COLUMNS
    m = summ[(summ["method"] == "maccap") & (summ["metric"] == "CIDEr-D")].iloc[0]
    assert m["n"] == 4 and m["mean"] == pytest.approx(0.33) and m["sd"] == pytest.approx(np.std([0.30, 0.32, 0.34, 0.36], ddof=1))
    assert 0.30 <= m["ci_low"] < 0.33 < m["ci_high"] <= 0.36
    assert m["run_ids"].split(";") == [f"hand/caption/maccap/bb/seed{s}" for s in range(4)]
    d = summ[(summ["method"] == "decap")].iloc[0]
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.6)
    assert np.isnan(d["ci_low"]) and "no CI" in d["note"]  # n < 3: no fake CI
    const = summ[(summ["method"] == "maccap") & (summ["metric"] == "BLEU-4")].iloc[0]
    assert const["ci_low"] == const["ci_high"] == pytest.approx(0.1)
    assert "broken" not in set(summ["method"])


def test_bootstrap_ci_matches_normal_theory_and_is_seeded() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, size=400)
    lo, hi = bootstrap_ci(x, n_resamples=4000, seed=1)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.05) and hi == pytest.approx(x.mean() + half, abs=0.05)
    assert bootstrap_ci(x, n_resamples=4000, seed=1) == (lo, hi)
    # percentile bootstrap of 3 values: the CI lies within [min, max] of the resample means
    lo3, hi3 = bootstrap_ci(np.array([1.0, 2.0, 6.0]), n_resamples=4000)
    assert 1.0 <= lo3 < 3.0 < hi3 <= 6.0


def test_iqm_only_with_five_or_more() -> None:
    assert np.isnan(describe([1.0, 2.0, 3.0, 4.0])["iqm"])
    d = describe([1.0, 2.0, 3.0, 4.0, 100.0, 2.5, 3.5, 0.0])
    sorted_ = np.sort([1.0, 2.0, 3.0, 4.0, 100.0, 2.5, 3.5, 0.0])
    assert d["iqm"] == pytest.approx(sorted_[2:6].mean())


def test_prob_improvement_known_values() -> None:
    assert prob_improvement(np.array([2.0, 3.0]), np.array([1.0, 1.5])) == 1.0
    assert prob_improvement(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert prob_improvement(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert prob_improvement(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(5 / 6)


def test_paired_comparisons_over_matched_seeds(tmp_path: Path) -> None:
    _hand_set(tmp_path)
    paired = aggregate(tmp_path, suite="hand", n_resamples=3000).paired
    assert list(paired.columns) == PAIRED_COLUMNS
    row = paired[(paired["metric"] == "CIDEr-D") & (paired["method_b"] == "capdec")].iloc[0]
    assert row["method_a"] == "maccap"  # the reference method comes first
    diffs = np.array([0.30, 0.32, 0.34, 0.36]) - np.array([0.20, 0.25, 0.24, 0.31])
    assert row["n"] == 4 and row["mean_diff"] == pytest.approx(diffs.mean())
    assert diffs.min() <= row["ci_low"] <= row["mean_diff"] <= row["ci_high"] <= diffs.max()
    assert row["wins_a"] == 4
    assert row["prob_improvement"] == pytest.approx(prob_improvement(np.array([0.30, 0.32, 0.34, 0.36]),
                                                                     np.array([0.20, 0.25, 0.24, 0.31])))
    assert row["seeds"] == "0/100;1/101;2/102;3/103"
    # decap has only seeds 0 and 1: matched pairs n = 2, no CI
    d = paired[(paired["metric"] == "CIDEr-D") & (paired["method_b"] == "decap") & (paired["method_a"] == "maccap")].iloc[0]
    assert d["n"] == 2 and np.isnan(d["ci_low"]) and "no CI" in d["note"]


def test_unreadable_results_are_reported_not_fatal(tmp_path: Path) -> None:
    _hand_set(tmp_path)
    bad = tmp_path / "hand" / "caption" / "x" / "bb" / "seed0" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json", encoding="utf-8")
    res = aggregate(tmp_path, suite="hand", n_resamples=1000)
    assert len(res.invalid) == 1 and "malformed JSON" in res.invalid[0]
    with pytest.raises(UserError, match="no results for suite 'other'"):
        aggregate(tmp_path, suite="other")


def test_aggregate_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from benchmark.commands.aggregate import command

    _hand_set(tmp_path)
    out = tmp_path / "all.csv"
    r = CliRunner().invoke(command, ["--results-dir", str(tmp_path), "--out", str(out), "--resamples", "500"])
    assert r.exit_code == 0, r.output
    assert out.exists() and (tmp_path / "all.parquet").exists() and (tmp_path / "all-summary.csv").exists()
    assert "19 rows from 11 runs" in r.output
