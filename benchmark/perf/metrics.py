"""Timings of the evaluation metrics: caption metrics on N images x 5 references, CLIP-S, VQA accuracy."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maccap.metrics import clip_score, refclip_score, score_captions, vqa_accuracy
from maccap.metrics.ptb import find_java

KARPATHY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "karpathy" / "mscoco_test.json"
_WORDS = "a man woman dog cat red blue small large on in with near street table field holding riding".split()


def _caption_data(n: int) -> tuple[dict[str, str], dict[str, list[str]], str]:
    """Real COCO references when present (prediction = another image's caption), else synthetic text."""
    if KARPATHY.is_file():
        rows = json.loads(KARPATHY.read_text())[: n + 1]
        refs = {r["image_name"]: r["captions"][:5] for r in rows[:n]}
        preds = {r["image_name"]: rows[i + 1]["captions"][0] for i, r in enumerate(rows[:n])}
        return preds, refs, "karpathy mscoco_test"
    rng = random.Random(0)
    sent = lambda: " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 12))) + "."  # noqa: E731
    refs = {str(i): [sent() for _ in range(5)] for i in range(n)}
    return {str(i): sent() for i in range(n)}, refs, "synthetic"


def _vqa_data(n: int) -> tuple[dict[int, str], list[dict]]:
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "3", "red", "blue", "Two", "a dog", "dog."]
    anns = [{"question_id": i, "image_id": i, "question_type": "what", "answer_type": "other",
             "multiple_choice_answer": "yes",
             "answers": [{"answer": rng.choice(vocab), "answer_id": j + 1} for j in range(10)]} for i in range(n)]
    return {i: rng.choice(vocab) for i in range(n)}, anns


def run(quick: bool = False) -> dict:
    """Seconds per metric for N images x 5 references (N = 500, 100 when quick)."""
    n = 100 if quick else 500
    preds, refs, source = _caption_data(n)
    out: dict = {"n_images": len(preds), "refs_per_image": 5, "caption_source": source, "java": find_java() is not None}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ptb = score_captions(preds, refs, work_dir=Path(tmp))
        out["caption_total_s"] = time.perf_counter() - t0
    out["caption_metric_s"] = {k: round(v, 4) for k, v in ptb.timings.items()}
    out["tokenizer"] = ptb.tokenizer
    out["skipped"] = ptb.skipped
    out["metrics"] = {k: round(v, 4) for k, v in ptb.metrics.items()}
    t0 = time.perf_counter()
    py = score_captions(preds, refs, use_java=False)
    out["java_free_total_s"] = time.perf_counter() - t0
    out["java_free_metric_s"] = {k: round(v, 4) for k, v in py.timings.items()}
    g = torch.Generator().manual_seed(0)
    img, cap = (F.normalize(torch.randn(n, 512, generator=g), dim=-1) for _ in range(2))
    ref = F.normalize(torch.randn(n, 5, 512, generator=g), dim=-1)
    t0 = time.perf_counter()
    clip_score(img, cap)
    refclip_score(img, cap, ref)
    out["clip_s_refclip_s_s"] = time.perf_counter() - t0
    vp, va = _vqa_data(2000 if quick else 10000)
    t0 = time.perf_counter()
    vqa_accuracy(vp, va)
    out["vqa_questions"] = len(va)
    out["vqa_accuracy_s"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
