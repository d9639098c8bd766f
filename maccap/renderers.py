"""Text-to-image renderers for SynTIC, and the cache of their images' CLIP features.

A renderer turns captions into images, one per caption, seeded per (seed, caption index) so the same
index and seed always give the same image whatever the batch. Two are registered:

- `world`: the quickstart world's own renderer as a caption-to-image function. The caption is parsed
  with the world grammar (`scene_from_caption`): what it states is honoured, what it leaves open
  (other attributes, positions, jitter, background) is drawn at random.
- `diffusers`: a `diffusers` text-to-image pipeline from a model id or a local directory (optional
  dependency, imported only when used; loading is offline-first).

`synthetic_features` renders and encodes captions in batches and caches the features through the
project's feature cache, keyed by backbone + weights id, renderer identity, caption-list hash and seed.
Renderers that are slow (`cache_images`) also keep their images on disk as PNGs, so that a second
backbone does not re-render.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from maccap.errors import UserError
from maccap.io import atomic_write_bytes, hash_config
from maccap.registry import Registry

log = logging.getLogger(__name__)

SYNTIC_STREAM = 7  # the random stream code of synthetic renders (world splits use 1-4)


class Renderer(Protocol):
    name: str
    cache_images: bool

    def ident(self) -> dict[str, Any]:
        """Everything that changes the pixels (part of the cache keys)."""

    def render(self, captions: Sequence[str], indices: Sequence[int], seed: int) -> list[Image.Image]:
        """One RGB image per caption; image i depends only on (captions[i], indices[i], seed)."""


# ---------------------------------------------------------------------------------------------------
# the quickstart world's renderer

@dataclass
class WorldRenderer:
    """Caption -> random scene of which the caption is true -> rendered image (the world's renderer)."""

    image_size: int = 64
    supersample: int = 4
    cache_images: bool = False  # cheap to redo: only the features are cached
    name: str = "world"

    def ident(self) -> dict[str, Any]:
        from maccap.world.config import WORLD_VERSION

        return {"renderer": self.name, "image_size": self.image_size, "supersample": self.supersample,
                "world_version": WORLD_VERSION}

    def rng(self, index: int, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(seed), SYNTIC_STREAM, int(index)])

    def scene(self, caption: str, rng: np.random.Generator) -> list[dict[str, Any]]:
        """A scene the caption is true of; a caption outside the grammar gets one random object."""
        from maccap.world import WorldConfig, scene_from_caption

        try:
            return scene_from_caption(caption, rng, WorldConfig(image_size=self.image_size))
        except ValueError:
            log.debug("caption %r has no consistent scene; rendering one random object", caption)
            return scene_from_caption("", rng, WorldConfig(image_size=self.image_size))

    def render_one(self, caption: str, index: int, seed: int) -> tuple[list[dict[str, Any]], Image.Image]:
        from maccap.world import render_scene

        rng = self.rng(index, seed)
        scene = self.scene(caption, rng)
        return scene, render_scene(scene, self.image_size, rng, supersample=self.supersample)

    def render(self, captions: Sequence[str], indices: Sequence[int], seed: int) -> list[Image.Image]:
        return [self.render_one(c, i, seed)[1] for c, i in zip(captions, indices)]


# ---------------------------------------------------------------------------------------------------
# diffusers

