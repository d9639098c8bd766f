"""A model-free task whose metrics follow from (method, backbone, seed) plus seeded noise.

It lets the runner, aggregation, tables and report be tested end to end in milliseconds. Params:
  metrics: list of metric names (default: the caption metrics, 0-1 scale)
  noise: std of the seeded noise added to each metric (default 0.01)
  fail_methods: methods whose runs raise (to test failure recording)
  kill_once_file: if this file exists, delete it and SIGKILL this process (a crash mid-suite)
  sigint_once_file: if this file exists, delete it and send SIGINT to this process (a Ctrl-C)
  n_items: per-image items written with candidates, CLIP scores and regions (default 3)
  image: write a small PNG per item into the run dir (default true)
  unserialisable: return an `extra` that JSON cannot hold (tests the runner's write guard)
  artefacts: write a figure (PNG + SVG) and a markdown section into the run dir, as the gap tasks do
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.store import TaskOutput
from benchmark.tasks import TASKS, RunContext
from maccap.io import atomic_path, atomic_write_text

CAPTION_METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "CLIP-S")


def _unit(text: str) -> float:
    """A stable number in [0, 1) from a string (python's hash() is salted per process)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8


def _metric_value(metric: str, method: str, backbone: str, train_seed: int, rng: np.random.Generator,
                  noise: float) -> float:
    base = 0.2 + 0.5 * _unit(f"{metric}|{method}") + 0.05 * _unit(f"{metric}|{backbone}")
    return float(base + 0.002 * train_seed + rng.normal(0.0, noise))


def _write_image(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[:] = rng.integers(40, 200, size=3)
    x0, y0 = rng.integers(0, 32, size=2)
    arr[y0:y0 + 24, x0:x0 + 24] = rng.integers(0, 255, size=3)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _items(ctx: RunContext, n: int, rng: np.random.Generator, image: bool) -> list[dict[str, Any]]:
    items = []
    for i in range(n):
        cands = [f"a {c} square on a plain background" for c in ("red", "blue", "green", "yellow")]
        scores = [float(s) for s in rng.uniform(0.1, 0.4, size=len(cands))]
        item: dict[str, Any] = {
            "image_id": i, "image_name": f"img{i}.png",
            "references": ["a coloured square", "a square on a background"],
            "candidates": cands, "clip_scores": scores, "chosen": int(np.argmax(scores)),
            "caption": cands[int(np.argmax(scores))],
            "selected_regions": [int(x) for x in rng.choice(np.arange(1, 17), size=3, replace=False)],
            "grid": 4,
        }
        if image:
            path = ctx.run_dir / "images" / f"img{i}.png"
            _write_image(path, ctx.eval_seed * 100 + i)
            item["image_path"] = str(path)
        items.append(item)
    return items


def _artefacts(ctx: RunContext, metrics: dict[str, float]) -> dict[str, str]:
    _write_image(ctx.run_dir / "dummy_figure.png", ctx.train_seed)
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20"><rect width="20" height="20" fill="red"/></svg>'
    atomic_write_text(ctx.run_dir / "dummy_figure.svg", svg)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    atomic_write_text(ctx.run_dir / "dummy_section.md",
                      f"## Dummy analysis ({ctx.key.backbone}, seed {ctx.train_seed})\n\n"
                      f"Some **bold** text and `code`.\n\n![the figure](dummy_figure.png)\n\n| metric | value |\n|---|---|\n{rows}\n\n- one\n- two\n")
    return {"figure": "dummy_figure.png", "section": "dummy_section.md"}


@TASKS.register("dummy")
def dummy_task(ctx: RunContext) -> TaskOutput:
    """Deterministic fake metrics; optional injected failure or hard crash."""
    p = ctx.params
    kill_file = p.get("kill_once_file")
    if kill_file and Path(kill_file).exists():
        Path(kill_file).unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    sigint_file = p.get("sigint_once_file")
    if sigint_file and Path(sigint_file).exists():
        Path(sigint_file).unlink()
        os.kill(os.getpid(), signal.SIGINT)
    if ctx.key.method in p.get("fail_methods", []):
        raise RuntimeError(f"injected failure for method {ctx.key.method!r}")
    rng = np.random.default_rng([ctx.train_seed, ctx.eval_seed, int(_unit(ctx.key.method + ctx.key.backbone) * 1e6)])
    noise = float(p.get("noise", 0.01))
    metrics = {m: _metric_value(m, ctx.key.method, ctx.key.backbone, ctx.train_seed, rng, noise)
               for m in p.get("metrics", CAPTION_METRICS)}
    items = _items(ctx, int(p.get("n_items", 3)), rng, bool(p.get("image", True)))
    artifacts = _artefacts(ctx, metrics) if p.get("artefacts") else {}
    if p.get("unserialisable"):
        return TaskOutput(metrics=metrics, extra={"bad": object()})
    return TaskOutput(metrics=metrics, counts={"images": len(items)}, items=items,
                      skipped_metrics={"SPICE-official": "dummy task has no Java"},
                      extra={"note": "dummy"}, artifacts=artifacts)


dummy_task.accepts_any_backbone = True  # type: ignore[attr-defined]
