"""`maccap-bench env`: the versions and devices a result depends on."""

from __future__ import annotations

import click

from benchmark.environment import describe_environment


@click.command("env")
def command() -> None:
    """Print versions of python, torch, open_clip, transformers, pycocoevalcap, java, and the device."""
    for key, value in describe_environment().items():
        click.echo(f"{key}: {value}")
