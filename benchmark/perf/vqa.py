"""VQA throughput: questions/s in prefix mode, batched (one generate call per batch of questions) vs
one question per call, on the same untrained quickstart-sized captioner. Synthetic features and a
random GPT-2 (decoding runs the full 10 answer tokens, the worst case); needs no world or weights.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from maccap.lm import QuickstartLMConfig, _gpt2, build_word_tokenizer
from maccap.methods import get_method
from maccap.train import QUICKSTART_TRAIN, new_captioner
from maccap.vqa import ImageInputs, VQAConfig, answer_questions

QUESTIONS = ("what colour is the circle?", "how many stars are there?", "is there a red square?",
             "where is the blue triangle?")


def run(quick: bool) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run(quick: bool) -> dict[str, Any]:
    d, t = 64, 50
    n_img = 8 if quick else 32
    texts = [f"Question: {q} Short answer: red" for q in QUESTIONS] + ["a red circle and a blue square."]
    tok = build_word_tokenizer(texts)
    q = QuickstartLMConfig()
    torch.manual_seed(0)
    lm = _gpt2(tok, q.n_embd, q.n_layer, q.n_head, q.n_positions).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    cap = new_captioner(get_method("maccap"), lm, tok, d, QUICKSTART_TRAIN, train_seed=0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.nn.functional.normalize(torch.randn(n_img, t, d, generator=g), dim=-1)
    images = ImageInputs(list(range(n_img)), tokens[:, 0].clone(), tokens, torch.randn(n_img, t, t, generator=g).softmax(-1))
    questions = [{"question_id": i * 10 + k, "image_id": i, "question": QUESTIONS[k]}
                 for i in range(n_img) for k in range(len(QUESTIONS))]
    out: dict[str, Any] = {"questions": len(questions)}
    results = {}
    for name, bs in (("batched", 64), ("per_question", 1)):
        cfg = VQAConfig(mode="prefix", batch_size=bs)
        secs = _timed(lambda: results.__setitem__(name, answer_questions(questions, cfg, captioner=cap, images=images)))
        out[f"{name}_questions_per_s"] = len(questions) / secs
    out["batched_speedup"] = out["batched_questions_per_s"] / out["per_question_questions_per_s"]
    out["batched_equals_per_question"] = results["batched"].answers == results["per_question"].answers
    return out
