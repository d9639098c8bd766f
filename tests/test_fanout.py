"""Sweep fan-out: a suite becomes submitit shard jobs whose results land in one store, then one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmark.commands.run import command
from benchmark.fanout import FanoutConfig, n_jobs, submit_suite
from benchmark.store import read_result
from benchmark.suite import load_suite
from maccap.errors import UserError
from test_runner import _final_table, _suite


def _args(tmp_path: Path, path: Path, *extra: str) -> list[str]:
    return [str(path), "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"),
            "--work-dir", str(tmp_path / "work"), "--no-progress", *extra]


def test_debug_executor_fans_out_then_aggregates_and_reports(tmp_path: Path) -> None:
    path = _suite(tmp_path, methods=("maccap", "broken"))
    suite = load_suite(path)
    assert n_jobs(suite, None, 18) == 6  # one job per (backbone, train seed) chain
    s = submit_suite(suite, tmp_path / "results", tmp_path / "reports", tmp_path / "work",
                     FanoutConfig(executor="debug", jobs=3), progress=False)
    assert [j["shard"] for j in s.jobs] == ["0/3", "1/3", "2/3"] and all(j["state"] == "done" for j in s.jobs)
    assert sum(j["ok"] for j in s.jobs) == 12 and len(s.failed_runs) == 6  # the "broken" method fails, recorded
    assert len(list((tmp_path / "results" / "dum").rglob("result.json"))) == 18
    assert s.report is not None and s.report.is_file() and s.tidy is not None and s.tidy.is_file()
    table = _final_table(tmp_path)
    assert set(table["method"]) >= {"maccap", "default"}
    # a rerun submits only the shards that still have work (the failed runs), and reports again
    again = submit_suite(suite, tmp_path / "results", tmp_path / "reports", tmp_path / "work",
                         FanoutConfig(executor="debug", jobs=3), report=False, progress=False)
    assert len(again.jobs) == 3 and sum(j["ok"] for j in again.jobs) == 0 and sum(j["skipped"] for j in again.jobs) == 12


def test_local_executor_runs_shards_as_processes(tmp_path: Path) -> None:
    """submitit's local executor: separate processes, concurrently, into the same store, then the report."""
    path = _suite(tmp_path, methods=("maccap",))
    r = CliRunner().invoke(command, _args(tmp_path, path, "--executor", "local", "--jobs", "2",
                                          "--timeout-min", "10"))
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "12 runs in 2 shard job(s) on local" in r.output and "report:" in r.output
    assert r.output.count(": done: 6 ok, 0 reused, 0 failed") == 2
    res = read_result(tmp_path / "results/dum/a/maccap/bb-b/seed2/result.json")
    assert res["status"] == "ok" and res["provenance"]["runner"]["suite_overrides"] == []
    assert (tmp_path / "reports" / "dum" / "index.html").is_file()
    assert list((tmp_path / "work" / "submitit").glob("*_log.err"))  # the jobs' logs stay with the work dir


@pytest.mark.slow
def test_a_crashed_job_is_reported_with_its_log_and_no_report(tmp_path: Path) -> None:
    path = _suite(tmp_path, methods=("maccap",), a_params={"kill_once_file": str(tmp_path / "kill")})
    (tmp_path / "kill").write_text("x")
    r = CliRunner().invoke(command, _args(tmp_path, path, "--executor", "local", "--jobs", "2"))
    assert r.exit_code == 1
    assert "failed" in r.output and "log " in r.output and "report:" not in r.output
    assert not (tmp_path / "reports" / "dum" / "index.html").exists()
    r = CliRunner().invoke(command, _args(tmp_path, path, "--executor", "debug", "--jobs", "2"))  # resume
    assert r.exit_code == 0, r.output
    assert (tmp_path / "reports" / "dum" / "index.html").is_file()


def test_submission_options_are_checked(tmp_path: Path) -> None:
    path = _suite(tmp_path, methods=("maccap",))
    for extra, msg in ((["--jobs", "two"], "--jobs two: expected a positive integer"),
                       (["--executor", "local", "--slurm-partition", "gpu"], "apply to --executor slurm"),
                       (["--executor", "debug", "--shard", "0/2"], "makes the shards itself"),
                       (["--executor", "debug", "--jobs", "0"], "--jobs 0"),
                       (["--executor", "slurm", "--slurm-option", "account"], "--slurm-option 'account'")):
        r = CliRunner().invoke(command, _args(tmp_path, path, *extra))
        assert isinstance(r.exception, UserError) and msg in str(r.exception), (extra, r.output, r.exception)


def test_slurm_needs_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    r = CliRunner().invoke(command, _args(tmp_path, _suite(tmp_path, methods=("maccap",)), "--executor", "slurm",
                                          "--slurm-partition", "gpu"))
    assert isinstance(r.exception, UserError) and "`sbatch` is not on PATH" in str(r.exception)


def test_missing_submitit_is_a_clear_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)
    path = _suite(tmp_path, methods=("maccap",))
    r = CliRunner().invoke(command, _args(tmp_path, path, "--executor", "debug"))
    assert isinstance(r.exception, UserError) and "pip install 'maccap-bench[slurm]'" in str(r.exception)
