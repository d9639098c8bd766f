"""The runner end to end with the model-free dummy task: skip, failure, crash, Ctrl-C, lock, shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from filelock import FileLock

from analysis.aggregate import aggregate
from benchmark.runner import parse_shard, plan_suite, run_suite
from benchmark.store import read_result
from benchmark.suite import load_suite
from maccap.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _suite(tmp_path: Path, name: str = "dum", b_params: dict | None = None, a_params: dict | None = None,
           methods: tuple[str, ...] = ("maccap", "capdec", "broken")) -> Path:
    d = {
        "name": name, "version": 1, "dataset": {"name": "coco", "data_dir": str(tmp_path)},
        "backbones": ["bb-a", "bb-b"], "seeds": [0, 1, 2], "eval_seeds": [10, 11, 12],
        "tasks": [
            {"task": "dummy", "name": "a", "methods": list(methods),
             "params": {"noise": 0.01, "fail_methods": ["broken"], "n_items": 1, **(a_params or {})}},
            {"task": "dummy", "name": "b", "params": {"metrics": ["acc"], "n_items": 0, **(b_params or {})}},
        ],
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return p


def _run(path: Path, root: Path, **kw):
    kw.setdefault("report", False)  # figures cost seconds; the tests that check the report ask for it
    return run_suite(load_suite(path), root / "results", root / "reports", root / "work", progress=False, **kw)


def _final_table(root: Path, suite: str = "dum") -> pd.DataFrame:
    return aggregate(root / "results", suite=suite, n_resamples=500).tidy


def test_run_records_ok_and_failed_and_skips_on_rerun(tmp_path: Path) -> None:
    path = _suite(tmp_path)
    s1 = _run(path, tmp_path)
    assert s1.planned == 3 * 2 * 3 + 2 * 3
    assert len(s1.ok) == 2 * 2 * 3 + 6 and len(s1.failed) == 6 and not s1.skipped
    failed = read_result(tmp_path / "results/dum/a/broken/bb-a/seed1/result.json")
    assert failed["status"] == "failed"
    assert "RuntimeError: injected failure" in failed["error"] and "Traceback" in failed["error"]
    ok = read_result(tmp_path / "results/dum/a/maccap/bb-b/seed2/result.json")
    assert ok["seeds"] == {"train": 2, "eval": 12} and ok["dataset"] == "coco" and ok["metrics"]["CIDEr-D"] > 0
    assert (tmp_path / "results/dum/a/maccap/bb-b/seed2/items.jsonl").exists()
    assert s1.tidy is not None and s1.tidy.exists() and s1.report is None
    # rerun: finished runs are reused, failed ones retried (and fail again)
    s2 = _run(path, tmp_path)
    assert len(s2.skipped) == 18 and len(s2.failed) == 6 and not s2.ok
    # a changed parameter changes the config hash: that entry is rerun, the other reused
    s3 = _run(_suite(tmp_path, b_params={"noise": 0.5}), tmp_path)
    assert sorted(set(r.split("/")[1] for r in s3.ok)) == ["b"] and len(s3.ok) == 6
    # no skip: everything reruns
    s4 = _run(path, tmp_path, skip_existing=False, tasks_filter=["b"])
    assert len(s4.ok) == 6 and not s4.skipped


def test_killed_suite_resumes_to_the_same_table(tmp_path: Path) -> None:
    """SIGKILL in the middle of entry b, rerun: same final table as an uninterrupted run."""
    kill = tmp_path / "kill-now"
    path = _suite(tmp_path, b_params={"kill_once_file": str(kill)}, methods=("maccap", "capdec"))
    clean = tmp_path / "clean"
    _run(path, clean)
    killed = tmp_path / "killed"
    kill.touch()
    code = ("import sys; from benchmark.suite import load_suite; from benchmark.runner import run_suite; "
            "run_suite(load_suite(sys.argv[1]), sys.argv[2] + '/results', sys.argv[2] + '/reports', "
            "sys.argv[2] + '/work', progress=False)")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(killed)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not kill.exists()
    done_before = list((killed / "results").rglob("result.json"))
    assert len(done_before) == 12  # entry a finished, b died at its first run
    assert not (killed / "reports").exists()
    s = _run(path, killed)  # the dead process's lock is gone with it
    assert len(s.skipped) == 12 and len(s.ok) == 6
    pd.testing.assert_frame_equal(_final_table(killed), _final_table(clean))


def test_parallel_workers_give_the_same_table_as_one_process(tmp_path: Path) -> None:
    """--jobs 2: the shards run in two processes, every run once, one final table equal to a serial run."""
    path = _suite(tmp_path, methods=("maccap", "broken"))
    serial = _run(path, tmp_path / "serial")
    par = _run(path, tmp_path / "par", jobs=2)
    assert sorted(par.ok) == sorted(serial.ok) and sorted(par.failed) == sorted(serial.failed)
    assert par.tidy is not None and not par.interrupted
    pd.testing.assert_frame_equal(_final_table(tmp_path / "par"), _final_table(tmp_path / "serial"))
    again = _run(path, tmp_path / "par", jobs=2)  # resumable like a serial run: only the failures rerun
    assert not again.ok and len(again.skipped) == len(serial.ok) and sorted(again.failed) == sorted(serial.failed)


def test_jobs_option_is_checked() -> None:
    from benchmark.runner import resolve_jobs

    suite = load_suite("tiny")
    assert resolve_jobs("3", suite, "cpu") == 3 and resolve_jobs("auto", suite, "cuda") == 1
    assert 1 <= resolve_jobs("auto", suite, "cpu") <= 4
    for bad in ("0", "two", "-1"):
        with pytest.raises(UserError, match="--jobs"):
            resolve_jobs(bad, suite, "cpu")


def test_ctrl_c_stops_at_safe_point_and_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flag = tmp_path / "sigint-now"
    flag.touch()
    path = _suite(tmp_path, a_params={"sigint_once_file": str(flag)}, methods=("maccap",))
    s = _run(path, tmp_path)
    assert s.interrupted and len(s.ok) == 1 and len(s.not_run) == 11 and s.tidy is None
    assert "run the same command again to resume" in caplog.text
    s2 = _run(path, tmp_path)
    assert not s2.interrupted and len(s2.skipped) == 1 and len(s2.ok) == 11 and s2.tidy is not None


def test_stop_on_error_and_lock(tmp_path: Path) -> None:
    path = _suite(tmp_path, methods=("broken", "maccap"))
    s = _run(path, tmp_path, stop_on_error=True)
    assert s.stopped_on_error and len(s.failed) == 1 and not s.ok and s.tidy is None
    lock = FileLock(str(tmp_path / "results" / "dum" / ".runner.lock"))
    with lock:
        with pytest.raises(UserError, match="another runner is writing"):
            _run(path, tmp_path)


def test_dry_run_writes_nothing_and_shards_partition(tmp_path: Path) -> None:
    path = _suite(tmp_path)
    s = _run(path, tmp_path, dry_run=True)
    assert s.dry_run and s.planned == 24 and not (tmp_path / "results").exists()
    suite = load_suite(path)
    full = [r.run_id for r in plan_suite(suite, tmp_path / "results")]
    assert full[0] == "dum/a/maccap/bb-a/seed0" and full[-1] == "dum/b/default/bb-b/seed2"
    parts = [[r.run_id for r in plan_suite(suite, tmp_path / "results", shard=(i, 4))] for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(full)
    assert all(parts) and len(set(sum(parts, []))) == len(full)
    # 6 (backbone, seed) chains over 4 shards: every chain stays in one shard
    for p in parts:
        chains = {tuple(r.split("/")[3:5]) for r in p}
        assert all(not (set(q) & set(p)) or q is p for q in parts)
        assert len(chains) in (1, 2)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(UserError, match="--only 'zzz'"):
        plan_suite(suite, tmp_path, tasks_filter=["zzz"])


def test_sharded_runs_do_not_report(tmp_path: Path) -> None:
    path = _suite(tmp_path, methods=("maccap",))
    s = _run(path, tmp_path, shard=(0, 2))
    assert s.report is None and s.tidy is None and len(s.ok) == 6
    s = _run(path, tmp_path, shard=(1, 2))
    assert len(s.ok) == 6
    assert len(list((tmp_path / "results" / "dum").rglob("result.json"))) == 12


def test_missing_task_module_is_a_recorded_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planned task whose module is absent validates (with a warning) and its runs fail clearly."""
    import benchmark.suite as suite_mod

    monkeypatch.setattr(suite_mod, "EXPECTED_TASKS", suite_mod.EXPECTED_TASKS + ("future",))
    d = yaml.safe_load(_suite(tmp_path).read_text())
    d["tasks"] = [{"task": "future", "methods": ["m"], "backbones": ["qs-rn"], "params": {}}]
    p = tmp_path / "v.yaml"
    p.write_text(yaml.safe_dump(d))
    s = _run(p, tmp_path)
    assert len(s.failed) == 3
    err = read_result(tmp_path / "results/dum/future/m/qs-rn/seed0/result.json")["error"]
    assert "task 'future' is not available" in err


