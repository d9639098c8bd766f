"""`maccap-bench eval`: caption a split with one (trained or cached) captioner and score it."""

from __future__ import annotations


import click


@click.command("eval")
@click.option("--method", default="maccap", show_default=True)
@click.option("--backbone", default="qs-rn", show_default=True)
@click.option("--dataset", default="quickstart", show_default=True, help="'quickstart' or a data directory.")
@click.option("--work-dir", default="work", show_default=True, type=click.Path(file_okay=False))
@click.option("--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--train-seed", default=0, show_default=True, type=int)
@click.option("--eval-seed", default=0, show_default=True, type=int, help="Seed of the test-time noise.")
@click.option("--lm", default=None, help="LM spec (default: quickstart).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="YAML of caption-task parameters.")
@click.option("--max-images", default=None, type=int, help="Evaluate the first n images only.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True)
def command(method: str, backbone: str, dataset: str, work_dir: str, results_dir: str, train_seed: int,
            eval_seed: int, lm: str | None, config_path: str | None, max_images: int | None, device: str,
            no_progress: bool) -> None:
    """Train-or-load, caption, score; writes result.json, items.jsonl and COCO-format captions."""
    from benchmark.commands.train import _read_yaml
    from benchmark.single import run_single

    params = _read_yaml(config_path)
    if lm:
        params["lm"] = lm
    if max_images:
        params["max_images"] = max_images
    path, out = run_single("caption", method, backbone, dataset, params, results_dir, work_dir, train_seed, eval_seed,
                           device, not no_progress)
    for k, v in sorted(out.metrics.items()):
        click.echo(f"{k}: {100 * v if k != 'CLIP-S' else v:.2f}")
    for k, why in sorted(out.skipped_metrics.items()):
        click.echo(f"{k}: skipped ({why})")
    click.echo(f"result: {path}")
