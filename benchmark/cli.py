"""The `maccap-bench` command line: a thin click layer over library functions."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from maccap.errors import UserError

RESUME_ADVICE = "rerun the same command to resume (finished runs are kept)"

# Each module in benchmark/commands defines one click command (or group) named `command`.
COMMAND_MODULES = ("ls", "env", "validate", "world", "clip_train", "gap", "subregion", "train", "eval",
                   "vqa", "run", "aggregate", "report", "data", "perf")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Reproduce, measure and explain text-only zero-shot captioning (MacCap and baselines)."""
    # Libraries that log on the root logger (open_clip) stay at WARNING; this project's packages say more.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for pkg in ("maccap", "analysis", "benchmark"):
        logging.getLogger(pkg).setLevel(logging.DEBUG if verbose else logging.INFO)


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"benchmark.commands.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"benchmark.commands.{_name}":
            raise
        continue
    cli.add_command(_mod.command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:  # click turns a KeyboardInterrupt (a second Ctrl-C) into Abort
        click.echo(f"interrupted; {RESUME_ADVICE}", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except KeyboardInterrupt:
        click.echo(f"interrupted; {RESUME_ADVICE}", err=True)
        sys.exit(130)
    except SystemExit:
        raise


if __name__ == "__main__":  # `python -m benchmark.cli` (and `torchrun -m benchmark.cli train ...`)
    main()
