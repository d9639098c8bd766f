"""Task "vqa": zero-shot VQA with the captioning method's trained captioner, scored with VQAv2 accuracy.

The run's method (ctx.key.method) names the captioning method; the captioner is the one the
"caption" task trains for the same method/backbone/train seed/training params (the same cache via
`benchmark.tasks.caption.build_captioner`), so VQA never trains a different one. The mode is a
parameter; a suite that wants several modes gives each its own entry name (the store keys runs by
entry name), e.g. `{task: vqa, name: vqa-caption, params: {mode: caption}}`.

Suite parameters (ctx.params, all optional):
  mode: prefix (default) | caption | no-image
  split: question split (default "test"): vqa/questions_{split}.json + vqa/annotations_{split}.json,
    images from captions_{split}.json
  max_questions: answer the first n questions only
  VQA decoding options (maccap.vqa.VQAConfig): num_beams, max_new_tokens, min_new_tokens, length_penalty,
    batch_size, prefix_noise, n_captions, caption_batch_size, prompt, context_prompt; also accepted
    nested under "vqa"
  captioner options, passed to the caption task's builder unchanged: lm, lm_config, train,
    method_options, noise_model, noise_kind, noise_mean, backbone_weights
In no-image mode the captioner is still built (from the cache) because its frozen LM is the LM asked.
Give a vqa entry the same captioner options as the caption entry it should reuse (a YAML anchor does it):
different options are a different cache key, and a different captioner would be trained.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from benchmark.store import TaskOutput
from benchmark.tasks import ARTEFACTS, TASKS, RunContext
from maccap.errors import UserError
from maccap.io import sha256_file

log = logging.getLogger(__name__)

CAPTIONER_PARAMS = ("lm", "lm_config", "train", "method_options", "noise_model", "noise_kind", "noise_mean",
                    "backbone_weights")
OWN_PARAMS = ("mode", "split", "max_questions", "vqa")
RESULTS_FILE = "vqa_results.json"


def vqa_config(params: dict[str, Any]) -> Any:
    """The VQAConfig from flat params and an optional nested "vqa" dict (nested wins)."""
    from maccap.vqa import VQAConfig

    fields = set(VQAConfig.__dataclass_fields__)
    nested = params.get("vqa") or {}
    if not isinstance(nested, dict):
        raise UserError(f"task vqa: parameter 'vqa' must be a mapping of VQA options, got {type(nested).__name__}")
    unknown = sorted((set(params) - fields - set(OWN_PARAMS) - set(CAPTIONER_PARAMS)) | (set(nested) - fields))
    if unknown:
        known = sorted(fields | set(OWN_PARAMS) | set(CAPTIONER_PARAMS))
        raise UserError(f"task vqa: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
    merged = {**{k: v for k, v in params.items() if k in fields}, **nested}
    return VQAConfig(**merged)


def load_questions(data_dir: Path, split: str, max_questions: int | None) -> tuple[list[dict], list[dict], dict[str, str]]:
    """Questions and annotations of the split (validated, first n), with the files' checksums."""
    from maccap.data import load_vqa

    qpath = data_dir / "vqa" / f"questions_{split}.json"
    apath = data_dir / "vqa" / f"annotations_{split}.json"
    for path, what in ((qpath, "questions"), (apath, "annotations")):
        if not path.is_file():
            raise UserError(f"VQA {what} file {path} not found; expected vqa/{what}_{split}.json in the data "
                            "directory (VQAv2 layout)")
    questions, annotations = load_vqa(data_dir, split)
    by_id = {int(a["question_id"]): a for a in annotations}
    unannotated = [int(q["question_id"]) for q in questions if int(q["question_id"]) not in by_id]
    if unannotated:
        raise UserError(f"VQA annotations file {apath}: {len(unannotated)} question(s) have no annotation, "
                        f"e.g. {unannotated[:5]}")
    if max_questions:
        questions = questions[: int(max_questions)]
    if not questions:
        raise UserError(f"VQA questions file {qpath} holds no questions")
    annotations = [by_id[int(q["question_id"])] for q in questions]
    checks = {f"vqa/{qpath.name}": sha256_file(qpath), f"vqa/{apath.name}": sha256_file(apath)}
    return questions, annotations, checks


def _image_ids(data_dir: Path, split: str, names: list[str]) -> list[int]:
    """image_id of each feature row (rows follow the caption file's order)."""
    from maccap.data import load_split

    by_name = {r.image_name: r.image_id for r in load_split(data_dir, split).records}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"feature cache rows {missing[:3]} are not images of {data_dir / f'captions_{split}.json'}; "
                        "delete the stale feature cache")
    return [int(by_name[n]) for n in names]