def test_cli_run_dry_run_and_full(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from benchmark.commands.run import command

    path = _suite(tmp_path, methods=("maccap",))
    args = [str(path), "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "p"),
            "--work-dir", str(tmp_path / "w"), "--no-progress"]
    r = CliRunner().invoke(command, args + ["--dry-run"])
    assert r.exit_code == 0, r.output
    assert "12 runs, 0 done, 12 to do" in r.output and "[todo] dum/a/maccap/bb-a/seed0" in r.output
    r = CliRunner().invoke(command, args + ["--only", "b"])
    assert r.exit_code == 0, r.output
    assert "6 ok, 0 failed" in r.output and "report:" in r.output
    r = CliRunner().invoke(command, args + ["--dry-run"])
    assert "12 runs, 6 done, 6 to do" in r.output
    r = CliRunner().invoke(command, args + ["--shard", "9/2"])
    assert r.exit_code != 0 and "--shard" in str(r.exception)
    assert json.loads((tmp_path / "r/dum/b/default/bb-a/seed0/result.json").read_text())["status"] == "ok"
    assert os.path.exists(tmp_path / "p/dum/index.html")


def test_unwritable_task_output_becomes_a_failed_run(tmp_path: Path) -> None:
    path = _suite(tmp_path, b_params={"unserialisable": True}, methods=("maccap",))
    s = _run(path, tmp_path)
    assert len(s.ok) == 6 and len(s.failed) == 6
    err = read_result(tmp_path / "results/dum/b/default/bb-a/seed0/result.json")["error"]
    assert "cannot write the task's output" in err


def test_perf_collects_every_area_and_records_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import benchmark.perf as perf

    good = types.ModuleType("benchmark.perf.fake_good")
    good.run = lambda quick=False: {"items_per_s": 10.0 if quick else 100.0, "ratio": 2.5}
    bad = types.ModuleType("benchmark.perf.fake_bad")
    bad.run = lambda quick=False: 1 / 0
    monkeypatch.setitem(sys.modules, "benchmark.perf.fake_good", good)
    monkeypatch.setitem(sys.modules, "benchmark.perf.fake_bad", bad)
    monkeypatch.setattr(perf, "list_areas", lambda: ["fake_bad", "fake_good"])
    out = tmp_path / "perf.json"
    rep = perf.collect(quick=True, out=out, progress=False)
    saved = json.loads(out.read_text())
    assert saved["quick"] is True and saved["areas"]["fake_good"]["figures"] == {"items_per_s": 10.0, "ratio": 2.5}
    assert saved["areas"]["fake_bad"]["status"] == "failed" and "ZeroDivisionError" in saved["areas"]["fake_bad"]["error"]
    assert rep["machine"]["cpu_count"] and "torch" in rep["versions"]
    with pytest.raises(UserError, match="unknown perf area"):
        perf.collect(areas=["nope"], progress=False)


def test_quickstart_suite_shares_one_captioner_between_caption_and_vqa() -> None:
    q = load_suite("quickstart")
    cap, vqa = q.entry("caption").params, q.entry("vqa").params
    for key in ("train", "lm", "lm_config", "method_options"):
        assert cap[key] == vqa[key], key
    plan = plan_suite(q, "/nonexistent")
    # clip, gap, subregion once per backbone (fixed shipped weights); 4 caption methods, 3 VQA modes per seed
    assert len(plan) == 2 * 3 + 2 * 3 * (4 + 3)
    assert {e.params["mode"] for e in q.tasks if e.task == "vqa"} == {"prefix", "caption", "no-image"}
    assert [r.entry.task for r in plan][:2] == ["clip"] * 2 and plan[-1].entry.task == "vqa"
    assert {r.seeds.train for r in plan if r.entry.task in ("clip", "gap", "subregion")} == {0}


@pytest.mark.slow
def test_tiny_suite_runs_end_to_end_with_real_tasks(tmp_path: Path) -> None:
    """The shipped `tiny` suite with the real tasks (world, CLIP, gap, subregion, caption, VQA)."""
    s = run_suite(load_suite("tiny"), tmp_path / "r", tmp_path / "p", tmp_path / "w", progress=False)
    failed = {rid: read_result(tmp_path / "r" / rid / "result.json")["error"].splitlines()[0] for rid in s.failed}
    assert not failed, failed
    assert s.report is not None and (tmp_path / "p" / "tiny" / "tables" / "tiny-captioning.md").exists()
    again = run_suite(load_suite("tiny"), tmp_path / "r", tmp_path / "p", tmp_path / "w", progress=False, report=False)
    assert len(again.skipped) == again.planned


def test_scheduler_starts_the_shared_artefact_first_and_never_beside_its_builder() -> None:
    """next_run: the LM builder goes first; runs needing an artefact being built wait; then plan order."""
    from types import SimpleNamespace

    from benchmark.runner import next_run

    runs = [SimpleNamespace(run_id=i) for i in ("gap", "cap-a", "cap-b", "vqa-a")]
    keys = {"gap": set(), "cap-a": {"lm", "cap-a"}, "cap-b": {"lm", "cap-b"}, "vqa-a": {"lm", "cap-a"}}
    assert next_run(runs, keys, held=set(), built=set()).run_id == "cap-a"  # builds what 3 runs need
    rest = [r for r in runs if r.run_id != "cap-a"]
    assert next_run(rest, keys, held={"lm", "cap-a"}, built=set()).run_id == "gap"  # the others would wait
    assert next_run([r for r in rest if r.run_id != "gap"], keys, held={"lm", "cap-a"}, built=set()) is None
    after = [r for r in rest if r.run_id != "gap"]
    assert next_run(after, keys, held=set(), built={"lm", "cap-a"}).run_id == "cap-b"


def test_caption_and_vqa_runs_declare_the_same_captioner() -> None:
    from benchmark.tasks import shared_artefacts

    params = {"lm": "quickstart", "lm_config": {"steps": 5}, "train": {"epochs": 1}, "method_options": {}}
    cap = shared_artefacts("caption", "quickstart", "maccap", "qs-rn", 0, {**params, "split": "test"})
    vqa = shared_artefacts("vqa", "quickstart", "maccap", "qs-rn", 0, {**params, "mode": "prefix"})
    assert cap == vqa and len(cap) == 2
    assert len(cap & shared_artefacts("caption", "quickstart", "maccap", "qs-rn", 1, params)) == 1  # the LM only
    blind = [shared_artefacts("caption", "quickstart", "no-image", b, 0, params) for b in ("qs-rn", "qs-vit")]
    assert blind[0] == blind[1]  # one blind captioner for every backbone
    assert shared_artefacts("gap", "quickstart", "default", "qs-rn", 0, {}) == set()
