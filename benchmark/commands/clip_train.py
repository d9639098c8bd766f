"""`maccap-bench clip-train`: train a quickstart CLIP backbone on a world (or reuse it) and print its figures."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("clip-train")
@click.option("--backbone", "name", default="qs-rn", show_default=True, help="Quickstart backbone (qs-rn, qs-vit).")
@click.option("--world", "world", required=True, type=click.Path(path_type=Path), help="Quickstart world directory.")
@click.option("--seed", default=0, show_default=True, type=int, help="Training seed.")
@click.option("--steps", default=None, type=int, help="Training steps (default: the shipped weights' setting).")
@click.option("--cache-dir", default=Path("work/clip"), show_default=True, type=click.Path(path_type=Path),
              help="Where trained checkpoints are cached.")
@click.option("--threads", default=None, type=int, help="torch CPU threads (results are recorded with it).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(name: str, world: Path, seed: int, steps: int | None, cache_dir: Path, threads: int | None,
            no_progress: bool) -> None:
    """Train NAME on the world's clip split, or reuse shipped/cached weights, and print recall figures."""
    import torch

    from maccap.clip_train import ensure_backbone

    if threads:
        torch.set_num_threads(threads)
    _, trained = ensure_backbone(name, world, seed=seed, cache_dir=cache_dir, steps=steps, progress=not no_progress)
    source = "shipped" if trained.path.parent.name == "weights" and trained.reused else (
        "cached" if trained.reused else "trained")
    click.echo(f"backbone {name}: {source} weights {trained.path}")
    prov = trained.provenance
    if prov.get("train_time_s") is not None:
        click.echo(f"steps {prov.get('steps')}  seed {prov.get('seed')}  train time {prov['train_time_s']:.0f} s")
    m = trained.metrics
    for label, keys in (("recall i2t", ("i2t_r1", "i2t_r5")), ("recall t2i", ("t2i_r1", "t2i_r5")),
                        ("consistent i2t", ("i2t_consistent_r1", "i2t_consistent_r5")),
                        ("consistent t2i", ("t2i_consistent_r1", "t2i_consistent_r5"))):
        click.echo(f"{label:<15} R@1 {m.get(keys[0], float('nan')):.3f}  R@5 {m.get(keys[1], float('nan')):.3f}")
    click.echo(f"zero-shot colour {m.get('zeroshot_colour', float('nan')):.3f}  shape {m.get('zeroshot_shape', float('nan')):.3f}")
    click.echo(f"logit scale {m.get('logit_scale', float('nan')):.2f}  centroid gap {m.get('centroid_gap', float('nan')):.3f}")
