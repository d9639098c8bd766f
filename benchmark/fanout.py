"""Fan a suite out into shard jobs with submitit (Slurm, or local processes), then aggregate and report.

Each job runs `run_suite(..., shard=(i, n), report=False)`: the same deterministic shards as
`--shard i/n`, the same result store and the same shared work_dir (feature caches, the world, LMs and
captioners are guarded by file locks, so jobs that need the same artefact build it once). When every
job has finished, the driver aggregates the store and renders the report exactly as an inline run
does. A rerun submits only shards with runs left to do. submitit is optional (`pip install
"maccap-bench[slurm]"`); it is imported only here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.runner import plan_suite, run_suite, summarize_suite
from benchmark.suite import Suite
from maccap.errors import UserError

log = logging.getLogger(__name__)

EXECUTORS = ("slurm", "local", "debug")  # submitit's clusters: debug runs the jobs in this process


@dataclass(frozen=True)
class FanoutConfig:
    """How to submit: the submitit cluster, how many shard jobs, and the resources of one job."""

    executor: str = "slurm"
    jobs: int | None = None  # None: one job per (backbone, train seed) chain of the suite
    folder: Path | None = None  # submitit's job files and logs (None: WORK_DIR/submitit)
    timeout_min: int = 720
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    partition: str | None = None  # Slurm only
    slurm_options: dict[str, str] = field(default_factory=dict)  # extra sbatch options (account, qos, ...)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise UserError(f"--executor {self.executor!r}: expected one of {', '.join(EXECUTORS)} (or inline)")
        if self.jobs is not None and self.jobs < 1:
            raise UserError(f"--jobs {self.jobs}: expected a positive number of shard jobs")
        if self.executor != "slurm" and (self.partition or self.slurm_options):
            raise UserError(f"--slurm-partition/--slurm-option apply to --executor slurm, not {self.executor!r}")


@dataclass
class FanoutSummary:
    suite: str
    jobs: list[dict[str, Any]] = field(default_factory=list)  # one per shard: id, shard, state, counts, log
    planned: int = 0
    failed_jobs: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    report: Path | None = None
    tidy: Path | None = None
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed_jobs and not self.failed_runs


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--executor needs the optional package submitit: pip install 'maccap-bench[slurm]' "
                        "(or pip install submitit)") from None
    return submitit


def run_shard(suite: Suite, shard: tuple[int, int], results_dir: str, work_dir: str, cwd: str,
              device: str | None, skip_existing: bool, tasks_filter: list[str] | None,
              data_dirs: dict[str, str]) -> dict[str, Any]:
    """The body of one job (pickled by submitit): run one shard of the suite, return its counts."""
    os.chdir(cwd)  # relative data directories in the suite mean what they meant where it was submitted
    s = run_suite(suite, results_dir, results_dir, work_dir, skip_existing=skip_existing, progress=False,
                  tasks_filter=tasks_filter, shard=shard, device=device,
                  data_dirs={k: Path(v) for k, v in data_dirs.items()}, report=False)
    return {"ok": len(s.ok), "skipped": len(s.skipped), "failed": list(s.failed), "wall_s": s.wall_s}


def n_jobs(suite: Suite, requested: int | None, planned: int) -> int:
    """Shard count: as requested, by default one per (backbone, train seed) chain; never more than runs."""
    if requested is None:
        requested = len({(b, s.train) for e in suite.tasks for b in e.backbones for s in suite.seeds})
    return max(1, min(requested, planned))


def _executor(submitit: Any, cfg: FanoutConfig, folder: Path, name: str, n: int) -> Any:
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cfg.executor)
    params: dict[str, Any] = {"name": name, "timeout_min": cfg.timeout_min, "gpus_per_node": cfg.gpus_per_job,
                              "cpus_per_task": cfg.cpus_per_job, "tasks_per_node": 1, "nodes": 1}
    if cfg.executor == "slurm":
        params.update(slurm_partition=cfg.partition, slurm_array_parallelism=n,
                      slurm_additional_parameters=dict(cfg.slurm_options) or None)
    ex.update_parameters(**params)
    return ex


def submit_suite(suite: Suite, results_dir: str | Path, reports_dir: str | Path, work_dir: str | Path,
                 config: FanoutConfig, skip_existing: bool = True, tasks_filter: list[str] | None = None,
                 device: str | None = None, data_dirs: dict[str, Path] | None = None,
                 report: bool = True, progress: bool = True) -> FanoutSummary:
    """Submit one job per shard with submitit, wait for all of them, then aggregate and report."""
    submitit = require_submitit()
    if config.executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: `sbatch` is not on PATH; submit from a Slurm login node "
                        "(or use --executor local to run the shard jobs on this machine)")
    t0 = time.perf_counter()
    results_dir, work_dir = Path(results_dir).resolve(), Path(work_dir).resolve()
    runs = plan_suite(suite, results_dir, tasks_filter, None, skip_existing)
    summary = FanoutSummary(suite=suite.name, planned=len(runs))
    n = n_jobs(suite, config.jobs, len(runs))
    # shards that still have work (a rerun after a partial failure submits only those)
    shards = [(i, n) for i in range(n) if any(not r.done for r in plan_suite(suite, results_dir, tasks_filter, (i, n),
                                                                               skip_existing))]
    folder = Path(config.folder) if config.folder is not None else work_dir / "submitit"
    if shards:
        ex = _executor(submitit, config, folder, f"maccap-{suite.name}", len(shards))
        k = len(shards)
        jobs = ex.map_array(run_shard, [suite] * k, shards, [str(results_dir)] * k, [str(work_dir)] * k,
                            [os.getcwd()] * k, [device] * k, [skip_existing] * k, [tasks_filter] * k,
                            [{n_: str(p) for n_, p in (data_dirs or {}).items()}] * k)
        log.info("submitted %d shard job(s) of suite %s to %s (logs in %s)", k, suite.name, config.executor, folder)
        for shard, job in zip(shards, jobs):
            summary.jobs.append(_collect(job, shard))
    for j in summary.jobs:
        if j["state"] != "done":
            summary.failed_jobs.append(j["job_id"])
        summary.failed_runs += j.get("failed", [])
    if not summary.failed_jobs:  # every shard finished: the store holds the whole suite
        summary.tidy, summary.report = summarize_suite(suite, results_dir, reports_dir, report, progress)
    summary.wall_s = round(time.perf_counter() - t0, 3)
    return summary


def _collect(job: Any, shard: tuple[int, int]) -> dict[str, Any]:
    """Wait for one job; a crashed job (node lost, timeout, exception) is reported with its log."""
    info: dict[str, Any] = {"job_id": str(job.job_id), "shard": f"{shard[0]}/{shard[1]}"}
    try:
        info.update(job.result(), state="done")
    except Exception as e:  # noqa: BLE001 - submitit's UncompletedJobError/FailedJobError or the job's own error
        info.update(state="failed", error=f"{type(e).__name__}: {str(e)[:500]}")
        log.error("shard job %s (%s) failed: %s", info["job_id"], info["shard"], info["error"])
    paths = getattr(job, "paths", None)
    info["log"] = str(paths.stderr) if paths is not None else None
    return info
