"""`maccap-bench train`: train (or reuse) one text-only captioner and print where its weights are."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from maccap.errors import UserError


def _read_yaml(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--config {path}: cannot read YAML ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of caption-task parameters")
    return data


@click.command("train")
@click.option("--method", default="maccap", show_default=True, help="Registered method (maccap-bench ls methods).")
@click.option("--backbone", default="qs-rn", show_default=True)
@click.option("--dataset", default="quickstart", show_default=True, help="'quickstart' or a data directory.")
@click.option("--work-dir", default="work", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", "train_seed", default=0, show_default=True, type=int, help="Training seed.")
@click.option("--lm", default=None, help="LM spec: quickstart, smollm2, gguf:FILE, a local dir or a hub id.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="YAML of caption-task parameters (train:, lm_config:, method_options:, ...).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True)
def command(method: str, backbone: str, dataset: str, work_dir: str, train_seed: int, lm: str | None,
            config_path: str | None, device: str, no_progress: bool) -> None:
    """Train a captioner on caption text only (cached: a finished one is reused, a killed one resumes).

    Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) the N processes train it data-parallel
    (nccl on GPUs, gloo on CPU) with the same global batch; rank 0 writes the weights and prints.
    """
    from benchmark.single import make_context
    from benchmark.tasks.caption import build_captioner
    from maccap import distributed

    params = _read_yaml(config_path)
    if lm:
        params["lm"] = lm
    dist = distributed.init_from_env(device)
    try:
        rank_device = str(dist.device(device)) if dist else device
        ctx = make_context("caption", method, backbone, dataset, work_dir, params, train_seed, 0, rank_device,
                           not no_progress and (dist is None or dist.is_main))
        captioner, _ = build_captioner(ctx)
    finally:
        distributed.shutdown()
    if dist is not None and not dist.is_main:
        return
    info = captioner.info
    click.echo(f"captioner: {info['dir']}" + (f" (trained on {dist.world_size} ranks)" if dist else ""))
    for h in info.get("history") or []:
        click.echo(f"  epoch {int(h['epoch'])}: loss {h['loss']:.4f}")
