"""`maccap-bench ls KIND`: one registered name per line."""

from __future__ import annotations

import click

from benchmark.catalog import CATALOG


@click.command("ls")
@click.argument("kind", type=click.Choice(sorted(CATALOG)))
def command(kind: str) -> None:
    """List registered backbones, tasks, methods, metrics or suites."""
    for name in CATALOG[kind]():
        click.echo(name)
