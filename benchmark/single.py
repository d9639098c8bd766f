"""Running one task outside a suite: the `gap`, `subregion`, `eval` and `vqa` commands.

The run goes through the same result store as a suite run (suite name "cli"), so its result.json has
the same schema and `aggregate`/`report` read it like any other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmark.store import RunKey, TaskOutput, build_result, write_run
from maccap.errors import UserError

QUICKSTART_WORLD = {"seed": 0, "preset": "default"}


def resolve_dataset(dataset: str, work_dir: Path, progress: bool = True) -> tuple[Path, str]:
    """'quickstart' -> the default world, in the same place a suite run builds it; else a data directory."""
    if dataset == "quickstart":
        from benchmark.runner import ensure_quickstart_world

        key = f"{QUICKSTART_WORLD['preset']}-seed{QUICKSTART_WORLD['seed']}"
        return ensure_quickstart_world(Path(work_dir) / "worlds" / key, QUICKSTART_WORLD, progress), "quickstart"
    path = Path(dataset)
    if not path.is_dir():
        raise UserError(f"--dataset {dataset!r}: expected 'quickstart' or a data directory (with captions_<split>.json)")
    return path, path.name


def make_context(task: str, method: str, backbone: str, dataset: str, work_dir: str | Path, params: dict[str, Any],
                 train_seed: int = 0, eval_seed: int = 0, device: str = "cpu", progress: bool = True,
                 results_dir: str | Path | None = None, run_name: str | None = None):
    """A RunContext for one run; its run directory lies under results_dir (or work_dir/cli-runs)."""
    from benchmark.tasks import RunContext
    from maccap.seed import check_seed

    check_seed(train_seed, "training seed")
    check_seed(eval_seed, "evaluation seed")
    work = Path(work_dir)
    data_dir, name = resolve_dataset(dataset, work, progress)
    key = RunKey(suite="cli", task=run_name or task, method=method, backbone=backbone, seed=train_seed)
    run_dir = key.dir(results_dir) if results_dir is not None else work / "cli-runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(key=key, run_dir=run_dir, work_dir=work, data_dir=data_dir, dataset=name, params=params,
                      train_seed=train_seed, eval_seed=eval_seed, device=device, progress=progress)


def run_single(task: str, method: str, backbone: str, dataset: str, params: dict[str, Any],
               results_dir: str | Path, work_dir: str | Path = "work", train_seed: int = 0,
               eval_seed: int = 0, device: str = "cpu", progress: bool = True,
               run_name: str | None = None) -> tuple[Path, TaskOutput]:
    """Run one registered task and write its result.json; return (its path, the task's output)."""
    from benchmark.tasks import load_tasks
    from maccap.seed import seed_everything

    ctx = make_context(task, method, backbone, dataset, work_dir, params, train_seed, eval_seed, device, progress,
                       results_dir, run_name)
    seed_everything(eval_seed)
    t0 = time.perf_counter()
    out = load_tasks().get(task)(ctx)
    timings = {"total_s": time.perf_counter() - t0}
    result = build_result(ctx.key, ctx.dataset, {"task": task, "params": params, "data_dir": str(ctx.data_dir)},
                          {"train": train_seed, "eval": eval_seed}, out, timings,
                          runner={"data_dir": str(ctx.data_dir), "work_dir": str(ctx.work_dir), "device": device})
    return write_run(ctx.run_dir, result, out.items), out
