"""Kill anywhere, lose nothing: SIGKILL a small real suite at named points, rerun, same outputs.

The suite below runs the real tasks (quickstart world, CLIP training, quickstart LM, feature caches,
MacCap training and evaluation, aggregation, report) at toy sizes. One uninterrupted reference run
per module; every other run is compared with it file by file: result.json without its volatile
blocks (benchmark.store.VOLATILE_KEYS: timings and provenance), every other result file, the tables,
data and figures of the report byte for byte, and index.html up to its provenance section.

Killed runs are forked children of the test process (imports are paid once; MACCAP_FAULT is set in
the child only) and torch runs on one thread everywhere, so bit-identical outputs are expected.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import traceback
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import yaml

from benchmark.runner import RunSummary, run_suite
from benchmark.store import comparable, read_result
from benchmark.suite import load_suite
from maccap import faults
from maccap.io import sha256_file

SUITE = "faults"
ALIGNER = {"n_queries": 4, "n_layers": 1, "n_heads": 2, "ffn_dim": 64, "dropout": 0.1, "mlp_hidden": None,
           "prefix_len": 1}
SUITE_YAML = {
    "name": SUITE, "version": 1, "device": "cpu",
    "dataset": {"name": "quickstart", "world": {"seed": 0, "preset": "tiny"}},
    "backbones": ["qs-rn"], "seeds": [0], "eval_seeds": [100],
    "tasks": [
        {"task": "clip", "params": {"split": "val", "steps": 3, "probes": False}},
        {"task": "caption", "methods": ["maccap"], "params": {
            "lm": "quickstart",
            "lm_config": {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "steps": 4, "batch_size": 16,
                          "warmup": 1},
            "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_iters": 2, "max_captions": 32,
                      "val_images": 0, "aligner": ALIGNER},
            "split": "test", "max_images": 4, "batch_size": 2, "metrics": ["bleu", "cider"]}},
    ],
}
TEMP_NAME = re.compile(r"^\..+\.\d+\.[^.]+\.tmp$")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Float results depend on the thread count; the reference and every killed child use one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("suite") / f"{SUITE}.yaml"
    p.write_text(yaml.safe_dump(SUITE_YAML), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def reference(suite_file: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """One uninterrupted run (with the report) that every other run of this module must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    s = _run(suite_file, root)
    assert s.complete and len(s.ok) == 2, s
    return root


def _run(suite_file: Path, root: Path, **kw: Any) -> RunSummary:
    return run_suite(load_suite(suite_file), root / "results", root / "reports", root / "work", progress=False, **kw)


