"""Task "clip": make sure the CLIP backbone exists (shipped, cached or freshly trained) and evaluate it.

Quickstart backbones (qs-rn, qs-vit) are trained on the world's clip split when their shipped weights
do not match the world; other backbones are loaded as named and only evaluated.
Params (ctx.params): split ("val"), steps (None = the shipped setting), probes (True on quickstart data),
clip_seed (0, the shipped weights' seed). The CLIP seed is a property of the backbone, shared by every
captioner seed of a suite, so it is a parameter here and not the run's training seed.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.store import TaskOutput
from benchmark.tasks import TASKS, RunContext


@TASKS.register("clip")
def clip_task(ctx: RunContext) -> TaskOutput:
    from maccap.backbones import BACKBONES, load_backbone
    from maccap.clip_train import ensure_backbone, evaluate_backbone, split_hash

    name = ctx.key.backbone
    split = str(ctx.params.get("split", "val"))
    quickstart = name in BACKBONES
    checksums = {f"captions_{split}.json": split_hash(ctx.data_dir, split)}
    weights: dict = {}
    if quickstart:
        backbone, trained = ensure_backbone(name, ctx.data_dir, seed=int(ctx.params.get("clip_seed", 0)),
                                            cache_dir=Path(ctx.work_dir) / "clip", steps=ctx.params.get("steps"),
                                            progress=ctx.progress, device=ctx.device)
        checksums["captions_clip.json"] = split_hash(ctx.data_dir, "clip")
        prov = trained.provenance
        weights = {"path": str(trained.path), "sha256": prov.get("weights_sha256"), "reused": trained.reused,
                   "steps": prov.get("steps"), "train_seed": prov.get("seed"),
                   "train_time_s": prov.get("train_time_s"), "init_logit_scale": prov.get("init_logit_scale")}
    else:
        backbone = load_backbone(name, ctx.device)
        weights = {"weights_id": backbone.weights_id}
    probes = bool(ctx.params.get("probes", quickstart or ctx.dataset == "quickstart"))
    metrics = evaluate_backbone(backbone, ctx.data_dir, split, progress=ctx.progress, probes=probes)
    counts = {"images": int(metrics.pop("n_images")), "captions": int(metrics.pop("n_captions"))}
    skipped = {} if probes else {"zeroshot_colour": "probes need the quickstart world",
                                 "zeroshot_shape": "probes need the quickstart world"}
    weights.update(backbone.provenance())
    return TaskOutput(metrics=metrics, skipped_metrics=skipped, counts=counts, data_checksums=checksums,
                      weights=weights, extra={"logit_scale": backbone.logit_scale})
