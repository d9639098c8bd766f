"""Speed of the encoders and the feature cache: images/s and texts/s of the quickstart architectures
(random weights; speed does not depend on them), and cache write/read times."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch


def _backbone(arch: str):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from maccap import backbones as B

    torch.manual_seed(0)
    model = B._open_clip().create_model(arch, pretrained=None)
    size = model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0]
    return B.Backbone(arch, arch, model, B.TensorPreprocess(size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
                      B._tokenizer(arch), "perf")


def _rate(fn, n: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    return n / max(time.perf_counter() - t0, 1e-9)


def run(quick: bool) -> dict[str, Any]:
    from maccap.features import text_features

    n_img, n_txt = (64, 512) if quick else (512, 4096)
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    texts = [f"a {c} shape number {i}" for i, c in enumerate(["red", "blue", "green", "cyan"] * (n_txt // 4))]
    for arch in ("qs-rn", "qs-vit"):
        bb = _backbone(arch)
        x = torch.randn(n_img, 3, bb.image_size, bb.image_size)
        out[f"{arch}_images_per_s"] = _rate(lambda: bb.encode_image(x), n_img)
        out[f"{arch}_image_tokens_per_s"] = _rate(lambda: bb.encode_image_tokens(x), n_img)
        out[f"{arch}_texts_per_s"] = _rate(lambda: bb.encode_text(texts[:256]), 256)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            text_features(bb, texts, tmp, progress=False)
            write = time.perf_counter() - t0
            t0 = time.perf_counter()
            text_features(bb, texts, tmp, progress=False)
            read = time.perf_counter() - t0
        out[f"{arch}_text_cache_miss_s"] = write
        out[f"{arch}_text_cache_hit_s"] = read
        out[f"{arch}_cache_speedup"] = write / max(read, 1e-9)
    return out
