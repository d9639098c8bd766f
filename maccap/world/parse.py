"""Reading captions of the world's grammar back into constraints on a scene.

Used three ways: tests check that every generated caption is true of its scene; the CLIP evaluation
counts a retrieved caption as correct when it is true of the image ("consistent" recall); SynTIC renders
an image for a caption of the text-only corpus (`scene_from_caption`).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np

from maccap.world.config import COLOUR_NAMES, HPOS, SHAPE_PLURALS, SHAPES, SIZES, VPOS, WorldConfig
from maccap.world.scene import Scene, place_objects

_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
_PLURAL_TO_SHAPE = {v: k for k, v in SHAPE_PLURALS.items()}
_COL = "|".join(COLOUR_NAMES)
_SHAPE = "|".join(SHAPES)
_NP = rf"\b(?:an?|single) (?:(small|large) )?(?:({_COL}) )?({_SHAPE}|shape|object)\b"
_POS = r" (in the center|at the (?:top|bottom)|on the (?:left|right)|in the (?:top|bottom) (?:left|right))"
_REL = r" (to the left of|to the right of|above|below) "
_COUNT = rf"^(one|two|three|four) (?:({_COL}) )?(\w+?)(?:s|es)?\b"


def parse_caption(text: str) -> dict[str, Any]:
    """Constraints a caption states: object mentions (size/colour/shape/position), one relation, a count."""
    t = " ".join(text.lower().rstrip(".").split())
    mentions = []
    for m in re.finditer(_NP, t):
        pos = re.match(_POS, t[m.end():])
        mentions.append({"size": m.group(1), "colour": m.group(2),
                         "shape": m.group(3) if m.group(3) in SHAPES else None,
                         "position": _position_cell(pos.group(1)) if pos else None})
    rel = None
    if len(mentions) == 2:
        r = re.search(_REL, t)
        if r:
            rel = r.group(1)
    count = count_colour = count_shape = None
    c = re.match(_COUNT, t)
    if c:
        count = _NUMBERS[c.group(1)]
        count_colour = c.group(2)
        word = t[c.start(3):].split()[0].rstrip(":")
        count_shape = _PLURAL_TO_SHAPE.get(word) or (word if word in SHAPES else None)
    return {"mentions": mentions, "relation": rel, "count": count, "count_colour": count_colour,
            "count_shape": count_shape}


def _position_cell(phrase: str) -> tuple[str | None, str | None]:
    """(hpos, vpos) a position phrase pins down; None where it says nothing."""
    words = phrase.split()
    if phrase == "in the center":
        return "center", "middle"
    h = next((w for w in words if w in ("left", "right")), None)
    v = next((w for w in words if w in ("top", "bottom")), None)
    if phrase.startswith("at the"):
        return "center", v
    if phrase.startswith("on the"):
        return h, "middle"
    return h, v


def _matches(m: dict[str, Any], obj: dict[str, Any]) -> bool:
    if any(m[k] is not None and m[k] != obj[k] for k in ("size", "colour", "shape")):
        return False
    if m["position"] is not None:
        h, v = m["position"]
        return (h is None or h == obj["hpos"]) and (v is None or v == obj["vpos"])
    return True


def relation_holds(rel: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    ha, hb = HPOS.index(a["hpos"]), HPOS.index(b["hpos"])
    va, vb = VPOS.index(a["vpos"]), VPOS.index(b["vpos"])
    return {"to the left of": ha < hb, "to the right of": ha > hb, "above": va < vb, "below": va > vb}[rel]


def satisfies(parsed: dict[str, Any], scene: Scene) -> bool:
    """Is every stated constraint true of the scene (mentions matched to distinct objects)?"""
    if parsed["count"] is not None:
        if parsed["count"] != len(scene):
            return False
        if parsed["count_colour"] and any(o["colour"] != parsed["count_colour"] for o in scene):
            return False
        if parsed["count_shape"] and any(o["shape"] != parsed["count_shape"] for o in scene):
            return False
    ms = parsed["mentions"]
    if len(ms) > len(scene):
        return False
    for perm in itertools.permutations(range(len(scene)), len(ms)):
        if all(_matches(m, scene[i]) for m, i in zip(ms, perm)):
            if parsed["relation"] is None or relation_holds(parsed["relation"], scene[perm[0]], scene[perm[1]]):
                return True
    return False


def caption_is_true(text: str, scene: Scene) -> bool:
    return satisfies(parse_caption(text), scene)


def scene_from_caption(text: str, rng: np.random.Generator, config: WorldConfig | None = None,
                       max_tries: int = 500) -> Scene:
    """A random scene of which the caption is true; attributes it leaves open are drawn at random."""
    config = config or WorldConfig()
    parsed = parse_caption(text)
    ms = parsed["mentions"]
    n = parsed["count"] or max(1, len(ms))
    for _ in range(max_tries):
        shapes, colours, sizes = [], [], []
        for k in range(n):
            m = ms[k] if k < len(ms) else {}
            shapes.append(m.get("shape") or parsed["count_shape"] or SHAPES[int(rng.integers(len(SHAPES)))])
            colours.append(m.get("colour") or parsed["count_colour"] or COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))])
            sizes.append(m.get("size") or SIZES[int(rng.integers(len(SIZES)))])
        cells = [int(c) for c in rng.choice(9, size=n, replace=False)]
        for k, m in enumerate(ms[:n]):  # pin stated positions to a matching free cell
            if m.get("position"):
                h, v = m["position"]
                ok = [c for c in range(9) if (h is None or HPOS[c % 3] == h) and (v is None or VPOS[c // 3] == v)
                      and c not in cells[:k]]
                if ok:
                    cells[k] = ok[int(rng.integers(len(ok)))]
        if len(set(cells)) < n:
            continue
        scene = place_objects(rng, shapes, colours, sizes, cells, config.image_size)
        if satisfies(parsed, scene):
            return scene
    raise ValueError(f"could not build a scene for caption {text!r}")
