"""`maccap-bench run [SUITE]`: run a whole suite, resumably, and leave tables, figures and a report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from benchmark.runner import format_plan, parse_shard, plan_suite, resolve_jobs, run_suite
from benchmark.suite import load_suite
from maccap.errors import UserError


def _data_overrides(values: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data {v!r}: expected NAME=PATH such as coco=/data/coco")
        out[name] = Path(path)
    return out


@click.command("run")
@click.argument("suite", default="quickstart")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--work-dir", default="work", show_default=True, type=click.Path(file_okay=False),
              help="Shared artefacts: world, caches, checkpoints.")
@click.option("--dry-run", is_flag=True, help="Print the plan (run ids, skip/todo) and exit.")
@click.option("--skip-existing/--no-skip-existing", default=True, show_default=True,
              help="Reuse finished runs with the same config hash.")
@click.option("--stop-on-error", is_flag=True, help="Stop at the first failed run.")
@click.option("--shard", default=None, metavar="I/N", help="Run only shard I of N (Slurm arrays); no report.")
@click.option("--only", "only", multiple=True, metavar="TASK", help="Run only these task entries (repeatable).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the suite's).")
@click.option("--data", "data", multiple=True, metavar="NAME=PATH", help="Data directory of a dataset (repeatable).")
@click.option("--jobs", default="auto", show_default=True, metavar="N|auto",
              help="Worker processes on this machine (auto: one per CPU core, at most 4; 1 on a GPU).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(suite: str, results_dir: str, reports_dir: str, work_dir: str, dry_run: bool, skip_existing: bool,
            stop_on_error: bool, shard: str | None, only: tuple[str, ...], device: str | None,
            data: tuple[str, ...], jobs: str, no_progress: bool) -> None:
    """Run SUITE (a shipped name or a YAML path; default: quickstart)."""
    s = load_suite(suite)
    shard_t = parse_shard(shard)
    if dry_run:
        click.echo(format_plan(s, plan_suite(s, results_dir, list(only) or None, shard_t, skip_existing)))
        return
    summary = run_suite(s, results_dir, reports_dir, work_dir, skip_existing=skip_existing,
                        stop_on_error=stop_on_error, progress=not no_progress, tasks_filter=list(only) or None,
                        shard=shard_t, device=device, data_dirs=_data_overrides(data),
                        jobs=resolve_jobs(jobs, s, device))
    click.echo(f"suite {s.name}: {summary.planned} runs: {len(summary.skipped)} reused, {len(summary.ok)} ok, "
               f"{len(summary.failed)} failed, {len(summary.not_run)} not run ({summary.wall_s:.1f} s)")
    for rid in summary.failed:
        click.echo(f"  failed: {rid} (see its result.json 'error')")
    if summary.report:
        click.echo(f"report: {summary.report}")
    if summary.interrupted:
        click.echo("interrupted; rerun the same command to resume (finished runs are kept)", err=True)
        sys.exit(130)
    if summary.stopped_on_error:
        sys.exit(1)
