"""VQA questions about quickstart scenes, with ten annotator answers each (VQAv2 layout).

Answers are stored the way VQAv2's annotators mostly wrote them and its evaluation expects them: digits
for numbers, no articles, lowercase. A few annotators disagree (a wrong colour, an off-by-one count, a
neighbouring position), so that accuracy below 1 is possible for a correct answer, as in VQAv2.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from maccap.world.config import COLOUR_NAMES, SHAPES
from maccap.world.scene import Scene, position_name

QUESTION_TYPES = ("colour", "shape", "count", "existence", "position")
ANSWER_AGREEMENT = 0.9  # chance that one annotator gives the canonical answer


def _unique(scene: Scene, key: str) -> list[int]:
    counts = Counter(o[key] for o in scene)
    return [i for i, o in enumerate(scene) if counts[o[key]] == 1]


def _unique_pair(scene: Scene) -> list[int]:
    counts = Counter((o["colour"], o["shape"]) for o in scene)
    return [i for i, o in enumerate(scene) if counts[(o["colour"], o["shape"])] == 1]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def make_question(kind: str, scene: Scene, rng: np.random.Generator) -> dict[str, str] | None:
    """One question of a kind, or None when the scene cannot ask it unambiguously."""
    if kind == "colour":
        idx = _unique(scene, "shape")
        if not idx:
            return None
        o = scene[_pick(rng, idx)]
        return {"question": f"what color is the {o['shape']}?", "answer": o["colour"],
                "answer_type": "other", "question_type": "what color is the"}
    if kind == "shape":
        idx = _unique(scene, "colour")
        if not idx:
            return None
        o = scene[_pick(rng, idx)]
        noun = _pick(rng, ("shape", "object"))
        return {"question": f"what shape is the {o['colour']} {noun}?", "answer": o["shape"],
                "answer_type": "other", "question_type": "what shape is the"}
    if kind == "count":
        if rng.random() < 0.6:
            return {"question": f"how many {_pick(rng, ('shapes', 'objects'))} are there?", "answer": str(len(scene)),
                    "answer_type": "number", "question_type": "how many"}
        colour = _pick(rng, [o["colour"] for o in scene])
        n = sum(o["colour"] == colour for o in scene)
        return {"question": f"how many {colour} shapes are there?", "answer": str(n),
                "answer_type": "number", "question_type": "how many"}
    if kind == "existence":
        if rng.random() < 0.5:
            o = scene[int(rng.integers(len(scene)))]
            colour, shape, ans = o["colour"], o["shape"], "yes"
        else:
            present = {(o["colour"], o["shape"]) for o in scene}
            absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
            colour, shape = _pick(rng, absent)
            ans = "no"
        return {"question": f"is there a {colour} {shape}?", "answer": ans,
                "answer_type": "yes/no", "question_type": "is there a"}
    if kind == "position":
        idx = _unique_pair(scene)
        if not idx or len(scene) == 1 and rng.random() < 0.5:
            return None
        o = scene[_pick(rng, idx)]
        return {"question": f"where is the {o['colour']} {o['shape']}?", "answer": position_name(o["hpos"], o["vpos"]),
                "answer_type": "other", "question_type": "where is the"}
    raise ValueError(f"unknown question kind {kind!r}")


def _wrong_answer(q: dict[str, str], rng: np.random.Generator) -> str:
    a = q["answer"]
    if q["answer_type"] == "yes/no":
        return "no" if a == "yes" else "yes"
    if q["answer_type"] == "number":
        return str(max(0, int(a) + _pick(rng, (-1, 1))))
    if q["question_type"] == "what color is the":
        return _pick(rng, [c for c in COLOUR_NAMES if c != a])
    if q["question_type"] == "what shape is the":
        return _pick(rng, [s for s in SHAPES if s != a])
    words = a.split()
    return words[-1] if len(words) > 1 else _pick(rng, ("center", "left", "right", "top", "bottom"))


def annotator_answers(q: dict[str, str], rng: np.random.Generator, n: int = 10) -> list[str]:
    return [q["answer"] if rng.random() < ANSWER_AGREEMENT else _wrong_answer(q, rng) for _ in range(n)]


def scene_questions(scene: Scene, rng: np.random.Generator, k: int = 4) -> list[dict[str, Any]]:
    """Up to k questions of distinct kinds, each with ten answers and the majority answer."""
    out = []
    for kind in rng.permutation(QUESTION_TYPES):
        q = make_question(str(kind), scene, rng)
        if q is None:
            continue
        answers = annotator_answers(q, rng)
        q["answers"] = answers
        q["multiple_choice_answer"] = Counter(answers).most_common(1)[0][0]
        out.append(q)
        if len(out) == k:
            break
    return out
