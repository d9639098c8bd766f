"""Run a suite: expand it into runs, execute them in order, record every outcome, then report.

Order is the suite's task order, then method, backbone and seed, so that artefacts a later task
needs (world, CLIP weights, feature caches, trained captioners) are built once by an earlier one and
found again through the caches under work_dir. A run whose result.json is complete with the same
config hash is skipped, which makes an interrupted suite resumable by running the same command.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout
from tqdm import tqdm

from benchmark.store import RunKey, TaskOutput, build_result, is_complete, slug, write_run
from benchmark.suite import SeedPair, Suite, TaskSpec
from benchmark.tasks import RunContext, load_tasks
from maccap import faults
from maccap.errors import UserError
from maccap.io import hash_config, sweep_stale_temps
from maccap.workers import cpu_cores, die_with_parent

log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    key: RunKey
    entry: TaskSpec
    method: str
    backbone: str
    seeds: SeedPair
    config: dict[str, Any]
    config_hash: str
    run_dir: Path
    done: bool = False  # complete result with the same config hash exists

    @property
    def run_id(self) -> str:
        return self.key.run_id


@dataclass
class RunSummary:
    suite: str
    planned: int = 0
    skipped: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # left over after an interrupt or stop
    interrupted: bool = False
    stopped_on_error: bool = False
    dry_run: bool = False
    report: Path | None = None
    tidy: Path | None = None
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.stopped_on_error and not self.failed and not self.not_run


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' with 0 <= i < n -> (i, n)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n such as 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: expected 0 <= i < n")
    return i, n


def plan_suite(suite: Suite, results_dir: str | Path, tasks_filter: list[str] | None = None,
               shard: tuple[int, int] | None = None, skip_existing: bool = True) -> list[PlannedRun]:
    """Every run of the suite in execution order, with `done` set for reusable results."""
    results_dir = Path(results_dir)
    entries = list(suite.tasks)
    if tasks_filter:
        known = {e.name for e in entries} | {e.task for e in entries}
        for name in tasks_filter:
            if name not in known:
                raise UserError(f"--only {name!r}: suite {suite.name!r} has no such task (has: {', '.join(sorted(known))})")
        entries = [e for e in entries if e.name in tasks_filter or e.task in tasks_filter]
    runs: list[PlannedRun] = []
    for entry in entries:
        for method in entry.methods:
            for backbone in entry.backbones:
                for seeds in entry.seed_pairs(suite.seeds):
                    key = RunKey(suite.name, entry.name, method, backbone, seeds.train)
                    config = suite.run_config(entry, method, backbone, seeds)
                    chash = hash_config(config)
                    run_dir = key.dir(results_dir)
                    runs.append(PlannedRun(key, entry, method, backbone, seeds, config, chash, run_dir,
                                           done=skip_existing and is_complete(run_dir, chash)))
    return _shard(runs, shard)


def _shard(runs: list[PlannedRun], shard: tuple[int, int] | None) -> list[PlannedRun]:
    """Deterministic split. Whole (backbone, train seed) chains go to one shard when there are at
    least as many chains as shards, so a shard builds the artefacts its own later runs reuse."""
    if shard is None:
        return runs
    i, n = shard
    groups: list[tuple[str, int]] = []
    for r in runs:
        g = (r.backbone, r.seeds.train)
        if g not in groups:
            groups.append(g)
    if len(groups) >= n:
        mine = {g for k, g in enumerate(groups) if k % n == i}
        return [r for r in runs if (r.backbone, r.seeds.train) in mine]
    return [r for k, r in enumerate(runs) if k % n == i]


def format_plan(suite: Suite, runs: list[PlannedRun]) -> str:
    todo = sum(not r.done for r in runs)
    lines = [f"suite {suite.name} (version {suite.version}): {len(runs)} runs, {len(runs) - todo} done, {todo} to do"]
    lines += [f"  [{'skip' if r.done else 'todo'}] {r.run_id}  config {r.config_hash}" for r in runs]
    return "\n".join(lines)


class _StopFlag:
    """First Ctrl-C asks to stop after the current run; the second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt received: stopping after the current run (press Ctrl-C again to abort now)")

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _DataDirs:
    """Dataset directories, built lazily: the quickstart world is generated on first need."""

    def __init__(self, work_dir: Path, overrides: dict[str, Path], progress: bool = False) -> None:
        self.work_dir = work_dir
        self.progress = progress
        self.overrides = overrides
        self._cache: dict[str, Path] = {}
        self._errors: dict[str, Exception] = {}  # a world that failed once is not retried for every run

    def get(self, entry: TaskSpec) -> Path:
        ds = entry.dataset
        if ds.name in self.overrides:
            return Path(self.overrides[ds.name])
        if not ds.is_quickstart:
            return Path(ds.data_dir or f"data/{ds.name}")
        key = f"{ds.world['preset']}-seed{ds.world['seed']}"
        if key in self._errors:
            raise self._errors[key]
        if key not in self._cache:
            try:
                self._cache[key] = ensure_quickstart_world(self.work_dir / "worlds" / key, ds.world, self.progress)
            except Exception as e:
                self._errors[key] = e
                raise
        return self._cache[key]


