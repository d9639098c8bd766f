"""Small real-format raw data for the paper suites: Karpathy files, images, VQAv2 in the official layout.

Captions are real: slices of the Karpathy val/test references in ../shared/data/karpathy/. The
training split of each Karpathy-style file is made of *other* val references relabelled train/restval
(the real train captions are not available here); images are tiny PIL drawings, made only for val and
test images, as text-only training needs none. `build_raw(root)` lays the files out where
`maccap-bench data download` would, so `data prepare NAME --root RAW` finds them by default.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "karpathy"
# CI has ../shared; a clone elsewhere skips these tests with this reason instead of failing them
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/karpathy (real reference captions)")
N_TEST, N_VAL, N_TRAIN = 6, 3, 24


def _image(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    im = Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
    x, y = rng.randrange(4, 16), rng.randrange(4, 16)
    ImageDraw.Draw(im).ellipse((x, y, x + 12, y + 12), fill=tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG")


def _karpathy(dataset: str, test: list[dict], val: list[dict], train: list[dict]) -> dict:
    """Karpathy's dataset_{coco,flickr30k}.json layout: {"images": [...], "dataset": ...}."""
    images, sent = [], 0
    rows = [("test", e) for e in test] + [("val", e) for e in val]
    rows += [("restval" if dataset == "coco" and k % 4 == 0 else "train", e) for k, e in enumerate(train)]
    for imgid, (split, e) in enumerate(rows):
        caps = e["captions"]
        row = {"filename": e["image_name"], "imgid": imgid, "split": split,
               "sentences": [{"raw": c, "tokens": c.lower().rstrip(".").split(), "imgid": imgid, "sentid": sent + j}
                             for j, c in enumerate(caps)],
               "sentids": list(range(sent, sent + len(caps)))}
        if dataset == "coco":
            row["filepath"] = e["file_path"]
            row["cocoid"] = int(e["image_name"].rsplit("_", 1)[1].split(".")[0])
        images.append(row)
        sent += len(caps)
    return {"images": images, "dataset": dataset}


def _vqa(val_images: list[dict], extra_images: list[dict]) -> tuple[dict, dict]:
    """VQAv2 val2014 questions and annotations (official layout) about these COCO images."""
    questions, annotations = [], []
    info = {"description": "test fixture in the VQAv2 layout", "version": "2.0"}
    for k, e in enumerate(val_images + extra_images):
        iid = int(e["image_name"].rsplit("_", 1)[1].split(".")[0])
        word = e["captions"][0].lower().rstrip(".").split()[-1]
        for j, (q, a, at, qt) in enumerate((("Is there a person?", "yes" if k % 2 else "no", "yes/no", "is there a"),
                                            ("How many things are there?", str(k % 3 + 1), "number", "how many"),
                                            (f"What is this?", word, "other", "what is"))):
            qid = iid * 10 + j
            questions.append({"image_id": iid, "question": q, "question_id": qid})
            answers = [{"answer": a if n < 7 else "something", "answer_confidence": "yes", "answer_id": n + 1}
                       for n in range(10)]
            annotations.append({"question_id": qid, "image_id": iid, "answer_type": at, "question_type": qt,
                                "multiple_choice_answer": a, "answers": answers})
    qfile = {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {"name": "CC BY 4.0"},
             "data_subtype": "val2014", "questions": questions}
    afile = {"info": info, "license": {"name": "CC BY 4.0"}, "data_subtype": "val2014", "annotations": annotations}
    return qfile, afile


def build_raw(root: Path) -> Path:
    """Write RAW/karpathy/dataset_{coco,flickr30k}.json, RAW/coco2014/val2014/, RAW/flickr30k/flickr30k-images/
    and RAW/vqav2/ (questions about the Karpathy val images, plus one image outside them)."""
    load = lambda name: json.loads((SHARED / name).read_text(encoding="utf-8"))  # noqa: E731
    coco_test, coco_val = load("mscoco_test.json"), load("mscoco_val.json")
    f_test, f_val = load("flickr30k_test.json"), load("flickr30k_val.json")
    (root / "karpathy").mkdir(parents=True, exist_ok=True)
    for dataset, test, val in (("coco", coco_test, coco_val), ("flickr30k", f_test, f_val)):
        k = _karpathy(dataset, test[:N_TEST], val[:N_VAL], val[-N_TRAIN:])
        (root / "karpathy" / f"dataset_{dataset}.json").write_text(json.dumps(k), encoding="utf-8")
    for i, e in enumerate(coco_test[:N_TEST] + coco_val[:N_VAL + 1]):
        _image(root / "coco2014" / e["file_path"] / e["image_name"], i)
    for i, e in enumerate(f_test[:N_TEST] + f_val[:N_VAL]):
        _image(root / "flickr30k" / "flickr30k-images" / e["image_name"], 100 + i)
    q, a = _vqa(coco_val[:N_VAL], coco_val[N_VAL:N_VAL + 1])
    (root / "vqav2").mkdir(parents=True, exist_ok=True)
    (root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(q), encoding="utf-8")
    (root / "vqav2" / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(a), encoding="utf-8")
    return root


# Overrides that shrink a paper suite to a CPU smoke run: quickstart backbone, tiny LM, 1 epoch, 1 seed.
TINY_COMMON = ["backbones=[qs-rn]", "seeds=[0]", "eval_seeds=[1000]", "device=cpu"]
TINY_CAPTIONER = ["lm=tiny-gpt2", "train.epochs=1", "train.batch_size=16", "train.max_captions=64",
                  "train.warmup_iters=2", "train.lr=1.0e-3", "train.amp=false", "train.val_images=1",
                  "train.aligner.n_queries=4", "train.aligner.n_heads=2", "train.aligner.ffn_dim=64", "batch_size=8"]


def tiny_overrides(suite: str) -> list[str]:
    """--set options that make the shipped `suite` tiny (every entry keeps its paper structure)."""
    out = list(TINY_COMMON)
    entries = {"coco": ["gap", "subregion", "caption"], "flickr30k": ["gap", "subregion", "caption"],
               "cross-domain": ["caption-coco2flickr", "caption-flickr2coco"],
               "vqav2": ["vqa-prefix", "vqa-caption"]}[suite]
    for e in entries:
        if e == "gap":
            out += [f"tasks.gap.params.{k}" for k in ("reservoir_size=64", "batch_size=8", "grid_images=2")]
        elif e == "subregion":
            out += [f"tasks.subregion.params.{k}" for k in ("max_images=4", "batch_size=8", "grid_images=2")]
        else:
            out += [f"tasks.{e}.params.{k}" for k in TINY_CAPTIONER]
            if e.startswith("vqa"):
                out += [f"tasks.{e}.params.{k}" for k in ("num_beams=2", "max_new_tokens=4", "caption_batch_size=8")
                        if e == "vqa-caption" or not k.startswith("caption_")]
    return out