@dataclass
class DiffusersRenderer:
    """A `diffusers` text-to-image pipeline (e.g. a Stable Diffusion model id or local directory).

    Loaded with `local_files_only=True` unless `allow_download`; the per-image torch generator is
    seeded from (seed, index), so images do not depend on the batch composition.
    """

    model: str = ""
    steps: int = 25
    guidance: float = 7.5
    size: int | None = None  # output side in pixels (None: the model's default)
    dtype: str = "float16"  # float16 | bfloat16 | float32 (float32 is forced on the CPU)
    device: str = "cpu"
    allow_download: bool = False
    cache_images: bool = True
    name: str = "diffusers"
    _pipe: Any = None

    def ident(self) -> dict[str, Any]:
        return {"renderer": self.name, "model": self.model, "steps": self.steps, "guidance": self.guidance,
                "size": self.size, "dtype": self.dtype}

    def pipeline(self) -> Any:
        if self._pipe is not None:
            return self._pipe
        if not self.model:
            raise UserError("renderer 'diffusers' needs option model=<hub id or local directory>")
        try:
            import diffusers
        except ImportError:
            raise UserError("renderer 'diffusers' needs the optional package diffusers "
                            "(pip install diffusers); use renderer 'world' on the quickstart world") from None
        dtype = getattr(torch, self.dtype, None) if self.device != "cpu" else torch.float32
        if not isinstance(dtype, torch.dtype):
            raise UserError(f"renderer 'diffusers': dtype={self.dtype!r}; expected float16, bfloat16 or float32")
        local = Path(self.model).exists()
        try:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
                self.model, torch_dtype=dtype, local_files_only=not self.allow_download)
        except Exception as e:  # hub errors, missing files, incompatible checkpoints
            where = "local directory" if local else "model id (offline: only the local hub cache is used)"
            raise UserError(f"renderer 'diffusers': cannot load {where} {self.model!r} "
                            f"({type(e).__name__}: {e})") from None
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        return pipe

    def render(self, captions: Sequence[str], indices: Sequence[int], seed: int) -> list[Image.Image]:
        pipe = self.pipeline()
        gens = [torch.Generator(self.device).manual_seed(int(hash_config([seed, SYNTIC_STREAM, int(i)])[:15], 16))
                for i in indices]
        kw = {"height": self.size, "width": self.size} if self.size else {}
        out = pipe(list(captions), num_inference_steps=self.steps, guidance_scale=self.guidance, generator=gens, **kw)
        return [im.convert("RGB") for im in out.images]


RENDERERS: Registry[Callable[..., Renderer]] = Registry("renderer")
RENDERERS.add("world", WorldRenderer)
RENDERERS.add("diffusers", DiffusersRenderer)


def get_renderer(name: str, options: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> Renderer:
    """Build the renderer `name` with `options` (its dataclass fields); device only for diffusers."""
    factory = RENDERERS.get(name)
    opts = dict(options or {})
    known = set(getattr(factory, "__dataclass_fields__", {})) - {"name", "_pipe"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise UserError(f"renderer {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if name == "diffusers":
        opts.setdefault("device", str(device))
    return factory(**opts)


# ---------------------------------------------------------------------------------------------------
# rendered images and their features, cached

def render_key(renderer: Renderer, captions: Sequence[str], seed: int) -> str:
    from maccap.features import texts_hash

    return hash_config({"renderer": renderer.ident(), "texts": texts_hash(list(captions)), "seed": int(seed)})


def _render_batch(renderer: Renderer, captions: Sequence[str], indices: Sequence[int], seed: int,
                  image_dir: Path | None) -> list[Image.Image]:
    """Render, reusing/keeping PNGs in image_dir when given (one file per caption index)."""
    if image_dir is None:
        return renderer.render(captions, indices, seed)
    from maccap.world.scene import encode_png

    paths = [image_dir / f"{int(i):08d}.png" for i in indices]
    todo = [k for k, p in enumerate(paths) if not p.is_file()]
    fresh = renderer.render([captions[k] for k in todo], [indices[k] for k in todo], seed) if todo else []
    out: list[Image.Image | None] = [None] * len(paths)
    for k, im in zip(todo, fresh):
        atomic_write_bytes(paths[k], encode_png(im))
        out[k] = im
    for k, p in enumerate(paths):
        if out[k] is None:
            try:
                with Image.open(p) as im:
                    out[k] = im.convert("RGB")
            except OSError:  # a damaged cached image: render it again
                out[k] = renderer.render([captions[k]], [indices[k]], seed)[0]
                atomic_write_bytes(p, encode_png(out[k]))
    return out  # type: ignore[return-value]


def synthetic_features(backbone: Any, captions: Sequence[str], renderer: Renderer, seed: int,
                       cache_dir: str | Path, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Normalised CLIP image features [N, D] of one rendered image per caption (caption i uses index i)."""
    from maccap import features

    captions = list(captions)
    if not captions:
        return torch.zeros(0, backbone.embed_dim)
    key = render_key(renderer, captions, seed)
    image_dir = Path(cache_dir) / "syntic_images" / key if renderer.cache_images else None
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)

    def compute():
        bar = tqdm(range(0, len(captions), batch_size), desc=f"render+encode ({renderer.name})", disable=not progress)
        for s in bar:
            idx = list(range(s, min(s + batch_size, len(captions))))
            imgs = _render_batch(renderer, [captions[i] for i in idx], idx, seed, image_dir)
            yield {"image": backbone.encode_image(imgs).cpu().float()}

    extra = {"n": len(captions), "renderer": renderer.ident(), "seed": int(seed)}
    return features._cached(cache_dir, backbone, "synthetic_image", key, compute, extra)["image"].float()
