"""Tasks "gap" (Gaussian fit of d = v - t, retrieval beside it) and "subregion" (proximity study).

Params (ctx.params): split ("test"), one_caption_per_image (False), reservoir_size (5000),
batch_size (64), max_images (None = all; subregion only), attention_k (10),
attention_weighting ("softmax_probs"), grid_scales ([2, 3]), figures (True), grid_images (8);
gap only: pairs ("image-text", or "real-synthetic": d = real image - the image rendered from its
caption, SynTIC's view of the gap), renderer ("world"), renderer_options ({}), render_seed (0).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from analysis import gap as G
from analysis import subregion as S
from analysis.retrieval import recall_at_k
from benchmark.store import TaskOutput
from benchmark.tasks import TASKS, RunContext
from maccap.errors import UserError
from maccap.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Inputs: backbone, records, features
# ---------------------------------------------------------------------------------------------
def _field(rec: Any, key: str, default: Any = None) -> Any:
    return rec.get(key, default) if isinstance(rec, dict) else getattr(rec, key, default)


def load_inputs(ctx: RunContext) -> tuple[Any, list[Any], str]:
    from maccap.backbones import load_backbone
    from maccap.data import load_split

    split = str(ctx.params.get("split", "test"))
    records = list(load_split(ctx.data_dir, split).records)
    backbone = load_backbone(ctx.key.backbone, ctx.device)
    if not records:
        raise UserError(f"{ctx.data_dir}: split {split!r} has no images")
    return backbone, records, split


def captions_of(records: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """All captions flattened, with the index of each caption's image."""
    texts, owner = [], []
    for i, rec in enumerate(records):
        caps = list(_field(rec, "captions", []))
        texts += caps
        owner += [i] * len(caps)
    return texts, np.asarray(owner, dtype=np.int64)


def _cache_dir(ctx: RunContext) -> Path:
    return Path(ctx.work_dir) / "features"


def image_features(ctx: RunContext, backbone: Any, records: Sequence[Any], split: str) -> np.ndarray:
    """Normalised CLS/pooled features of the split's images, through the shared feature cache."""
    from maccap.features import image_tokens

    names, tok = image_tokens(backbone, ctx.data_dir, split, _cache_dir(ctx), progress=ctx.progress)
    row = {n: i for i, n in enumerate(names)}
    missing = [r.image_name for r in records if r.image_name not in row]
    if missing:
        raise UserError(f"feature cache for split {split!r} lacks image {missing[0]!r} ({len(missing)} missing); "
                        f"delete {_cache_dir(ctx)} to rebuild it")
    cls = torch.as_tensor(tok.cls).float()[torch.as_tensor([row[r.image_name] for r in records])]
    return torch.nn.functional.normalize(cls, dim=-1).numpy()


def caption_features(ctx: RunContext, backbone: Any, texts: list[str]) -> np.ndarray:
    from maccap.features import text_features

    t = torch.as_tensor(text_features(backbone, texts, _cache_dir(ctx), progress=ctx.progress)).float()
    return torch.nn.functional.normalize(t, dim=-1).numpy()


def synthetic_features(ctx: RunContext, backbone: Any, texts: list[str]) -> np.ndarray:
    """Features of one image rendered from each caption (SynTIC's renderer registry), cached."""
    from maccap.renderers import get_renderer
    from maccap.renderers import synthetic_features as render_features

    renderer = get_renderer(str(ctx.params.get("renderer", "world")), ctx.params.get("renderer_options"),
                            device=ctx.device)
    feats = render_features(backbone, texts, renderer, int(ctx.params.get("render_seed", 0)), _cache_dir(ctx),
                            progress=ctx.progress)
    return torch.nn.functional.normalize(feats.float(), dim=-1).numpy()


def load_pil(ctx: RunContext, rec: Any) -> Any:
    from maccap.data import load_image

    return load_image(rec.path)


def _provenance(ctx: RunContext, backbone: Any, split: str) -> tuple[dict[str, Any], dict[str, str]]:
    weights = backbone.provenance() if hasattr(backbone, "provenance") else {"name": ctx.key.backbone}
    checks: dict[str, str] = {}
    manifest = Path(ctx.data_dir) / "manifest.json"
    if manifest.is_file():
        from maccap.io import sha256_file

        checks["manifest.json"] = sha256_file(manifest)
    cap = Path(ctx.data_dir) / f"captions_{split}.json"
    if cap.is_file():
        from maccap.io import sha256_file

        checks[cap.name] = sha256_file(cap)
    return weights, checks


