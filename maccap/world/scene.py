"""Scenes of the quickstart world: sampling object layouts and rendering them to RGB images.

A scene is a list of object dicts (JSON-able, stored in the caption files):
`{"shape", "colour", "size", "hpos", "vpos", "position", "center": [x, y], "extent", "bbox": [x0, y0, x1, y1]}`
with coordinates in pixels of a `frame` x `frame` image (the world's image size). Objects sit in distinct
cells of a 3x3 grid (hpos = column, vpos = row) near the cell centre, and never overlap.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from maccap.world.config import COLOUR_NAMES, COLOURS, HPOS, SHAPES, SIZE_RANGES, SIZES, VPOS, WorldConfig

Scene = list[dict[str, Any]]

BASE_FRAME = 64  # sizes and jitter below are given for a 64 px image and scaled with the frame
_JITTER = 5  # max distance (px at 64) of an object centre from its cell centre
_GAP = 1  # min free pixels between two object boxes


def position_name(hpos: str, vpos: str) -> str:
    """Canonical short name of a grid cell: 'center', 'top', 'left', 'top left', ..."""
    if hpos == "center" and vpos == "middle":
        return "center"
    if hpos == "center":
        return vpos
    if vpos == "middle":
        return hpos
    return f"{vpos} {hpos}"


def make_object(shape: str, colour: str, size: str, hpos: str, vpos: str, frame: int = BASE_FRAME,
                extent: float | None = None, offset: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """Build one object dict centred in its grid cell (plus `offset` px); used by probes and SynTIC."""
    if shape not in SHAPES or colour not in COLOURS or size not in SIZES or hpos not in HPOS or vpos not in VPOS:
        raise ValueError(f"bad object attributes {(shape, colour, size, hpos, vpos)}")
    scale = frame / BASE_FRAME
    if extent is None:
        lo, hi = SIZE_RANGES[size]
        extent = (lo + hi) / 2 * scale
    cell = frame / 3
    cx = (HPOS.index(hpos) + 0.5) * cell + offset[0]
    cy = (VPOS.index(vpos) + 0.5) * cell + offset[1]
    half = extent / 2
    cx = min(max(cx, half + 1), frame - 1 - half)
    cy = min(max(cy, half + 1), frame - 1 - half)
    return _object_dict(shape, colour, size, hpos, vpos, cx, cy, extent)


def _object_dict(shape: str, colour: str, size: str, hpos: str, vpos: str, cx: float, cy: float,
                 extent: float) -> dict[str, Any]:
    half = extent / 2
    r = lambda v: round(float(v), 2)  # noqa: E731 - JSON-stable floats
    return {"shape": shape, "colour": colour, "size": size, "hpos": hpos, "vpos": vpos,
            "position": position_name(hpos, vpos), "center": [r(cx), r(cy)], "extent": r(extent),
            "bbox": [r(cx - half), r(cy - half), r(cx + half), r(cy + half)]}


def boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float = 0.0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_scene(rng: np.random.Generator, config: WorldConfig) -> Scene:
    """Draw 1-4 non-overlapping objects in distinct grid cells."""
    counts = np.arange(1, 5)
    w = np.array(config.object_count_weights[:4], dtype=float)
    w[(counts < config.min_objects) | (counts > config.max_objects)] = 0.0
    n = int(rng.choice(counts, p=w / w.sum()))
    cells = [int(c) for c in rng.choice(9, size=n, replace=False)]
    shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), n)]
    colours = [COLOUR_NAMES[int(i)] for i in rng.integers(0, len(COLOUR_NAMES), n)]
    sizes = [SIZES[int(i)] for i in rng.integers(0, len(SIZES), n)]
    return place_objects(rng, shapes, colours, sizes, cells, config.image_size)


def place_objects(rng: np.random.Generator, shapes: list[str], colours: list[str], sizes: list[str],
                  cells: list[int], frame: int) -> Scene:
    """Jitter objects around their cell centres until none overlap; shrink large ones if needed.

    The last resort (small objects at the exact cell centres) always fits, so this terminates.
    """
    scale = frame / BASE_FRAME
    sizes = list(sizes)
    for attempt in range(60):
        if attempt in (20, 40):
            big = [i for i, s in enumerate(sizes) if s == "large"]
            if big:
                sizes[big[int(rng.integers(len(big)))]] = "small"
        extents = [float(rng.integers(SIZE_RANGES[s][0], SIZE_RANGES[s][1] + 1)) * scale for s in sizes]
        objs = []
        for shape, colour, size, cell, e in zip(shapes, colours, sizes, cells, extents):
            dx, dy = (float(v) * scale for v in rng.integers(-_JITTER, _JITTER + 1, 2))
            objs.append(make_object(shape, colour, size, HPOS[cell % 3], VPOS[cell // 3], frame, e, (dx, dy)))
        if not _any_overlap(objs, _GAP * scale):
            return objs
    sizes = ["small"] * len(shapes)
    return [make_object(sh, co, "small", HPOS[c % 3], VPOS[c // 3], frame, SIZE_RANGES["small"][0] * scale)
            for sh, co, c in zip(shapes, colours, cells)]


def _any_overlap(objs: Scene, gap: float) -> bool:
    return any(boxes_overlap(a["bbox"], b["bbox"], gap) for i, a in enumerate(objs) for b in objs[i + 1:])


def scene_signature(scene: Scene) -> tuple:
    """What a scene says (attributes and cells, not pixels): used to keep the corpus disjoint."""
    return tuple(sorted((o["shape"], o["colour"], o["size"], o["hpos"], o["vpos"]) for o in scene))


# --------------------------------------------------------------------------------------------- rendering

def _shape_polygon(shape: str, cx: float, cy: float, e: float) -> list[tuple[float, float]] | None:
    h = e / 2
    if shape == "square":
        s = 0.43 * e
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + 0.42 * e), (cx - h, cy + 0.42 * e)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = h if k % 2 == 0 else 0.45 * h
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    if shape == "cross":
        a, t = 0.48 * e, 0.17 * e
        return [(cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t), (cx + a, cy + t),
                (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a), (cx - t, cy + t), (cx - a, cy + t),
                (cx - a, cy - t), (cx - t, cy - t)]
    return None  # circle


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Light, slightly tinted background with a soft gradient and a faint wave."""
    base = rng.uniform(218, 240) + rng.uniform(-7, 7, 3)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gx, gy = rng.uniform(-8, 8, 2)
    fx, fy = rng.uniform(1, 4, 2)
    phase = rng.uniform(0, 2 * math.pi)
    field = gx * (x - 0.5) + gy * (y - 0.5) + rng.uniform(1, 4) * np.sin(2 * math.pi * (fx * x + fy * y) + phase)
    return base[None, None, :] + field[:, :, None]


