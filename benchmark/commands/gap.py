"""`maccap-bench gap`: Gaussian fit of the paired image-text difference for one backbone and dataset."""

from __future__ import annotations

import click

from benchmark.single import run_single
from maccap.errors import UserError


def common_options(f):
    """Options shared by `gap` and `subregion`."""
    opts = [
        click.option("--backbone", required=True, help="qs-rn, qs-vit, ARCH/TAG or ARCH@/path/to/weights"),
        click.option("--dataset", default="quickstart", show_default=True, help="'quickstart' or a data directory"),
        click.option("--seed", default=0, show_default=True, type=int, help="evaluation seed (subsamples, controls)"),
        click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False)),
        click.option("--work-dir", default="work", show_default=True, type=click.Path(file_okay=False),
                     help="shared artefacts (world, feature cache), as for `run`"),
        click.option("--split", default="test", show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--no-figures", is_flag=True, help="skip the PNG/SVG figures"),
        click.option("--no-progress", is_flag=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("gap")
@common_options
@click.option("--one-caption-per-image", is_flag=True, help="one random caption per image (independent pairs)")
@click.option("--reservoir-size", default=5000, show_default=True, type=int,
              help="raw-sample subsample for Shapiro-Wilk, Anderson-Darling, Mardia and the plots")
def command(backbone: str, dataset: str, seed: int, results_dir: str, work_dir: str, split: str,
            device: str, no_figures: bool, no_progress: bool, one_caption_per_image: bool, reservoir_size: int) -> None:
    """Fit d = v - t as a Gaussian (gap, zero-mean and normality tests, noise model) plus retrieval recall."""
    if reservoir_size < 20:
        raise UserError(f"--reservoir-size {reservoir_size}: expected at least 20")
    params = {"split": split, "one_caption_per_image": one_caption_per_image, "reservoir_size": reservoir_size,
              "figures": not no_figures}
    path, _ = run_single("gap", "none", backbone, dataset, params, results_dir, work_dir, seed, seed, device,
                         not no_progress)
    click.echo(str(path))