# ---------------------------------------------------------------------------------------------
# gap
# ---------------------------------------------------------------------------------------------
@TASKS.register("gap")
def gap_task(ctx: RunContext) -> TaskOutput:
    """Gaussian fit of the paired difference, noise model, retrieval, figures and markdown."""
    p = ctx.params
    t0 = time.perf_counter()
    backbone, records, split = load_inputs(ctx)
    texts, owner = captions_of(records)
    img = image_features(ctx, backbone, records, split)
    pairs = str(p.get("pairs", "image-text"))
    if pairs == "image-text":
        txt = caption_features(ctx, backbone, texts)
    elif pairs == "real-synthetic":  # the rendered image of each caption stands where its text feature stood
        txt = synthetic_features(ctx, backbone, texts)
    else:
        raise UserError(f"task gap: pairs={pairs!r}; expected 'image-text' or 'real-synthetic'")
    t_feat = time.perf_counter() - t0
    config = G.GapConfig(reservoir_size=int(p.get("reservoir_size", 5000)), seed=ctx.eval_seed)
    meta = {"backbone": ctx.key.backbone, "dataset": ctx.dataset, "split": split, "pairs": pairs,
            "one_caption_per_image": bool(p.get("one_caption_per_image", False))}
    batches = G.paired_batches(img, txt, owner, one_per_image=meta["one_caption_per_image"], seed=ctx.eval_seed)
    res = G.analyze_gap(batches, img.shape[1], config, logit_scale=getattr(backbone, "logit_scale", None), meta=meta)
    retr = recall_at_k(img, txt, owner)
    t_stats = time.perf_counter() - t0 - t_feat
    return _write_gap_outputs(ctx, res, retr, len(records), len(texts), {"features_s": t_feat, "analysis_s": t_stats},
                              *_provenance(ctx, backbone, split))


def _write_gap_outputs(ctx: RunContext, res: G.GapResult, retr: dict[str, Any], n_images: int, n_texts: int,
                       timings: dict[str, float], weights: dict[str, Any], checks: dict[str, str]) -> TaskOutput:
    run_dir = Path(ctx.run_dir)
    artifacts: dict[str, str] = {}
    G.save_noise_model(run_dir / "noise_model.safetensors", res.noise)
    artifacts["noise_model"] = "noise_model.safetensors"
    report = {**res.report, "retrieval": retr}
    atomic_write_json(run_dir / "gap_report.json", report)
    artifacts["report"] = "gap_report.json"
    figures: dict[str, str] = {}
    if ctx.params.get("figures", True):
        from analysis.gap_figures import gap_figures

        figures = gap_figures(res, run_dir)
        artifacts.update(figures)
    from analysis.gap_markdown import gap_section

    atomic_write_text(run_dir / "gap.md", gap_section(report, retr, figures))
    artifacts["markdown"] = "gap.md"
    metrics = {k: float(v) for k, v in res.report["metrics"].items() if v is not None}
    metrics.update({f"retrieval.{k}": v for k, v in retr["metrics"].items()})
    skipped = {k: "not computable here (see gap_report.json for the reason)"
               for k, v in metrics.items() if not np.isfinite(v)}
    return TaskOutput(metrics={k: v for k, v in metrics.items() if k not in skipped}, skipped_metrics=skipped,
                      counts={"images": int(n_images), "captions": int(n_texts),
                              "pairs": int(res.report["gap"]["n_pairs"]), "reservoir": int(len(res.sample))},
                      extra=G._jsonable({"gap": res.report["gap"], "zero_mean": res.report["zero_mean"],
                             "normality_per_dim": res.report["normality"]["per_dim"],
                             "retrieval_counts": retr["counts"], "timings_detail": timings}),
                      data_checksums=checks, weights=weights, artifacts=artifacts)


# ---------------------------------------------------------------------------------------------
# subregion
# ---------------------------------------------------------------------------------------------
def subregion_config(params: dict[str, Any], seed: int) -> S.SubregionConfig:
    return S.SubregionConfig(grid_scales=tuple(int(s) for s in params.get("grid_scales", (2, 3))),
                             attention_k=int(params.get("attention_k", 10)),
                             attention_weighting=str(params.get("attention_weighting", "softmax_probs")),
                             batch_size=int(params.get("batch_size", 64)), seed=seed)


