"""`maccap-bench aggregate`: every result.json into one tidy CSV (+ parquet, summary, paired)."""

from __future__ import annotations

import click

from analysis.aggregate import aggregate


@click.command("aggregate")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--suite", default=None, help="Only this suite's results.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Tidy CSV path (default: RESULTS/[SUITE/]tidy.csv); summary and paired CSVs go beside it.")
@click.option("--resamples", default=10_000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
def command(results_dir: str, suite: str | None, out: str | None, resamples: int, seed: int) -> None:
    """Collect result files into tidy, summary (mean, sd, n, 95% CI) and paired-comparison tables."""
    res = aggregate(results_dir, out=out, suite=suite, n_resamples=resamples, seed=seed)
    click.echo(f"{len(res.tidy)} rows from {res.tidy['run_id'].nunique()} runs")
    for kind, path in res.paths.items():
        click.echo(f"{kind}: {path}")
    for msg in res.invalid:
        click.echo(f"skipped unreadable result: {msg}", err=True)