def image_inputs(ctx: RunContext, backbone: Any, split: str, questions: list[dict]) -> Any:
    """Features of the split's images up to the last one asked about (the caption task's rows and noise)."""
    from maccap import features
    from maccap.vqa import ImageInputs

    names, toks = features.image_tokens(backbone, ctx.data_dir, split, Path(ctx.work_dir) / "features",
                                        progress=ctx.progress)
    ids = _image_ids(Path(ctx.data_dir), split, names)
    row = {i: r for r, i in enumerate(ids)}
    wanted = {int(q["image_id"]) for q in questions}
    missing = sorted(wanted - set(row))
    if missing:
        raise UserError(f"VQA questions of split {split!r} ask about {len(missing)} image_id(s) that are not in "
                        f"captions_{split}.json, e.g. {missing[:5]}")
    n = max(row[i] for i in wanted) + 1
    return ImageInputs(ids[:n], toks.cls[:n], toks.tokens[:n], toks.attn[:n])


def _captioner_ctx(ctx: RunContext) -> RunContext:
    params = {k: v for k, v in ctx.params.items() if k in CAPTIONER_PARAMS}
    return dataclasses.replace(ctx, params=params)


def run_vqa(ctx: RunContext) -> TaskOutput:
    """Answer the split's questions in the chosen mode; VQAv2 accuracy overall, per answer/question type."""
    from benchmark.tasks.caption import build_captioner, captioner_sha256
    from maccap.lm import lm_identity
    from maccap.metrics.vqa import vqa_accuracy, write_results
    from maccap.vqa import answer_questions

    p = ctx.params
    config = vqa_config(p)
    split = str(p.get("split", "test"))
    questions, annotations, checks = load_questions(Path(ctx.data_dir), split, p.get("max_questions"))
    t0 = time.perf_counter()
    captioner, backbone = build_captioner(_captioner_ctx(ctx))
    t_load = time.perf_counter() - t0
    images = None if config.mode == "no-image" else image_inputs(ctx, backbone, split, questions)
    encode_text = backbone.encode_text if config.mode == "caption" else None
    t1 = time.perf_counter()
    out = answer_questions(questions, config, captioner=captioner, images=images, encode_text=encode_text,
                           eval_seed=ctx.eval_seed, progress=ctx.progress)
    t_answer = time.perf_counter() - t1
    scores = vqa_accuracy(out.answers, annotations)
    write_results(Path(ctx.run_dir) / RESULTS_FILE, out.answers)
    metrics = {"vqa_acc": scores.overall}
    metrics.update({f"vqa_acc/{k}": v for k, v in scores.per_answer_type.items()})
    metrics.update({f"vqa_acc/qtype/{k}": v for k, v in scores.per_question_type.items()})
    items = _items(questions, annotations, out, scores, ctx)
    lm_ident = lm_identity(str(p.get("lm", "quickstart")), captioner.lm)
    return TaskOutput(
        metrics=metrics,
        counts={"questions": len(questions), "images": len({int(q["image_id"]) for q in questions}),
                "images_featurised": 0 if images is None else len(images.image_ids)},
        items=items,
        extra={"mode": config.mode, "vqa_config": config.to_dict(), "method": captioner.method.to_dict(),
               "split": split, "per_answer_type": scores.per_answer_type,
               "per_question_type": scores.per_question_type,
               "timings": {"captioner_load_s": t_load, "answer_s": t_answer,
                           "questions_per_s": len(questions) / t_answer if t_answer else None}},
        data_checksums=checks,
        weights={"backbone": backbone.provenance(), "lm": lm_ident, "captioner_key": captioner.info.get("key"),
                 "captioner_dir": captioner.info.get("dir"), "captioner_sha256": captioner_sha256(captioner.info)},
        artifacts={"vqa_results": RESULTS_FILE},
    )


def _items(questions: list[dict], annotations: list[dict], out: Any, scores: Any, ctx: RunContext) -> list[dict]:
    items = []
    for q, a in zip(questions, annotations):
        qid = int(q["question_id"])
        d = out.details[qid]
        items.append({"question_id": qid, "image_id": int(q["image_id"]), "question": q["question"],
                      "question_type": a["question_type"], "answer_type": a["answer_type"],
                      "answer": out.answers[qid], "normalized": scores.normalized[qid], "raw": d["raw"],
                      "gold": [x["answer"] for x in a["answers"]], "multiple_choice_answer": a["multiple_choice_answer"],
                      "accuracy": scores.per_item[qid], "beam_score": d["beam_score"],
                      "context": out.captions.get(int(q["image_id"])), "eval_seed": ctx.eval_seed,
                      "train_seed": ctx.train_seed})
    return items


def _method_names() -> tuple[str, ...]:
    from maccap.methods import METHODS

    return tuple(METHODS.names())


TASKS.add("vqa", run_vqa)
run_vqa.methods = _method_names()  # type: ignore[attr-defined]  # suites are checked against these


def _vqa_artefacts(dataset: str, method: str, backbone: str, train_seed: int, params: dict[str, Any]) -> set[str]:
    """The captioner (and its LM) whose prefix and LM answer: the caption task's."""
    from benchmark.tasks.caption import captioner_artefacts

    return captioner_artefacts(dataset, method, backbone, train_seed,
                               {k: v for k, v in params.items() if k in CAPTIONER_PARAMS})


ARTEFACTS.add("vqa", _vqa_artefacts)
