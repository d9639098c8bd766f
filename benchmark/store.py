"""The result store: one directory per run, a versioned result.json, per-item JSONL beside it.

Layout: <results_dir>/<suite>/<task>/<method>/<backbone-slug>/seed<k>/result.json
A run directory counts as finished only when result.json exists with status "ok"; everything is
written atomically, so a killed run leaves no result.json (or the previous one) and is simply redone.

Two blocks of result.json may differ between two runs of the same config, seeds and data, and only
these (VOLATILE_KEYS): `timings` (wall-clock measures: the runner's total and the task's own, which
tasks return as extra["timings"] / extra["timings_detail"] and build_result moves here) and
`provenance` (when, where and with what: timestamp, git commit, library versions, absolute paths of
the data, work and weights directories, checksums). Everything else is a function of the inputs and
is bit-identical on the CPU (tests/test_faults.py checks it).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_write_json, atomic_write_jsonl, hash_config, read_json

SCHEMA_VERSION = 1
VOLATILE_KEYS = ("timings", "provenance")  # the only top-level keys allowed to differ between identical runs
TASK_TIMING_KEYS = ("timings", "timings_detail")  # keys of a task's `extra` that are timings
REQUIRED_KEYS = ("schema_version", "run_id", "suite", "task", "method", "backbone", "dataset", "config",
                 "config_hash", "seeds", "status", "metrics", "skipped_metrics", "counts", "timings",
                 "provenance")
TRACKED_PACKAGES = ("torch", "open_clip_torch", "transformers", "pycocoevalcap", "numpy", "scipy", "pandas")


def slug(name: str) -> str:
    """File-system-safe form of a backbone or method name (ViT-B-32/openai -> ViT-B-32__openai)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", name).strip("_") or "none"


@dataclass(frozen=True)
class RunKey:
    suite: str
    task: str
    method: str
    backbone: str
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.suite}/{self.task}/{self.method}/{self.backbone}/seed{self.seed}"

    def dir(self, results_dir: str | Path) -> Path:
        return Path(results_dir) / slug(self.suite) / slug(self.task) / slug(self.method) / slug(self.backbone) / f"seed{self.seed}"


@dataclass
class TaskOutput:
    """What a task returns; the store turns it into result.json plus files."""

    metrics: dict[str, float] = field(default_factory=dict)
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    items: list[dict[str, Any]] | None = None  # per-item outputs -> items.jsonl
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific structured results
    data_checksums: dict[str, str] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # which exact weights were used
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file name inside the run dir


_HERE = Path(__file__).resolve().parent


def _git(*args: str, cwd: Path = _HERE) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(cwd: Path = _HERE) -> str | None:
    out = _git("rev-parse", "HEAD", cwd=cwd)
    return out.strip() or None if out is not None else None


def git_dirty(cwd: Path = _HERE) -> bool | None:
    """Whether tracked files differ from the commit: a result made so is not reproducible from it alone."""
    out = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return bool(out.strip()) if out is not None else None


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["java"] = shutil.which("java")
    return versions


def build_result(key: RunKey, dataset: str, config: dict[str, Any], seeds: dict[str, int], out: TaskOutput,
                 timings: dict[str, float], status: str = "ok", error: str | None = None,
                 runner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result.json object; the task's timings go to `timings`, `runner` (paths, device) to `provenance`."""
    extra = {k: v for k, v in out.extra.items() if k not in TASK_TIMING_KEYS}
    task_timings = {k: v for t in TASK_TIMING_KEYS if isinstance(out.extra.get(t), dict) for k, v in out.extra[t].items()}
    timings = {**timings, **({"task": task_timings} if task_timings else {})}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": key.run_id,
        "suite": key.suite, "task": key.task, "method": key.method, "backbone": key.backbone,
        "dataset": dataset,
        "config": config,
        "config_hash": hash_config(config),
        "seeds": seeds,
        "status": status,
        "error": error,
        "metrics": out.metrics,
        "skipped_metrics": out.skipped_metrics,
        "counts": out.counts,
        "timings": timings,
        "extra": extra,
        "artifacts": out.artifacts,
        "provenance": {
            "runner": runner or {},
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "versions": library_versions(),
            "data_checksums": out.data_checksums,
            "weights": out.weights,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }


def write_run(run_dir: Path, result: dict[str, Any], items: list[dict[str, Any]] | None = None) -> Path:
    """Write items first and result.json last: result.json existing means the run is complete."""
    if items is not None:
        atomic_write_jsonl(run_dir / "items.jsonl", items)
        result.setdefault("artifacts", {})["items"] = "items.jsonl"
        faults.checkpoint("result-items")
    validate_result(result, run_dir / "result.json")
    atomic_write_json(run_dir / "result.json", result)
    return run_dir / "result.json"


def validate_result(result: Any, where: str | Path) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(result).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise UserError(f"{where}: result is missing field(s) {', '.join(missing)}")
    if result["schema_version"] != SCHEMA_VERSION:
        raise UserError(f"{where}: schema_version {result['schema_version']!r}, expected {SCHEMA_VERSION}")
    if not isinstance(result["metrics"], dict):
        raise UserError(f"{where}: field 'metrics' must be an object")
    return result


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """result.json without its VOLATILE_KEYS: what two runs of the same inputs must agree on exactly."""
    return {k: v for k, v in result.items() if k not in VOLATILE_KEYS}


def read_result(path: str | Path) -> dict[str, Any]:
    return validate_result(read_json(path, "result file"), path)


def is_complete(run_dir: Path, config_hash: str | None = None) -> bool:
    """A finished, successful run with the same config (when given) can be skipped."""
    path = run_dir / "result.json"
    if not path.exists():
        return False
    try:
        res = read_result(path)
    except UserError:
        return False
    return res["status"] == "ok" and (config_hash is None or res["config_hash"] == config_hash)


def iter_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every result.json below results_dir, with its path recorded under '_path'."""
    out = []
    for path in sorted(Path(results_dir).rglob("result.json")):
        res = read_result(path)
        res["_path"] = str(path)
        out.append(res)
    return out
