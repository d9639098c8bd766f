"""Captioner throughput: training captions/s; inference images/s for N=1 and N=4 candidates, batched
(one generate call for images x candidates) vs the reference's per-image / per-candidate loop, on the
same model in the same run. Synthetic features and a quickstart-sized GPT-2 (random weights: decoding
runs the full 16 tokens, the worst case), so it needs no world, backbone or trained weights.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Any

import torch

from maccap.captioning import caption_images, caption_images_naive
from maccap.lm import QuickstartLMConfig, build_word_tokenizer, _gpt2
from maccap.methods import get_method
from maccap.noise import NoiseModel
from maccap.train import QUICKSTART_TRAIN, fit, new_captioner

WORDS = "a the red blue green yellow small large circle square star triangle next to above below left of".split()


def _corpus(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def run(quick: bool) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> dict[str, Any]:
    rng = random.Random(0)
    d, t = 64, 50
    n_train = 512 if quick else 2048
    n_img = 16 if quick else 64
    corpus = _corpus(n_train, rng)
    tok = build_word_tokenizer(corpus)
    q = QuickstartLMConfig()
    torch.manual_seed(0)
    lm = _gpt2(tok, q.n_embd, q.n_layer, q.n_head, q.n_positions).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(n_train, d, generator=g), dim=-1)
    cfg = replace(QUICKSTART_TRAIN, epochs=1)
    method = get_method("maccap")
    cap = new_captioner(method, lm, tok, d, cfg, train_seed=0)
    info = fit(cap, feats, corpus, cfg, 0, NoiseModel.isotropic(0.016))
    tokens = torch.nn.functional.normalize(torch.randn(n_img, t, d, generator=g), dim=-1)
    attn = torch.randn(n_img, t, t, generator=g).softmax(-1)
    cls = tokens[:, 0].clone()
    proj = torch.randn(len(tok), d, generator=g)

    def encode_text(texts):
        ids = [tok(x, add_special_tokens=False)["input_ids"] or [0] for x in texts]
        return torch.nn.functional.normalize(torch.stack([proj[i].mean(0) for i in ids]), dim=-1)

    out: dict[str, Any] = {"train_captions_per_s": info["captions_per_s"], "train_captions": n_train,
                           "images": n_img, "feature_dim": d, "tokens_per_image": t,
                           "lm": f"gpt2 d{q.n_embd} L{q.n_layer} vocab{len(tok)} (random init)"}
    for n in (1, 4):
        cap.method = get_method("maccap", {"n_candidates": n})
        t0 = time.perf_counter()
        batched = caption_images(cap, cls, tokens, attn, encode_text, eval_seed=0, batch_size=64)
        tb = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive = caption_images_naive(cap, cls, tokens, attn, encode_text, eval_seed=0)
        tn = time.perf_counter() - t0
        out[f"infer_images_per_s_N{n}_batched"] = n_img / tb
        out[f"infer_images_per_s_N{n}_naive"] = n_img / tn
        out[f"speedup_batched_vs_naive_N{n}"] = tn / tb
        out[f"same_captions_N{n}"] = [r.caption for r in batched] == [r.caption for r in naive]
    return out
