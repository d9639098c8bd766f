"""`maccap-bench subregion`: whole image vs subregions against own and mismatched captions."""

from __future__ import annotations

import click

from benchmark.commands.gap import common_options
from benchmark.single import run_single
from maccap.errors import UserError


@click.command("subregion")
@common_options
@click.option("--max-images", default=None, type=int, help="use the first N images of the split")
@click.option("--grid-scales", default="2,3", show_default=True, help="comma-separated grid sizes")
@click.option("--attention-k", default=10, show_default=True, type=int, help="attention-selected regions (0: none)")
@click.option("--attention-weighting", default="softmax_probs", show_default=True,
              type=click.Choice(["softmax_probs", "probs"]))
@click.option("--batch-size", default=64, show_default=True, type=int)
def command(backbone: str, dataset: str, seed: int, results_dir: str, work_dir: str, split: str,
            device: str, no_figures: bool, no_progress: bool, max_images: int | None, grid_scales: str,
            attention_k: int, attention_weighting: str, batch_size: int) -> None:
    """Win-rate of the best subregion per crop kind and scale, next to a mismatched-caption control."""
    try:
        scales = [int(s) for s in grid_scales.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--grid-scales {grid_scales!r}: expected comma-separated integers like 2,3") from None
    if any(s < 1 for s in scales) or (max_images is not None and max_images < 2):
        raise UserError("--grid-scales must be >= 1 and --max-images >= 2 (the control needs two images)")
    params = {"split": split, "max_images": max_images, "grid_scales": scales, "attention_k": attention_k,
              "attention_weighting": attention_weighting, "batch_size": batch_size, "figures": not no_figures}
    path, _ = run_single("subregion", "none", backbone, dataset, params, results_dir, work_dir, seed, seed, device,
                         not no_progress)
    click.echo(str(path))
