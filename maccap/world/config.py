"""Vocabulary and size presets of the quickstart world.

The vocabulary (shapes, colours, sizes, grid positions) is part of the world's format: the captions,
the VQA answers and the CLIP probes all speak it, so it lives in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from maccap.errors import UserError

WORLD_VERSION = 1
WORLD_NAME = "quickstart"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SHAPE_PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                                 "star": "stars", "cross": "crosses"}

# Well separated hues, dark enough to stand out on a light background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 32),
    "orange": (240, 128, 0),
    "yellow": (222, 196, 0),
    "green": (30, 150, 40),
    "cyan": (0, 176, 196),
    "blue": (28, 60, 210),
    "purple": (140, 40, 176),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SIZES: tuple[str, ...] = ("small", "large")
# Object extent in pixels at 64 px (scaled with image_size): small 14-18, large 22-28.
SIZE_RANGES: dict[str, tuple[int, int]] = {"small": (14, 18), "large": (22, 28)}

HPOS: tuple[str, ...] = ("left", "center", "right")
VPOS: tuple[str, ...] = ("top", "middle", "bottom")

SPLITS: tuple[str, ...] = ("clip", "val", "test")
SPLIT_CODES: dict[str, int] = {"clip": 1, "val": 2, "test": 3, "corpus": 4}
# image_id = offset + index; question_id = image_id * 10 + k.
ID_OFFSETS: dict[str, int] = {"clip": 1_000_000, "val": 2_000_000, "test": 3_000_000}


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and knobs of one quickstart world; hashed into the manifest."""

    image_size: int = 64
    n_clip: int = 20000
    n_corpus: int = 10000
    n_val: int = 250
    n_test: int = 500
    captions_per_image: int = 5
    questions_per_image: int = 4
    min_objects: int = 1
    max_objects: int = 4
    # probabilities of 1, 2, 3, 4 objects (truncated to [min_objects, max_objects])
    object_count_weights: tuple[float, ...] = (0.25, 0.3, 0.25, 0.2)
    supersample: int = 4
    png_compress_level: int = 6

    PRESETS = ("default", "tiny")

    @classmethod
    def preset(cls, name: str) -> "WorldConfig":
        """Named sizes: `default` (the shipped world) and `tiny` (tests, smoke runs)."""
        if name == "default":
            return cls()
        if name == "tiny":
            return cls(n_clip=200, n_corpus=100, n_val=20, n_test=40)
        raise UserError(f"unknown world preset {name!r}; expected one of {', '.join(cls.PRESETS)}")

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise UserError(f"world image_size {self.image_size} is too small; expected >= 32")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise UserError("world object counts must satisfy 1 <= min_objects <= max_objects <= 4")
        for name in ("n_clip", "n_corpus", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise UserError(f"world {name} must be >= 1, got {getattr(self, name)}")
        if self.captions_per_image < 1 or self.questions_per_image < 1:
            raise UserError("world captions_per_image and questions_per_image must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["object_count_weights"] = list(self.object_count_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown world config field(s) {sorted(unknown)}; expected some of {sorted(names)}")
        d = dict(d)
        if "object_count_weights" in d:
            d["object_count_weights"] = tuple(d["object_count_weights"])
        return cls(**d)

    def split_size(self, split: str) -> int:
        return {"clip": self.n_clip, "val": self.n_val, "test": self.n_test, "corpus": self.n_corpus}[split]