def _run_with_fault(suite_file: Path, root: Path, fault: str) -> int:
    """Run the suite in a forked child with MACCAP_FAULT=fault; its exit code (-9 when SIGKILLed)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.environ[faults.ENV] = fault
            faults.reset()
            logging.disable(logging.CRITICAL)
            _run(suite_file, root)
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _outputs(root: Path, suite: str = SUITE) -> dict[str, Any]:
    """Every output file of the suite, in the form two identical runs must agree on."""
    out: dict[str, Any] = {}
    for base in ("results", "reports"):
        top = root / base / suite
        for p in sorted(top.rglob("*")):
            if p.is_dir() or p.name.endswith(".lock"):
                continue
            rel = f"{base}/{p.relative_to(top)}"
            if p.name == "result.json":
                out[rel] = comparable(json.loads(p.read_text(encoding="utf-8")))
            elif p.name == "index.html":  # its provenance table lists timings and timestamps
                out[rel] = p.read_text(encoding="utf-8").split("<h2 id='provenance'>")[0]
            else:
                out[rel] = p.read_bytes()
    return out


def assert_same_outputs(a: Path, b: Path, suite: str = SUITE) -> None:
    oa, ob = _outputs(a, suite), _outputs(b, suite)
    assert sorted(oa) == sorted(ob)
    different = [k for k in oa if oa[k] != ob[k]]
    assert not different, different
    for name in ("tidy.csv", "summary.csv", "paired.csv"):
        assert f"results/{name}" in oa


def assert_nothing_partial_is_trusted(root: Path) -> None:
    """Whatever looks finished is finished: results readable, caches match their recorded checksums."""
    for p in (root / "results").rglob("result.json"):
        assert read_result(p)["status"] == "ok", p
    work = root / "work"
    for meta in (work / "features").rglob("meta.json"):
        for shard in json.loads(meta.read_text())["shards"]:
            assert sha256_file(meta.parent / shard["file"]) == shard["sha256"], meta
    for prov in (work / "clip").glob("*.json"):
        assert sha256_file(prov.with_suffix(".safetensors")) == json.loads(prov.read_text())["weights_sha256"]
    for meta in (work / "captioners").glob("*/meta.json"):
        assert sha256_file(meta.parent / "bridge.safetensors") == json.loads(meta.read_text())["bridge_sha256"]
    for done in (work / "lm").glob("*/DONE"):
        assert sha256_file(done.parent / "model.safetensors") == json.loads(done.read_text())["model.safetensors"]
    world = work / "worlds" / "tiny-seed0"
    if (world / "manifest.json").exists():
        from maccap.data import verify_manifest

        assert verify_manifest(world) == []


def assert_no_litter(root: Path) -> None:
    """After a completed rerun no temp file, half-built world or stale copy remains."""
    left = [p for p in root.rglob("*") if TEMP_NAME.match(p.name) or p.name.endswith((".partial", ".old"))]
    assert not left, left


# Kill points of the default chain, in the order a fresh run passes them; each kill is followed by
# the next (rerun) attempt, which resumes from what the previous one left.
CHAIN = ["world-file:60", "clip-step:2", "clip-saved:1", "lm-step:2", "feature-shard:1", "captioner-step:3",
         "caption-batch:1", "result-items:1", "aggregate:1", "report:1"]
# The slow test adds these, in a second chain.
MORE = ["world-publish:1", "run-done:1", "lm-saved:1", "captioner-epoch:1", "captioner-saved:1", "feature-shard:1",
        "metrics:1", "aggregate:2", "aggregate:5"]


def _kill_chain(suite_file: Path, root: Path, points: list[str]) -> None:
    for fault in points:
        assert _run_with_fault(suite_file, root, fault) == -signal.SIGKILL, f"{fault} was never reached"
        assert_nothing_partial_is_trusted(root)
    final = _run(suite_file, root)
    assert final.complete and not final.failed


def test_kill_chain_resumes_to_identical_outputs(reference: Path, suite_file: Path, tmp_path: Path) -> None:
    """SIGKILL in world generation, CLIP training, LM training, feature caching, captioner training,
    evaluation, result writing, aggregation and report writing; each rerun resumes; same outputs."""
    _kill_chain(suite_file, tmp_path, CHAIN)
    assert_same_outputs(reference, tmp_path)
    assert_no_litter(tmp_path)


def test_second_clean_run_is_bit_identical(reference: Path, suite_file: Path, tmp_path: Path) -> None:
    """Determinism: the same suite and seeds into other results/work dirs give the same files."""
    s = _run(suite_file, tmp_path)
    assert s.complete and not s.skipped
    assert_same_outputs(reference, tmp_path)
    a = read_result(reference / "results" / SUITE / "caption/maccap/qs-rn/seed0/result.json")
    b = read_result(tmp_path / "results" / SUITE / "caption/maccap/qs-rn/seed0/result.json")
    assert a["metrics"] == b["metrics"] and a["metrics"]
    assert a["provenance"]["runner"]["work_dir"] != b["provenance"]["runner"]["work_dir"]  # what is excluded
    assert "task" in a["timings"] and "timings" not in a["extra"]


def test_corrupt_caches_are_recomputed_not_trusted(reference: Path, suite_file: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Flip bytes in a feature shard, the CLIP weights and the captioner weights of a finished work dir:
    the checksums catch each one, the artefact is rebuilt, and the numbers do not change."""
    import shutil

    shutil.copytree(reference, tmp_path / "r")
    root = tmp_path / "r"
    work = root / "work"
    victims = [next((work / "features").rglob("shard00000.safetensors")),
               next((work / "clip").glob("*.safetensors")),
               next((work / "captioners").glob("*/bridge.safetensors"))]
    for v in victims:
        data = bytearray(v.read_bytes())
        data[len(data) // 2] ^= 0xFF
        v.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        s = _run(suite_file, root, skip_existing=False)
    assert s.complete and len(s.ok) == 2
    assert "checksum mismatch" in caplog.text
    assert "does not match its provenance checksum" in caplog.text
    assert "do not match the checksum" in caplog.text
    assert_nothing_partial_is_trusted(root)
    assert_same_outputs(reference, root)


def test_ctrl_c_stops_at_the_next_safe_point(reference: Path, suite_file: Path, tmp_path: Path) -> None:
    """A SIGINT during CLIP training lets that run finish, stops before the next, says how to resume;
    the CLI exits 130 and the same command then finishes with the reference's outputs."""
    from click.testing import CliRunner

    from benchmark.commands.run import command

    args = [str(suite_file), "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"),
            "--work-dir", str(tmp_path / "work"), "--no-progress", "--jobs", "1"]
    faults.reset()
    r = CliRunner().invoke(command, args, env={faults.ENV: "clip-step:1:int"})
    assert r.exit_code == 130, r.output
    assert "rerun the same command to resume" in r.output
    assert "1 ok, 0 failed, 1 not run" in r.output
    assert len(list((tmp_path / "results").rglob("result.json"))) == 1
    assert not (tmp_path / "reports").exists()
    faults.reset()
    r = CliRunner().invoke(command, args)
    assert r.exit_code == 0, r.output
    assert "1 reused, 1 ok" in r.output
    assert_same_outputs(reference, tmp_path)


