"""Task "caption": train (or reuse) a text-only captioner, caption the test split, score it.

Suite parameters (ctx.params, all optional):
  lm: LM spec for maccap.lm.load_lm (default "quickstart")
  train_data_dir: take the text-only training corpus from this data directory (cross-domain runs)
  lm_config: fields of maccap.lm.QuickstartLMConfig (quickstart LM only)
  train: fields of maccap.train.TrainConfig (aligner sizes under "aligner"); default QUICKSTART_TRAIN
  method_options: overrides of the method's fields (e.g. {"region_weighting": "probs"})
  noise_model: path to the gap analysis' fitted noise model; noise_kind: isotropic|diagonal|full;
    noise_mean: bool (adds the fitted mean offset) -- replaces the isotropic training noise
  split: evaluated split (default "test"); max_images: evaluate the first n images only
  metrics: caption metrics for score_captions (default all) plus "clip_s"
  batch_size: images per generate call (default 64); backbone_weights: weights file for a quickstart backbone
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from benchmark.store import TaskOutput
from benchmark.tasks import ARTEFACTS, TASKS, RunContext
from maccap.errors import UserError
from maccap.io import atomic_write_json, hash_config, read_json, sha256_file

log = logging.getLogger(__name__)

KNOWN_PARAMS = {"train_data_dir", "lm", "lm_config", "train", "method_options", "noise_model", "noise_kind", "noise_mean", "split",
                "max_images", "metrics", "batch_size", "backbone_weights"}


def _split_entries(data_dir: Path, split: str) -> list[dict[str, Any]]:
    """The split's images as dicts (image_name, image_id, captions), through maccap.data when present."""
    try:
        from maccap.data import load_split
    except ImportError:
        return read_json(data_dir / f"captions_{split}.json", f"{split} caption file")
    obj = load_split(data_dir, split)
    rows = getattr(obj, "records", None)
    if rows is None:
        return list(getattr(obj, "entries", obj))
    return [{"image_name": r.image_name, "image_id": r.image_id, "captions": list(r.captions)} for r in rows]


def captioner_sha256(info: dict[str, Any]) -> str | None:
    """The trained bridge's file hash: the key names the recipe, the hash the exact weights used."""
    path = Path(info["dir"]) / "bridge.safetensors" if info.get("dir") else None
    return sha256_file(path) if path is not None and path.is_file() else None


def build_captioner(ctx: RunContext, method_name: str | None = None) -> tuple[Any, Any]:
    """(captioner, backbone) for the run's method/backbone/train seed; shared with the VQA task."""
    from maccap.backbones import load_backbone
    from maccap.lm import QuickstartLMConfig
    from maccap.methods import get_method
    from maccap.noise import NoiseModel
    from maccap.train import QUICKSTART_TRAIN, TrainConfig, train_or_load

    p = ctx.params
    unknown = sorted(set(p) - KNOWN_PARAMS - {"vqa"})
    if unknown:
        raise UserError(f"task caption: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_PARAMS))}")
    method = get_method(method_name or ctx.key.method, p.get("method_options"))
    backbone = load_backbone(ctx.key.backbone, ctx.device, weights=p.get("backbone_weights"))
    train_cfg = TrainConfig.from_dict(p["train"]) if p.get("train") else QUICKSTART_TRAIN
    lm_cfg = QuickstartLMConfig(**p["lm_config"]) if p.get("lm_config") else None
    noise, digest = None, None
    if p.get("noise_model"):
        from analysis.gap import load_noise_model

        path = Path(p["noise_model"])
        noise = NoiseModel.from_fitted(load_noise_model(path), p.get("noise_kind", "diagonal"), bool(p.get("noise_mean")))
        digest = f"{sha256_file(path)}:{p.get('noise_kind', 'diagonal')}:{bool(p.get('noise_mean'))}"
    captioner = train_or_load(method, backbone, p.get("lm", "quickstart"), ctx.data_dir, ctx.work_dir, ctx.train_seed,
                              train_cfg, lm_cfg, noise, digest, ctx.device, ctx.progress,
                              corpus_dir=p.get("train_data_dir"))
    return captioner, backbone


@ARTEFACTS.register("caption")
def captioner_artefacts(dataset: str, method: str, backbone: str, train_seed: int, params: dict[str, Any]) -> set[str]:
    """The LM and the trained captioner of a run (the VQA task's runs declare the same ones)."""
    from maccap.methods import get_method

    lm = ["lm", dataset, params.get("lm", "quickstart"), params.get("lm_config"), params.get("train_data_dir")]
    try:
        m = get_method(method, params.get("method_options"))
    except UserError:  # the run itself reports it
        return {hash_config(lm)}
    captioner = ["captioner", m.train_fields(), "blind" if m.image_free else backbone, train_seed,
                 params.get("train"), *(params.get(k) for k in ("noise_model", "noise_kind", "noise_mean")), lm]
    return {hash_config(lm), hash_config(captioner)}


