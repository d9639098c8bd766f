"""`maccap-bench perf`: run the performance benchmarks of every area and write one JSON."""

from __future__ import annotations

import json

import click

from benchmark.perf import collect, list_areas


@click.command("perf")
@click.option("--quick", is_flag=True, help="Smaller sizes (a minute or so).")
@click.option("--out", default="perf.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--area", "areas", multiple=True, help=f"Only these areas (repeatable; known: {', '.join(list_areas())}).")
@click.option("--no-progress", is_flag=True)
def command(quick: bool, out: str, areas: tuple[str, ...], no_progress: bool) -> None:
    """Throughput figures and ratios of every benchmark/perf/<area>.py."""
    report = collect(quick=quick, out=out, areas=list(areas) or None, progress=not no_progress)
    for name, area in report["areas"].items():
        click.echo(f"{name}: {area['status']} ({area['wall_s']:.1f} s)")
        if area["status"] == "ok":
            click.echo("  " + json.dumps(area["figures"], sort_keys=True)[:400])
    click.echo(f"written: {out}")
