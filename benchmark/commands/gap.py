"""`maccap-bench gap`: Gaussian fit of the paired image-text difference for one backbone and dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from maccap.errors import UserError


def resolve_dataset(dataset: str, work_dir: Path, progress: bool = True) -> tuple[Path, str]:
    """'quickstart' -> the generated world (created once under work_dir); otherwise a data directory."""
    if dataset == "quickstart":
        from maccap.world import ensure_world

        world = work_dir / "quickstart"
        ensure_world(world, progress=progress)
        return world, "quickstart"
    path = Path(dataset)
    if not path.is_dir():
        raise UserError(f"--dataset {dataset!r}: expected 'quickstart' or a data directory (with captions_<split>.json)")
    return path, path.name


def run_single(task: str, backbone: str, dataset: str, seed: int, results_dir: str | Path,
               params: dict[str, Any], device: str = "cpu", work_dir: str | Path | None = None,
               progress: bool = True) -> Path:
    """Run one task outside a suite and write result.json through the result store; return its path."""
    from benchmark.store import RunKey, build_result, write_run
    from benchmark.tasks import RunContext, load_tasks
    from maccap.seed import seed_everything

    results_dir = Path(results_dir)
    work = Path(work_dir) if work_dir is not None else results_dir / "work"
    data_dir, name = resolve_dataset(dataset, work, progress)
    key = RunKey(suite="cli", task=task, method="none", backbone=backbone, seed=seed)
    run_dir = key.dir(results_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    ctx = RunContext(key=key, run_dir=run_dir, work_dir=work, data_dir=data_dir, dataset=name, params=params,
                     train_seed=seed, eval_seed=seed, device=device, progress=progress)
    t0 = time.perf_counter()
    out = load_tasks().get(task)(ctx)
    timings = {"total_s": time.perf_counter() - t0, **out.extra.get("timings_detail", {})}
    result = build_result(key, name, {"task": task, "params": params, "data_dir": str(data_dir)},
                          {"train": seed, "eval": seed}, out, timings)
    return write_run(run_dir, result, out.items)


def common_options(f):
    """Options shared by `gap` and `subregion`."""
    opts = [
        click.option("--backbone", required=True, help="qs-rn, qs-vit, ARCH/TAG or ARCH@/path/to/weights"),
        click.option("--dataset", default="quickstart", show_default=True, help="'quickstart' or a data directory"),
        click.option("--seed", default=0, show_default=True, type=int, help="evaluation seed (subsamples, controls)"),
        click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False)),
        click.option("--work-dir", default=None, type=click.Path(file_okay=False),
                     help="shared artefacts (world, feature cache); default RESULTS_DIR/work"),
        click.option("--split", default="test", show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--no-figures", is_flag=True, help="skip the PNG/SVG figures"),
        click.option("--no-progress", is_flag=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("gap")
@common_options
@click.option("--one-caption-per-image", is_flag=True, help="one random caption per image (independent pairs)")
@click.option("--reservoir-size", default=5000, show_default=True, type=int,
              help="raw-sample subsample for Shapiro-Wilk, Anderson-Darling, Mardia and the plots")
def command(backbone: str, dataset: str, seed: int, results_dir: str, work_dir: str | None, split: str,
            device: str, no_figures: bool, no_progress: bool, one_caption_per_image: bool, reservoir_size: int) -> None:
    """Fit d = v - t as a Gaussian (gap, zero-mean and normality tests, noise model) plus retrieval recall."""
    if reservoir_size < 20:
        raise UserError(f"--reservoir-size {reservoir_size}: expected at least 20")
    params = {"split": split, "one_caption_per_image": one_caption_per_image, "reservoir_size": reservoir_size,
              "figures": not no_figures}
    path = run_single("gap", backbone, dataset, seed, results_dir, params, device, work_dir, not no_progress)
    click.echo(str(path))
