"""`maccap-bench report`: tables, figures and the HTML report of one suite's results."""

from __future__ import annotations

import click

from analysis.report import render_report


@click.command("report")
@click.option("--suite", required=True, help="Suite name (the results/<suite> folder).")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False))
def command(suite: str, results_dir: str, reports_dir: str) -> None:
    """Write REPORTS/SUITE/{index.html, tables/, figures/, data/}."""
    click.echo(f"report: {render_report(results_dir, reports_dir, suite)}")