def ensure_quickstart_world(out_dir: Path, world: dict[str, Any], progress: bool = False) -> Path:
    """Build (or reuse) the quickstart world; returns its data directory."""
    try:
        from maccap.world import ensure_world
        from maccap.world.config import WorldConfig
    except ImportError as e:
        raise UserError(f"the quickstart world generator is not available ({e}); cannot build {out_dir}") from None

    log.info("ensuring quickstart world (preset %s, seed %s) in %s", world["preset"], world["seed"], out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):  # sweep workers and ranks share work_dir
        res = ensure_world(out_dir, world["seed"], WorldConfig.preset(world["preset"]), progress=progress)
    if isinstance(res, (str, Path)) and Path(res).is_dir():
        return Path(res)
    return out_dir  # ensure_world returns the manifest path; the data directory is out_dir


def execute_run(run: PlannedRun, suite: Suite, data_dir: Path | Callable[[], Path], work_dir: Path, device: str,
                progress: bool) -> dict[str, Any]:
    """Run one task and write its result (ok or failed); returns the result written.

    `data_dir` may be a callable so that a failure to build the dataset (the quickstart world) is
    recorded against the run like any other failure.
    """
    t0 = time.perf_counter()
    out, status, error = TaskOutput(), "ok", None
    resolved: Path | None = data_dir if isinstance(data_dir, Path) else None
    try:
        tasks = load_tasks()
        if resolved is None:
            resolved = Path(data_dir())  # type: ignore[operator]
        if run.entry.task not in tasks:
            raise UserError(f"task {run.entry.task!r} is not available (module benchmark/tasks/{run.entry.task}.py "
                            f"missing or failed to register); known: {', '.join(tasks.names())}")
        fn = tasks.get(run.entry.task)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(key=run.key, run_dir=run.run_dir, work_dir=work_dir, data_dir=resolved,
                         dataset=run.entry.dataset.name, params=copy.deepcopy(run.config["params"]),
                         train_seed=run.seeds.train, eval_seed=run.seeds.eval, device=device, progress=progress)
        out = fn(ctx)
        if not isinstance(out, TaskOutput):
            raise TypeError(f"task {run.entry.task!r} returned {type(out).__name__}, expected TaskOutput")
    except Exception as e:  # noqa: BLE001 - every failure is recorded and the suite goes on
        status = "failed"
        error = f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}"
        out = TaskOutput()
        log.error("run %s failed: %s: %s", run.run_id, type(e).__name__, e)
    timings = {"total_s": round(time.perf_counter() - t0, 4)}
    runner = {"data_dir": str(resolved) if resolved else None, "work_dir": str(work_dir), "device": device,
              "suite_version": suite.version, "dataset_label": run.entry.dataset.display,
              "suite_overrides": list(suite.overrides)}
    seeds = {"train": run.seeds.train, "eval": run.seeds.eval}
    result = build_result(run.key, run.entry.dataset.display, run.config, seeds, out, timings, status=status, error=error,
                          runner=runner)
    try:
        write_run(run.run_dir, result, out.items if status == "ok" else None)
    except (TypeError, ValueError, UserError) as e:  # e.g. a task returned something JSON cannot hold
        log.error("run %s: cannot write its result: %s", run.run_id, e)
        error = f"{type(e).__name__}: cannot write the task's output: {e}\n\n{traceback.format_exc()}"
        result = build_result(run.key, run.entry.dataset.display, run.config, seeds, TaskOutput(), timings,
                              status="failed", error=error, runner=runner)
        write_run(run.run_dir, result)
    return result


def _lock(results_dir: Path, suite: Suite, shard: tuple[int, int] | None) -> FileLock:
    suffix = f"-shard{shard[0]}of{shard[1]}" if shard else ""
    path = results_dir / slug(suite.name) / f".runner{suffix}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create results directory {path.parent}: {e.strerror or e}") from None
    return FileLock(str(path), timeout=0)


def resolve_jobs(jobs: int | str, suite: Suite, device: str) -> int:
    """Worker processes for `jobs` ("auto": one per CPU core on the CPU, at most 4; one on a GPU)."""
    if jobs != "auto":
        try:
            n = int(jobs)
        except (TypeError, ValueError):
            raise UserError(f"--jobs {jobs}: expected a positive integer or 'auto'") from None
        if n < 1:
            raise UserError(f"--jobs {jobs}: expected a positive integer or 'auto'")
        return n
    if resolve_device(device or suite.device) != "cpu":
        return 1
    return max(1, min(4, cpu_cores()))