@TASKS.register("subregion")
def subregion_task(ctx: RunContext) -> TaskOutput:
    """Whole image vs subregions against own and mismatched captions, split by partial/full captions."""
    p = ctx.params
    t0 = time.perf_counter()
    backbone, records, split = load_inputs(ctx)
    if p.get("max_images") is not None:
        records = records[: int(p["max_images"])]
    config = subregion_config(p, ctx.eval_seed)
    feats = S.extract_features(backbone, lambda i: load_pil(ctx, records[i]), config, n_images=len(records),
                               progress=ctx.progress)
    texts, owner = captions_of(records)
    txt = caption_features(ctx, backbone, texts)
    flags = S.partial_flags(records)
    partial = flags[0] if flags is not None else None
    t_feat = time.perf_counter() - t0
    study = S.subregion_study(feats.whole, feats.crops, txt, owner, partial, seed=ctx.eval_seed)
    run_dir = Path(ctx.run_dir)
    report = {k: study[k] for k in ("kinds", "metrics")}
    report["config"] = {"grid_scales": list(config.grid_scales), "sliding": [list(s) for s in config.sliding],
                        "attention_k": config.attention_k, "attention_weighting": config.attention_weighting,
                        "split": split, "n_images": len(records)}
    atomic_write_json(run_dir / "subregion_report.json", G._jsonable(report))
    artifacts = {"report": "subregion_report.json"}
    figures: dict[str, str] = {}
    if p.get("figures", True):
        figures = _subregion_figures(study, feats, txt, owner, lambda i: load_pil(ctx, records[i]), texts, run_dir,
                                     int(p.get("grid_images", 8)))
        artifacts.update(figures)
    from analysis.gap_markdown import subregion_section

    atomic_write_text(run_dir / "subregion.md", subregion_section(study, figures))
    artifacts["markdown"] = "subregion.md"
    items = G._jsonable(_subregion_items(study, feats, txt, owner, records, texts))
    metrics = {k: float(v) for k, v in study["metrics"].items()}
    skipped = {k: "undefined on this data (e.g. no partial or no full captions, or all differences zero)"
               for k, v in metrics.items() if not np.isfinite(v)}
    weights, checks = _provenance(ctx, backbone, split)
    return TaskOutput(metrics={k: v for k, v in metrics.items() if k not in skipped}, skipped_metrics=skipped,
                      counts={"images": len(records), "captions": len(texts),
                              "partial_captions": int(partial.sum()) if partial is not None else -1},
                      items=items, extra={"kinds": G._jsonable(study["kinds"]),
                                          "timings_detail": {"features_s": t_feat,
                                                             "analysis_s": time.perf_counter() - t0 - t_feat}},
                      data_checksums=checks, weights=weights, artifacts=artifacts)


def _subregion_figures(study: dict[str, Any], feats: S.SubregionFeatures, txt: np.ndarray, owner: np.ndarray,
                       load: Any, texts: list[str], run_dir: Path, n_grid: int) -> dict[str, str]:
    from analysis.gap_figures import subregion_figures

    ctrl = study["control_index"]
    scores = {}
    for kind, c in feats.crops.items():
        m = S.pair_scores(feats.whole, c, txt, owner)
        x = S.pair_scores(feats.whole, c, txt, owner, ctrl)
        scores[kind] = {"own caption": m.best - m.whole, "mismatched": x.best - x.whole}
    grid = None
    box_kind = next((k for k in feats.boxes if k.startswith("grid")), None)
    if box_kind is not None and n_grid > 0:
        first = np.unique(owner, return_index=True)[1][:n_grid]  # first caption of the first images
        grid = {"images": [load(int(owner[j])) for j in first], "boxes": feats.boxes[box_kind],
                "best": study["best_index"][box_kind][first], "captions": [texts[j] for j in first],
                "title": f"Best {box_kind} crop (yellow) for the image's first caption"}
    return subregion_figures(study, run_dir, scores, grid)


def _subregion_items(study: dict[str, Any], feats: S.SubregionFeatures, txt: np.ndarray, owner: np.ndarray,
                     records: Sequence[Any], texts: list[str]) -> list[dict[str, Any]]:
    """One row per caption; `region_boxes` is the best box crop (any grid or window), for the report to draw."""
    items = []
    per_kind = {k: S.pair_scores(feats.whole, c, txt, owner) for k, c in feats.crops.items()}
    box_kinds = [k for k in per_kind if k in feats.boxes]
    for j in range(len(texts)):
        rec = records[owner[j]]
        row: dict[str, Any] = {"image_id": _field(rec, "image_id", int(owner[j])),
                               "image_name": _field(rec, "image_name"), "caption": texts[j],
                               "whole": float(next(iter(per_kind.values())).whole[j]) if per_kind else None}
        for k, s in per_kind.items():
            row[f"best.{k}"] = float(s.best[j])
            row[f"best_index.{k}"] = int(s.best_index[j])
        if box_kinds:
            kind = max(box_kinds, key=lambda k: per_kind[k].best[j])
            row["best_box_kind"] = kind
            row["region_boxes"] = [list(feats.boxes[kind][int(per_kind[kind].best_index[j])])]
        items.append(row)
    return items
