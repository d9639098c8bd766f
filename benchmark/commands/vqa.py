"""`maccap-bench vqa`: zero-shot VQA with a (trained or cached) captioner, scored with VQAv2 accuracy."""

from __future__ import annotations


import click


def run_name(mode: str) -> str:
    """The result-store task name of a CLI run: modes other than prefix get their own directory."""
    return "vqa" if mode == "prefix" else f"vqa-{mode}"


@click.command("vqa")
@click.option("--method", default="maccap", show_default=True, help="Captioning method whose captioner answers.")
@click.option("--backbone", default="qs-rn", show_default=True)
@click.option("--dataset", "--world", "dataset", default="quickstart", show_default=True,
              help="'quickstart' or a data directory (with vqa/questions_SPLIT.json and annotations).")
@click.option("--mode", type=click.Choice(["prefix", "caption", "no-image"]), default="prefix", show_default=True,
              help="prefix: image prefix + question; caption: caption first, then ask; no-image: the LM's prior.")
@click.option("--split", default="test", show_default=True)
@click.option("--work-dir", default="work", show_default=True, type=click.Path(file_okay=False))
@click.option("--results", "results_dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--train-seed", default=0, show_default=True, type=int)
@click.option("--eval-seed", default=0, show_default=True, type=int, help="Seed of the test-time noise.")
@click.option("--lm", default=None, help="LM spec (default: quickstart).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="YAML of task parameters (captioner options and VQA options).")
@click.option("--max-questions", default=None, type=int, help="Answer the first n questions only.")
@click.option("--n-captions", default=None, type=int, help="caption mode: candidate captions given as context.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True)
def command(method: str, backbone: str, dataset: str, mode: str, split: str, work_dir: str, results_dir: str,
            train_seed: int, eval_seed: int, lm: str | None, config_path: str | None, max_questions: int | None,
            n_captions: int | None, device: str, no_progress: bool) -> None:
    """Answer the split's VQA questions; writes result.json, items.jsonl and the official results file."""
    from benchmark.commands.train import _read_yaml
    from benchmark.single import run_single

    params = _read_yaml(config_path)
    params.update({"mode": mode, "split": split})
    if lm:
        params["lm"] = lm
    if max_questions:
        params["max_questions"] = max_questions
    if n_captions:
        params["n_captions"] = n_captions
    path, out = run_single("vqa", method, backbone, dataset, params, results_dir, work_dir, train_seed, eval_seed,
                           device, not no_progress, run_name=run_name(mode))
    for k, v in sorted(out.metrics.items()):
        click.echo(f"{k}: {100 * v:.2f}")
    click.echo(f"result: {path}")
    click.echo(f"answers: {path.parent / out.artifacts['vqa_results']}")
