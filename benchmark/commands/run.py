"""`maccap-bench run [SUITE]`: run a whole suite, resumably, and leave tables, figures and a report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from benchmark.runner import format_plan, parse_shard, plan_suite, resolve_jobs, run_suite
from benchmark.suite import load_suite
from maccap.errors import UserError

if TYPE_CHECKING:
    from benchmark.fanout import FanoutSummary

EXECUTOR_CHOICES = ("inline", "slurm", "local", "debug")


def _data_overrides(values: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data {v!r}: expected NAME=PATH such as coco=/data/coco")
        out[name] = Path(path)
    return out


def _slurm_options(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-option {v!r}: expected KEY=VALUE such as account=myproject")
        out[key] = val
    return out


def set_option(fn):
    """--set KEY=VALUE, shared by `run` and `validate`."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Edit the suite before it runs (repeatable), e.g. backbones=[qs-rn], "
                             "tasks.caption.params.lm=tiny-gpt2, tasks.*.params.batch_size=8.")(fn)


@click.command("run")
@click.argument("suite", default="quickstart")
@set_option
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--work-dir", default="work", show_default=True, type=click.Path(file_okay=False),
              help="Shared artefacts: world, caches, checkpoints.")
@click.option("--dry-run", is_flag=True, help="Print the plan (run ids, skip/todo) and exit.")
@click.option("--skip-existing/--no-skip-existing", default=True, show_default=True,
              help="Reuse finished runs with the same config hash.")
@click.option("--stop-on-error", is_flag=True, help="Stop at the first failed run (inline executor).")
@click.option("--shard", default=None, metavar="I/N", help="Run only shard I of N (Slurm arrays); no report.")
@click.option("--only", "only", multiple=True, metavar="TASK", help="Run only these task entries (repeatable).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the suite's).")
@click.option("--data", "data", multiple=True, metavar="NAME=PATH", help="Data directory of a dataset (repeatable).")
@click.option("--jobs", default="auto", show_default=True, metavar="N|auto",
              help="inline: worker processes here (auto: one per CPU core, at most 4; 1 on a GPU); "
                   "other executors: shard jobs to submit (auto: one per backbone x train seed).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--executor", type=click.Choice(EXECUTOR_CHOICES), default="inline", show_default=True,
              help="inline: run here; slurm/local/debug: one submitit job per shard, then aggregate and report.")
@click.option("--timeout-min", type=int, default=None, help="Wall-clock limit of one job in minutes [720].")
@click.option("--gpus-per-job", type=int, default=None, help="GPUs of one job [0].")
@click.option("--cpus-per-job", type=int, default=None, help="CPU cores of one job (default: the cluster's).")
@click.option("--slurm-partition", default=None, help="Slurm partition of the jobs.")
@click.option("--slurm-option", "slurm_option", multiple=True, metavar="KEY=VALUE",
              help="Extra sbatch option (repeatable), e.g. account=proj, qos=normal, constraint=a100.")
@click.option("--submitit-dir", default=None, type=click.Path(file_okay=False),
              help="submitit's job files and logs (default: WORK_DIR/submitit).")
def command(suite: str, overrides: tuple[str, ...], results_dir: str, reports_dir: str, work_dir: str, dry_run: bool,
            skip_existing: bool, stop_on_error: bool, shard: str | None, only: tuple[str, ...], device: str | None,
            data: tuple[str, ...], no_progress: bool, executor: str, jobs: str, timeout_min: int | None,
            gpus_per_job: int | None, cpus_per_job: int | None, slurm_partition: str | None,
            slurm_option: tuple[str, ...], submitit_dir: str | None) -> None:
    """Run SUITE (a shipped name or a YAML path; default: quickstart)."""
    s = load_suite(suite, overrides=overrides)
    shard_t = parse_shard(shard)
    submit_opts = {"--timeout-min": timeout_min, "--gpus-per-job": gpus_per_job,
                   "--cpus-per-job": cpus_per_job, "--slurm-partition": slurm_partition,
                   "--slurm-option": slurm_option or None, "--submitit-dir": submitit_dir}
    if executor == "inline":
        given = [k for k, v in submit_opts.items() if v is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only with --executor slurm|local|debug (the runs are submitted as jobs)")
    else:
        if shard_t is not None:
            raise UserError(f"--shard with --executor {executor}: the executor makes the shards itself (use --jobs N)")
        if stop_on_error:
            raise UserError(f"--stop-on-error with --executor {executor}: shard jobs run independently; "
                            "failed runs are listed at the end")
    if dry_run:
        click.echo(format_plan(s, plan_suite(s, results_dir, list(only) or None, shard_t, skip_existing)))
        return
    if executor != "inline":
        from benchmark.fanout import FanoutConfig, submit_suite

        n_jobs = None if jobs == "auto" else resolve_jobs(jobs, s, device)
        cfg = FanoutConfig(executor=executor, jobs=n_jobs, folder=Path(submitit_dir) if submitit_dir else None,
                           timeout_min=720 if timeout_min is None else timeout_min, gpus_per_job=gpus_per_job or 0,
                           cpus_per_job=cpus_per_job, partition=slurm_partition,
                           slurm_options=_slurm_options(slurm_option))
        _echo_fanout(submit_suite(s, results_dir, reports_dir, work_dir, cfg, skip_existing=skip_existing,
                                  tasks_filter=list(only) or None, device=device, data_dirs=_data_overrides(data),
                                  progress=not no_progress), executor)
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


def _echo_fanout(summary: FanoutSummary, executor: str) -> None:
    """One line per shard job, the failed runs, the report; exit 1 when a job did not finish."""
    click.echo(f"suite {summary.suite}: {summary.planned} runs in {len(summary.jobs)} shard job(s) on {executor} "
               f"({summary.wall_s:.1f} s)")
    for j in summary.jobs:
        if j["state"] == "done":
            click.echo(f"  job {j['job_id']} shard {j['shard']}: done: {j['ok']} ok, {j['skipped']} reused, "
                       f"{len(j['failed'])} failed")
        else:
            click.echo(f"  job {j['job_id']} shard {j['shard']}: {j['state']}: {j['error']} (log {j['log']})")
    for rid in summary.failed_runs:
        click.echo(f"  failed: {rid} (see its result.json 'error')")
    if summary.report:
        click.echo(f"report: {summary.report}")
    if summary.failed_jobs:
        click.echo(f"{len(summary.failed_jobs)} job(s) did not finish; rerun the same command to resume "
                   "(finished runs are kept), no report yet", err=True)
        sys.exit(1)