def run_suite(suite: Suite, results_dir: str | Path, reports_dir: str | Path, work_dir: str | Path,
              skip_existing: bool = True, stop_on_error: bool = False, dry_run: bool = False,
              progress: bool = True, tasks_filter: list[str] | None = None, shard: tuple[int, int] | None = None,
              device: str | None = None, data_dirs: dict[str, Path] | None = None,
              report: bool = True, jobs: int = 1) -> RunSummary:
    """Run every planned run of `suite`; aggregate and (if `report`) render the report at the end unless sharded.

    `jobs` > 1 runs the runs in that many worker processes (each with an equal share of the CPU
    threads, `_execute_parallel`) and reports once they are all done.
    """
    t0 = time.perf_counter()
    results_dir, reports_dir, work_dir = Path(results_dir), Path(reports_dir), Path(work_dir)
    runs = plan_suite(suite, results_dir, tasks_filter, shard, skip_existing)
    summary = RunSummary(suite=suite.name, planned=len(runs), dry_run=dry_run)
    summary.skipped = [r.run_id for r in runs if r.done]
    if dry_run:
        log.info("%s", format_plan(suite, runs))
        return summary
    lock = _lock(results_dir, suite, shard)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"another runner is writing {results_dir / slug(suite.name)} (lock {lock.lock_file} is held); "
                        "wait for it to finish or use a different --results-dir") from None
    try:
        _sweep(results_dir / slug(suite.name), reports_dir / slug(suite.name), work_dir)
        dev = resolve_device(device or suite.device)
        if jobs > 1 and shard is None and any(not r.done for r in runs):
            _execute_parallel(suite, runs, summary, work_dir, data_dirs or {}, dev, stop_on_error, progress, jobs)
        else:
            _execute(suite, runs, summary, work_dir, data_dirs or {}, dev, stop_on_error, progress)
    finally:
        lock.release()
    if summary.interrupted:
        log.warning("stopped: %d runs finished, %d left; run the same command again to resume "
                    "(finished runs are kept and skipped)", len(summary.ok) + len(summary.failed), len(summary.not_run))
    elif not summary.stopped_on_error and shard is None:
        summary.tidy, summary.report = summarize_suite(suite, results_dir, reports_dir, report, progress)
    summary.wall_s = round(time.perf_counter() - t0, 3)
    return summary


def summarize_suite(suite: Suite, results_dir: Path, reports_dir: str | Path, report: bool = True,
                    progress: bool = False) -> tuple[Path | None, Path | None]:
    """Aggregate the store's runs of `suite` (tidy CSV) and render the report: (csv path, report path)."""
    from analysis.aggregate import aggregate
    from analysis.report import render_report

    agg = aggregate(results_dir, suite=suite.name, progress=progress)
    html = render_report(results_dir, Path(reports_dir), suite.name, agg=agg) if report else None
    return agg.paths.get("csv"), html


def _sweep(*roots: Path) -> None:
    """Remove temp files that killed processes left in the suite's directories (never read, only litter)."""
    for root in roots:
        gone = sweep_stale_temps(root)
        if gone:
            log.info("removed %d temp file(s) left by killed runs under %s", len(gone), root)


def _execute(suite: Suite, runs: list[PlannedRun], summary: RunSummary, work_dir: Path,
             overrides: dict[str, Path], device: str, stop_on_error: bool, progress: bool) -> None:
    todo = [r for r in runs if not r.done]
    data = _DataDirs(work_dir, overrides, progress)
    with _StopFlag() as stop, tqdm(total=len(todo), desc=f"suite {suite.name}", unit="run",
                                   disable=not progress) as bar:
        for k, run in enumerate(todo):
            if stop.requested:
                summary.interrupted = True
                summary.not_run = [r.run_id for r in todo[k:]]
                return
            bar.set_postfix_str(run.run_id, refresh=False)
            result = execute_run(run, suite, lambda e=run.entry: data.get(e), work_dir, device, progress)
            faults.checkpoint("run-done")
            (summary.ok if result["status"] == "ok" else summary.failed).append(run.run_id)
            bar.update(1)
            if result["status"] != "ok" and stop_on_error:
                summary.stopped_on_error = True
                summary.not_run = [r.run_id for r in todo[k + 1:]]
                return
        if stop.requested:
            summary.interrupted = bool(summary.not_run)



# ----------------------------------------------------------------------------------------------
# several worker processes on one machine

PACKAGES = ("maccap", "analysis", "benchmark")  # whose log level the workers take from the runner


