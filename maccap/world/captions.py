"""Captions of quickstart scenes: a small grammar with paraphrases.

Real captions mention only part of what an image holds; so do these. Each caption comes with the
indices of the objects it names, and everything it states (attributes, counts, relations) is true of
the scene: `caption_is_true` checks that, and the tests run it over many scenes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maccap.world.config import HPOS, SHAPE_PLURALS, VPOS

Scene = list[dict[str, Any]]

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
GENERIC_NOUNS = ("shape", "object")
OPENERS = ("", "", "", "there is ", "a picture of ", "an image of ", "we can see ")
BACKGROUNDS = ("", "", "", " on a light background", " on a pale background")


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def position_phrase(obj: dict[str, Any]) -> str:
    """Where an object is, as a prepositional phrase ("in the top left", "on the left", "in the center")."""
    h, v = obj["hpos"], obj["vpos"]
    if h == "center" and v == "middle":
        return "in the center"
    if h == "center":
        return f"at the {v}"
    if v == "middle":
        return f"on the {h}"
    return f"in the {v} {h}"


def noun_phrase(obj: dict[str, Any], size: bool, colour: bool, shape: bool, rng: np.random.Generator,
                article: bool = True) -> str:
    """'a small red circle', 'a blue shape', 'a star' ...; at least one of colour/shape is kept."""
    if not (colour or shape):
        colour = True
    words = []
    if size:
        words.append(obj["size"])
    if colour:
        words.append(obj["colour"])
    words.append(obj["shape"] if shape else _choice(rng, GENERIC_NOUNS))
    phrase = " ".join(words)
    if not article:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def relation(a: dict[str, Any], b: dict[str, Any], rng: np.random.Generator) -> str | None:
    """A spatial relation of a to b that holds on the grid, or None if they share a row and column."""
    options = []
    ha, hb = HPOS.index(a["hpos"]), HPOS.index(b["hpos"])
    va, vb = VPOS.index(a["vpos"]), VPOS.index(b["vpos"])
    if ha < hb:
        options.append("to the left of")
    if ha > hb:
        options.append("to the right of")
    if va < vb:
        options.append("above")
    if va > vb:
        options.append("below")
    return _choice(rng, options) if options else None


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _finish(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + "."


def _attrs(rng: np.random.Generator) -> tuple[bool, bool, bool]:
    """Which attributes a mention states: colour and shape usually, size sometimes."""
    kind = rng.random()
    size = rng.random() < 0.3
    if kind < 0.7:
        return size, True, True
    if kind < 0.85:
        return size, True, False
    return size, False, True


def _single(scene: Scene, i: int, rng: np.random.Generator) -> str:
    obj = scene[i]
    np_ = noun_phrase(obj, *_attrs(rng), rng)
    r = rng.random()
    if r < 0.35:
        return _finish(_choice(rng, OPENERS) + np_ + _choice(rng, BACKGROUNDS))
    if r < 0.7:
        return _finish(_choice(rng, OPENERS) + np_ + " " + position_phrase(obj))
    if len(scene) == 1:
        return _finish(f"a single {noun_phrase(obj, *_attrs(rng), rng, article=False)}" + _choice(rng, BACKGROUNDS))
    return _finish(np_ + " among other shapes")


def _pair(scene: Scene, i: int, j: int, rng: np.random.Generator) -> str:
    a = noun_phrase(scene[i], *_attrs(rng), rng)
    b = noun_phrase(scene[j], *_attrs(rng), rng)
    rel = relation(scene[i], scene[j], rng)
    if rel is not None and rng.random() < 0.6:
        return _finish(f"{_choice(rng, OPENERS)}{a} {rel} {b}")
    return _finish(f"{_choice(rng, OPENERS)}{a} and {b}")


def _listing(scene: Scene, idx: list[int], rng: np.random.Generator) -> str:
    phrases = [noun_phrase(scene[i], *_attrs(rng), rng) for i in idx]
    if len(idx) == len(scene) and len(scene) > 1 and rng.random() < 0.5:
        noun = _choice(rng, GENERIC_NOUNS) + "s"
        return _finish(f"{NUMBER_WORDS[len(scene)]} {noun}: {_join(phrases)}")
    return _finish(_choice(rng, OPENERS) + _join(phrases) + _choice(rng, BACKGROUNDS))


def _count(scene: Scene, rng: np.random.Generator) -> str:
    n = len(scene)
    shapes = {o["shape"] for o in scene}
    colours = {o["colour"] for o in scene}
    if n > 1 and len(shapes) == 1 and rng.random() < 0.5:
        return _finish(f"{NUMBER_WORDS[n]} {SHAPE_PLURALS[scene[0]['shape']]}" + _choice(rng, BACKGROUNDS))
    if n > 1 and len(colours) == 1 and rng.random() < 0.5:
        return _finish(f"{NUMBER_WORDS[n]} {scene[0]['colour']} {_choice(rng, GENERIC_NOUNS)}s")
    noun = _choice(rng, GENERIC_NOUNS) + ("s" if n > 1 else "")
    return _finish(f"{NUMBER_WORDS[n]} {noun}" + _choice(rng, BACKGROUNDS))


def sample_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, list[int]]:
    """One caption and the indices of the objects it names."""
    n = len(scene)
    r = rng.random()
    if r < 0.08:
        return _count(scene, rng), list(range(n))
    if n == 1 or r < 0.45:
        i = int(rng.integers(n))
        return _single(scene, i, rng), [i]
    if r < 0.7 and n >= 2:
        i, j = (int(v) for v in rng.choice(n, size=2, replace=False))
        return _pair(scene, i, j, rng), sorted([i, j])
    k = n if rng.random() < 0.6 else int(rng.integers(2, n + 1))
    idx = sorted(int(v) for v in rng.choice(n, size=k, replace=False))
    return _listing(scene, idx, rng), idx


def scene_captions(scene: Scene, rng: np.random.Generator, k: int = 5) -> tuple[list[str], list[list[int]]]:
    """k distinct captions (distinct whenever the grammar allows it within a few hundred draws)."""
    caps: list[str] = []
    objs: list[list[int]] = []
    for _ in range(400):
        c, o = sample_caption(scene, rng)
        if c not in caps:
            caps.append(c)
            objs.append(o)
        if len(caps) == k:
            break
    while len(caps) < k:  # tiny scenes with few phrasings: repeat, as annotators sometimes do
        caps.append(caps[len(caps) % max(1, len(caps))])
        objs.append(objs[len(objs) % max(1, len(objs))])
    return caps, objs