def test_second_ctrl_c_aborts_at_once_with_resume_advice(suite_file: Path, tmp_path: Path, one_thread: None,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C twice (during world generation, then before the world is published): the CLI stops at
    once, exits 130, says how to resume, and leaves no result and no temp file."""
    import sys

    from benchmark.cli import main

    monkeypatch.setenv(faults.ENV, "world-file:1:int,world-publish:1:int")
    monkeypatch.setattr(sys, "argv", ["maccap-bench", "run", str(suite_file), "--results-dir", str(tmp_path / "results"),
                                      "--reports-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work"),
                                      "--no-progress", "--jobs", "1"])
    faults.reset()
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 130
    assert "interrupted; rerun the same command to resume (finished runs are kept)" in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("result.json"))
    assert not [p for p in tmp_path.rglob("*") if TEMP_NAME.match(p.name)]
    faults.reset()


def test_fault_spec_is_validated() -> None:
    assert faults.parse("clip-step:2, report:1:int") == {"clip-step": (2, signal.SIGKILL), "report": (1, signal.SIGINT)}
    for bad in ("nowhere:1", "clip-step", "clip-step:0", "clip-step:x", "clip-step:1:term"):
        with pytest.raises(ValueError, match=faults.ENV):
            faults.parse(bad)


@pytest.mark.slow
def test_more_kill_points_resume_to_identical_outputs(reference: Path, suite_file: Path, tmp_path: Path) -> None:
    """The remaining named points, as a second chain."""
    _kill_chain(suite_file, tmp_path, MORE)
    assert_same_outputs(reference, tmp_path)
    assert_no_litter(tmp_path)


@pytest.mark.slow
def test_kill_at_successive_atomic_writes(reference: Path, suite_file: Path, tmp_path: Path) -> None:
    """Kill at the k-th atomic write of each rerun until one finishes; k grows only when a rerun made
    no progress (a unit of work needs more writes than k), so the kills walk through the whole run."""
    k, kills, before = 2, 0, None
    for _ in range(60):
        code = _run_with_fault(suite_file, tmp_path, f"atomic-replace:{k}")
        if code == 0:
            break
        assert code == -signal.SIGKILL
        kills += 1
        assert_nothing_partial_is_trusted(tmp_path)
        state = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file() and not TEMP_NAME.match(p.name))
        if state == before:
            k += 3
        before = state
    else:
        pytest.fail("the suite never finished")
    assert kills >= 10
    assert_same_outputs(reference, tmp_path)
    assert_no_litter(tmp_path)


@pytest.mark.slow
def test_tiny_suite_twice_is_bit_identical(tmp_path: Path, one_thread: None) -> None:
    """Determinism across every task (world, CLIP, gap and subregion with figures, caption, VQA, report):
    the shipped `tiny` suite twice, into two results and work dirs, gives the same files."""
    for name in ("a", "b"):
        s = run_suite(load_suite("tiny"), tmp_path / name / "results", tmp_path / name / "reports",
                      tmp_path / name / "work", progress=False)
        assert s.complete and not s.failed, s.failed
    assert_same_outputs(tmp_path / "a", tmp_path / "b", "tiny")


def test_safetensors_metadata_is_written_in_a_stable_order(tmp_path: Path) -> None:
    """safetensors writes its metadata in hash order (it differs between processes and calls);
    maccap.io.canonical_safetensors sorts it, so the noise model file of the gap task is stable."""
    from safetensors import safe_open
    from safetensors.torch import save

    from maccap.io import canonical_safetensors

    tensors = {"var": torch.arange(4.0), "mean": torch.ones(2, dtype=torch.float64)}
    meta = {f"k{i}": str(i) for i in range(8)}
    outs = {canonical_safetensors(save(tensors, metadata=meta)) for _ in range(10)}
    assert len(outs) == 1
    (tmp_path / "m.safetensors").write_bytes(outs.pop())
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("var"), torch.arange(4.0))
