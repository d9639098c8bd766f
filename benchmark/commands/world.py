"""`maccap-bench world`: generate the quickstart world."""

from __future__ import annotations

from pathlib import Path

import click

from maccap.io import read_json


@click.command("world")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Directory to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", type=click.Choice(["default", "tiny"]), default="default", show_default=True)
@click.option("--no-progress", is_flag=True)
def command(out_dir: Path, seed: int, preset: str, no_progress: bool) -> None:
    """Generate scenes, captions and VQA questions (same seed, same bytes); reuse a matching world."""
    from maccap.world import WorldConfig, ensure_world

    manifest = read_json(ensure_world(out_dir, seed, WorldConfig.preset(preset), progress=not no_progress), "manifest")
    for split, n in manifest["sizes"].items():
        click.echo(f"{split}: {n}")
    click.echo(f"manifest: {out_dir / 'manifest.json'} (hash {manifest['hash'][:16]})")