def check_metric_names(names: list[str]) -> None:
    """Unknown caption metric names as a UserError ("did you mean"), before any training."""
    from maccap.metrics.captions import _resolve_metrics

    if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
        raise UserError(f"task caption: parameter 'metrics' must be a list of metric names, got {names!r}")
    _resolve_metrics([m for m in names if m != "clip_s"])


def run_caption(ctx: RunContext) -> TaskOutput:
    from maccap import features
    from maccap.captioning import caption_images
    from maccap.metrics import clip_score, score_captions, with_prompt

    wanted = ctx.params.get("metrics") or ["bleu", "meteor", "rouge", "cider", "spice", "clip_s"]
    check_metric_names(wanted)  # a typo fails now, not after training
    text_metrics = [m for m in wanted if m != "clip_s"]
    t0 = time.perf_counter()
    captioner, backbone = build_captioner(ctx)
    t_train = time.perf_counter() - t0
    split = ctx.params.get("split", "test")
    entries = _split_entries(Path(ctx.data_dir), split)
    names, toks = features.image_tokens(backbone, ctx.data_dir, split, ctx.work_dir / "features", progress=ctx.progress)
    n = min(len(names), int(ctx.params.get("max_images") or len(names)))
    by_name = {e["image_name"]: e for e in entries}
    t1 = time.perf_counter()
    results = caption_images(captioner, toks.cls[:n], toks.tokens[:n], toks.attn[:n], backbone.encode_text,
                             ctx.eval_seed, int(ctx.params.get("batch_size", 64)), ctx.progress)
    t_infer = time.perf_counter() - t1
    preds = {names[i]: r.caption for i, r in enumerate(results)}
    refs = {names[i]: list(by_name[names[i]]["captions"]) for i in range(n)}
    t2 = time.perf_counter()
    scores = score_captions(preds, refs, metrics=text_metrics, work_dir=ctx.work_dir / "metrics_tmp")
    metrics = dict(scores.metrics)
    per_item = {k: v for k, v in scores.per_item.items()}
    if "clip_s" in wanted:
        cap_feats = torch.cat([backbone.encode_text(with_prompt(list(preds.values()))[i:i + 256])
                               for i in range(0, n, 256)])
        cs = clip_score(toks.cls[:n], cap_feats.cpu())
        metrics["CLIP-S"] = float(cs.mean())
        per_item["CLIP-S"] = {names[i]: float(cs[i]) for i in range(n)}
    t_metrics = time.perf_counter() - t2

    items = []
    coco = []
    for i, r in enumerate(results):
        e = by_name[names[i]]
        image_id = e.get("image_id", names[i])
        items.append({"image_id": image_id, "image_name": names[i], "caption": r.caption, "references": refs[names[i]],
                      "candidates": [{"caption": c, "clip_similarity": s} for c, s in zip(r.candidates, r.scores)],
                      "selected": r.selected, "region_indices": r.region_indices,
                      "n_tokens": int(toks.tokens.shape[1]) if r.region_indices is not None else None,
                      "eval_seed": ctx.eval_seed,
                      "train_seed": ctx.train_seed,
                      "scores": {k: v[names[i]] for k, v in per_item.items() if names[i] in v}})
        coco.append({"image_id": image_id, "caption": r.caption})
    atomic_write_json(Path(ctx.run_dir) / "captions_coco.json", coco)
    info = captioner.info
    return TaskOutput(
        metrics=metrics, skipped_metrics=dict(scores.skipped),
        counts={"images": n, "images_in_split": len(names), "train_captions": int(info.get("n_captions", 0)),
                "candidates_per_image": captioner.method.n_candidates},
        items=items,
        extra={"method": captioner.method.to_dict(), "tokenizer": scores.tokenizer,
               "train_history": info.get("history"),
               "syntic": info.get("syntic"),  # SynTIC's alignment statistics (maccap.syntic); None otherwise
               "timings": {"train_or_load_s": t_train, "inference_s": t_infer,
                                                                 "metrics_s": t_metrics,
                                                                 "images_per_s": n / t_infer if t_infer else None,
                                                                 "train_captions_per_s": info.get("captions_per_s")}},
        data_checksums={f"captions_{split}.json": sha256_file(Path(ctx.data_dir) / f"captions_{split}.json")},
        weights={"backbone": backbone.provenance(), "lm": info.get("lm"), "captioner_key": info.get("key"),
                 "captioner_dir": info.get("dir"), "captioner_sha256": captioner_sha256(info)},
        artifacts={"coco_results": "captions_coco.json"},
    )


TASKS.add("caption", run_caption)