def _init_worker(threads: int, parent_pid: int, log_level: int) -> None:
    """A fresh worker process: its share of the threads, the runner's log level, Ctrl-C left to the runner."""
    import torch

    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops handing out runs; the current one finishes
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format=f"worker {os.getpid()} %(levelname)s %(name)s: %(message)s")
    for pkg in PACKAGES:
        logging.getLogger(pkg).setLevel(log_level)


_WORKER_DATA: dict[tuple, _DataDirs] = {}


def _run_in_worker(run: PlannedRun, suite: Suite, work_dir: Path, overrides: dict[str, Path], device: str) -> str:
    """One run in a worker process (which keeps its loaded LM and METEOR between runs); its status."""
    memo = (str(work_dir), tuple(sorted(overrides.items())))
    data = _WORKER_DATA.setdefault(memo, _DataDirs(work_dir, overrides))
    result = execute_run(run, suite, lambda: data.get(run.entry), work_dir, device, progress=False)
    faults.checkpoint("run-done")
    return str(result["status"])


def run_artefacts(run: PlannedRun) -> set[str]:
    """Keys of the shared artefacts `run` may build (benchmark.tasks.ARTEFACTS)."""
    from benchmark.tasks import shared_artefacts

    return shared_artefacts(run.entry.task, run.entry.dataset.display, run.method, run.backbone, run.seeds.train,
                            run.config["params"])


def next_run(pending: list[PlannedRun], keys: dict[str, set[str]], held: set[str], built: set[str]
             ) -> PlannedRun | None:
    """The run to start now, or None (wait for one to finish).

    Never one that needs an artefact another worker is building (it would wait on that lock); among
    the rest, first the one that builds the artefact most pending runs need (the LM before anything
    else), then plan order. Which worker does what changes no number: every artefact is keyed.
    """
    demand = Counter(k for r in pending for k in keys[r.run_id] - built)
    best, best_score = None, -1
    for r in pending:
        todo = keys[r.run_id] - built
        if todo & held:
            continue
        score = max((demand[k] for k in todo), default=0)
        if score > best_score:
            best, best_score = r, score
    return best


def _execute_parallel(suite: Suite, runs: list[PlannedRun], summary: RunSummary, work_dir: Path,
                      overrides: dict[str, Path], device: str, stop_on_error: bool, progress: bool, jobs: int) -> None:
    """Runs in `jobs` worker processes, handed out one at a time by `next_run`.

    Shared inputs (worlds) are built first; every artefact a worker builds (LM, feature caches,
    captioners) is keyed and file-locked, so the scheduling only avoids idle waits. The first Ctrl-C
    stops handing out runs and lets the running ones finish.
    """
    import concurrent.futures as cf
    import multiprocessing

    data = _DataDirs(work_dir, overrides, progress)
    pending = [r for r in runs if not r.done]
    for entry in {r.entry.name: r.entry for r in pending}.values():
        try:
            data.get(entry)
        except Exception as e:  # noqa: BLE001 - the workers record it against each run
            log.error("dataset %s could not be built: %s", entry.dataset.display, e)
    keys = {r.run_id: run_artefacts(r) for r in pending}
    held: dict[str, set[str]] = {}  # run id in flight -> its keys
    built: set[str] = set()
    threads = max(1, cpu_cores() // jobs)
    level = logging.getLogger(PACKAGES[0]).getEffectiveLevel()
    ctx = multiprocessing.get_context("spawn")
    with _StopFlag() as stop, cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                                      initargs=(threads, os.getpid(), level)) as pool, \
            tqdm(total=len(pending), desc=f"suite {suite.name} ({jobs} workers)", unit="run", disable=not progress) as bar:
        futures: dict[cf.Future, PlannedRun] = {}
        halt = False
        while pending or futures:
            while not (halt or stop.requested) and pending and len(futures) < jobs:
                run = next_run(pending, keys, set().union(*held.values()) - built, built)
                if run is None:
                    break
                pending.remove(run)
                held[run.run_id] = keys[run.run_id]
                futures[pool.submit(_run_in_worker, run, suite, work_dir, overrides, device)] = run
            if not futures:
                break
            done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            for f in done:
                run = futures.pop(f)
                built |= held.pop(run.run_id)
                try:
                    status = f.result()
                except cf.process.BrokenProcessPool:  # a worker was killed: finished runs are kept
                    log.error("a worker process died (killed or out of memory) before its run finished")
                    summary.interrupted = True
                    summary.not_run = [r.run_id for r in [run, *futures.values(), *pending]]
                    return
                (summary.ok if status == "ok" else summary.failed).append(run.run_id)
                bar.set_postfix_str(run.run_id, refresh=False)
                bar.update(1)
                halt |= status != "ok" and stop_on_error
        summary.not_run = [r.run_id for r in pending]
        summary.stopped_on_error = halt and bool(pending)
        summary.interrupted = stop.requested and bool(pending)
