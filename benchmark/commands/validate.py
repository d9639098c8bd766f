"""`maccap-bench validate`: check a data directory and/or a suite, and list what a suite still needs."""

from __future__ import annotations

from pathlib import Path

import click

from benchmark.commands.run import set_option
from maccap.errors import UserError


@click.command("validate")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="A data directory to check.")
@click.option("--suite", help="A shipped suite name or a suite YAML file.")
@set_option
def command(data_dir: Path | None, suite: str | None, overrides: tuple[str, ...]) -> None:
    """Say precisely what is wrong or missing; exit code 2 when anything is."""
    if data_dir is None and suite is None:
        raise click.UsageError("give --data DIR and/or --suite NAME")
    if overrides and suite is None:
        raise UserError("--set edits a suite: give --suite NAME as well")
    problems = 0
    if data_dir is not None:
        from maccap.data import validate_data_dir

        if not data_dir.is_dir():
            raise UserError(f"--data {data_dir}: not a directory")
        found = validate_data_dir(data_dir)
        for p in found:
            click.echo(f"[problem] {p}")
        click.echo(f"data {data_dir}: {'ok' if not found else f'{len(found)} problem(s)'}")
        problems += len(found)
    if suite is not None:
        from benchmark.requirements import suite_requirements
        from benchmark.suite import load_suite

        s = load_suite(suite, overrides=overrides)
        click.echo(f"suite {s.name} (version {s.version}): valid; {len(s.tasks)} task entries, "
                   f"{len(s.backbones)} backbone(s), {len(s.seeds)} seed(s)")
        for r in suite_requirements(s):
            click.echo(r.line())
            problems += not r.ok
    if problems:
        raise UserError(f"{problems} problem(s) found (listed above)")