def render_scene(scene: Scene, size: int, rng: np.random.Generator, frame: int | None = None,
                 supersample: int = 4) -> Image.Image:
    """Render objects (coordinates in a `frame` px image, default `size`) anti-aliased on a textured
    light background; `rng` draws the background, colour shading and pixel noise."""
    frame = frame or size
    big = size * supersample
    k = big / frame
    colour_layer = Image.new("RGB", (big, big), (0, 0, 0))
    mask = Image.new("L", (big, big), 0)
    dc, dm = ImageDraw.Draw(colour_layer), ImageDraw.Draw(mask)
    bg = _background(rng, size)
    for obj in scene:
        rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLOURS[obj["colour"]])
        cx, cy = obj["center"][0] * k, obj["center"][1] * k
        e = obj["extent"] * k
        poly = _shape_polygon(obj["shape"], cx, cy, e)
        if poly is None:
            box = [cx - e / 2, cy - e / 2, cx + e / 2, cy + e / 2]
            dc.ellipse(box, fill=rgb)
            dm.ellipse(box, fill=255)
        else:
            dc.polygon(poly, fill=rgb)
            dm.polygon(poly, fill=255)
    # BOX downsampling of a black-backed colour layer gives premultiplied colour, so edges blend.
    col = np.asarray(colour_layer.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[:, :, None] / 255.0
    img = bg * (1.0 - alpha) + col
    img += rng.integers(-3, 4, (size, size, 1)).astype(np.float32)  # luminance noise
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def encode_png(img: Image.Image, compress_level: int = 6) -> bytes:
    """PNG bytes with fixed options and no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=compress_level)
    return buf.getvalue()
