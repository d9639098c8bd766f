"""Tiny CLIP training on the quickstart world's pre-training pairs, with evaluation and a weights cache.

Training runs a fixed number of steps (never a wall-time budget) with seeded batches: each step draws
images without replacement (a fresh permutation per epoch) and one random caption of each image's five.
InfoNCE with a learned temperature, AdamW and a cosine schedule. The token embedding keeps only the rows
of the world's vocabulary (every other row is zero and untouched), so the stored checkpoint is small.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from maccap.backbones import BACKBONES, Backbone, _open_clip, _tokenizer, load_backbone, sparsify, to_model_input
from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_json, hash_config, read_json, sha256_file
from maccap.seed import check_seed, seed_everything

log = logging.getLogger(__name__)

TRAIN_VERSION = 1
CAPTION_FILES = ("captions_clip.json", "captions_val.json", "captions_test.json", "corpus_train.json")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters hashed into the cache key (and recorded with the weights)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    eval_split: str = "val"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainedClip:
    path: Path  # the safetensors weights
    metrics: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class Pairs:
    names: list[str]
    images: torch.Tensor  # uint8 [N, 3, H, W]
    captions: list[list[str]]
    scenes: list[list[dict[str, Any]]]
    caption_objects: list[list[list[int]]]


def split_entries(world_dir: Path, split: str) -> list[dict[str, Any]]:
    """Entries of a split as dicts (image_name, path, captions, scene, caption_objects), in file order."""
    try:
        from maccap.data import load_split
    except ImportError:  # the reader module is optional for this module's own tests
        entries = read_json(world_dir / f"captions_{split}.json", f"{split} caption file")
        for e in entries:
            e["path"] = str(world_dir / "images" / e.get("file_path", "") / e["image_name"])
        return entries
    return [{"image_name": r.image_name, "image_id": r.image_id, "path": str(r.path), "captions": list(r.captions),
             "scene": r.scene or [], "caption_objects": r.caption_objects or []}
            for r in load_split(world_dir, split).records]


def _read_image(path: str | Path) -> np.ndarray:
    try:
        from maccap.data import load_image
    except ImportError:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(load_image(path).convert("RGB"))


def load_pairs(world_dir: str | Path, split: str, progress: bool = False) -> Pairs:
    """Images (uint8) with their captions and scene annotations, in file order."""
    world_dir = Path(world_dir)
    entries = split_entries(world_dir, split)
    if not entries:
        raise UserError(f"split {split!r} of {world_dir} is empty; expected image-caption entries")
    arrays = [_read_image(e["path"]) for e in tqdm(entries, desc=f"load {split}", disable=not progress)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Pairs(names=[e["image_name"] for e in entries], images=images,
                 captions=[list(e["captions"]) for e in entries], scenes=[e.get("scene", []) for e in entries],
                 caption_objects=[e.get("caption_objects", []) for e in entries])


def split_hash(world_dir: str | Path, split: str) -> str:
    """Data hash of a split: the manifest's checksum of its caption file, else the file's own sha256."""
    world_dir = Path(world_dir)
    rel = f"captions_{split}.json"
    manifest = world_dir / "manifest.json"
    if manifest.is_file():
        files = read_json(manifest, "world manifest").get("files", {})
        if rel in files:
            return files[rel]
    if not (world_dir / rel).is_file():
        raise UserError(f"{world_dir / rel} not found; expected a quickstart world (maccap-bench world --out DIR)")
    return sha256_file(world_dir / rel)


# ----------------------------------------------------------------------------------------------
# Vocabulary and probes


def probe_prompts() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Prompt ensembles for zero-shot colour and shape: colour c averages 'a c s' over shapes, etc."""
    from maccap.world.config import COLOUR_NAMES, SHAPES

    colour = {c: [f"a {c} shape"] + [f"a {c} {s}" for s in SHAPES] for c in COLOUR_NAMES}
    shape = {s: [f"a {s}"] + [f"a {c} {s}" for c in COLOUR_NAMES] for s in SHAPES}
    return colour, shape


def world_vocabulary(world_dir: Path, arch: str) -> torch.Tensor:
    """Sorted token ids of every text the world holds (all caption files, corpus) plus probe prompts."""
    from maccap.data import load_corpus, load_karpathy

    tok = _tokenizer(arch)
    texts: list[str] = []
    for fn in CAPTION_FILES:  # through the validating readers: a malformed file is a UserError naming it
        p = world_dir / fn
        if not p.is_file():
            continue
        if fn == "corpus_train.json":
            texts.extend(load_corpus(world_dir))
        else:
            texts.extend(c for r in load_karpathy(p) for c in r.captions)
    colour, shape = probe_prompts()
    texts += [t for ts in list(colour.values()) + list(shape.values()) for t in ts]
    return _token_ids(tok, sorted(set(texts)))


def _token_ids(tok: Any, texts: list[str]) -> torch.Tensor:
    """Ids of every token the texts use (plus padding, start and end). The CLIP BPE works word by word,
    so encoding each distinct word piece gives the same ids as encoding the texts themselves."""
    from open_clip.tokenizer import basic_clean, whitespace_clean

    ids: set[int] = set(tok(texts[:1]).flatten().tolist())  # pad, start, end
    pat = getattr(tok, "pat", None)
    if pat is None or not hasattr(tok, "encode"):
        for i in range(0, len(texts), 1024):
            ids.update(tok(texts[i:i + 1024]).flatten().tolist())
        return torch.tensor(sorted(ids), dtype=torch.long)
    # Cleaning and the BPE split never join across whitespace, so the distinct words (a few hundred,
    # against ~100k distinct texts) give the same pieces at a fraction of ftfy's cost.
    raw_words = {w for t in texts for w in t.split()}
    pieces = {p for w in raw_words for p in pat.findall(whitespace_clean(basic_clean(w)).lower())}
    for p in sorted(pieces):
        ids.update(tok.encode(p))
    return torch.tensor(sorted(ids), dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Training


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on gains, biases, embeddings and the temperature (unused vocabulary rows stay zero)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in n or "logit_scale" in n or n.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.steps * cfg.warmup_frac))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


class _Batches:
    """Seeded image order (fresh permutation each epoch) and one random caption per image."""

    def __init__(self, n: int, n_caps: list[int], batch: int, gen: torch.Generator) -> None:
        self.n, self.n_caps, self.batch, self.gen = n, torch.tensor(n_caps), batch, gen
        self.order = torch.randperm(n, generator=gen)
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        caps = (torch.rand(len(idx), generator=self.gen) * self.n_caps[idx]).long()
        return idx, caps


def build_model(name: str, seed: int, vocab: torch.Tensor, init_logit_scale: float) -> nn.Module:
    oc = _open_clip()
    seed_everything(seed)
    model = oc.create_model(name, pretrained=None)
    with torch.no_grad():
        keep = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
        keep[vocab] = True
        model.token_embedding.weight[~keep] = 0.0
        model.logit_scale.fill_(init_logit_scale)
    return model


class _VocabEmbedding:
    """Train only the vocabulary's rows: a small embedding plus an id map that keeps the id order
    (open_clip pools text at argmax(id), the end-of-text token, so the order must be preserved)."""

    def __init__(self, model: nn.Module, vocab: torch.Tensor) -> None:
        self.full = model.token_embedding
        self.vocab = vocab
        self.small = nn.Embedding(len(vocab), self.full.embedding_dim)
        with torch.no_grad():
            self.small.weight.copy_(self.full.weight[vocab])
        self.lookup = torch.zeros(self.full.num_embeddings, dtype=torch.long)
        self.lookup[vocab] = torch.arange(len(vocab))
        model.token_embedding = self.small

    def ids(self, text: torch.Tensor) -> torch.Tensor:
        return self.lookup[text]

    def restore(self, model: nn.Module) -> None:
        with torch.no_grad():
            self.full.weight.zero_()
            self.full.weight[self.vocab] = self.small.weight
        model.token_embedding = self.full


def cache_key(name: str, data_hash: str, vocab: torch.Tensor, seed: int, cfg: TrainConfig) -> str:
    model_cfg = _open_clip().get_model_config(name)
    return hash_config({"version": TRAIN_VERSION, "model": model_cfg, "data": data_hash, "seed": seed,
                        "train": cfg.to_dict(), "vocab": hash_config(vocab.tolist())})


def train_clip(name: str, world_dir: str | Path, seed: int = 0, steps: int | None = None,
               batch_size: int | None = None, lr: float | None = None, cache_dir: str | Path = "work/clip",
               progress: bool = True, config: TrainConfig | None = None) -> TrainedClip:
    """Train quickstart backbone `name` on the world's clip split, or reuse the cached result."""
    BACKBONES.get(name)
    check_seed(seed, "CLIP training seed")
    world_dir = Path(world_dir)
    cfg = config or TrainConfig()
    over = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr)) if v is not None}
    cfg = dataclasses.replace(cfg, **over)
    if cfg.steps < 1 or cfg.batch_size < 2:
        raise UserError(f"--steps must be >= 1 and batch size >= 2 (got {cfg.steps}, {cfg.batch_size})")
    data_hash = split_hash(world_dir, "clip")
    vocab = world_vocabulary(world_dir, name)
    key = cache_key(name, data_hash, vocab, seed, cfg)
    path = Path(cache_dir) / f"{name}-{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = read_json(meta_path, "checkpoint provenance")
        if meta.get("weights_sha256") == sha256_file(path):
            log.info("reusing trained %s from %s", name, path)
            return TrainedClip(path, meta.get("metrics", {}), meta, reused=True)
        log.warning("checkpoint %s does not match its provenance checksum; retraining", path)
    return _train(name, world_dir, seed, cfg, vocab, data_hash, key, path, progress)


def _train(name: str, world_dir: Path, seed: int, cfg: TrainConfig, vocab: torch.Tensor, data_hash: str,
           key: str, path: Path, progress: bool) -> TrainedClip:
    pairs = load_pairs(world_dir, "clip", progress=progress)
    model = build_model(name, seed, vocab, cfg.init_logit_scale)
    tok = _tokenizer(name)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = int(model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0])
    emb = _VocabEmbedding(model, vocab)
    gen = seed_everything(seed)
    batches = _Batches(len(pairs.names), [len(c) for c in pairs.captions], min(cfg.batch_size, len(pairs.names)), gen)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    t0 = time.time()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=f"train {name}", disable=not progress)
    for step in bar:
        idx, caps = batches.next()
        x = to_model_input(pairs.images[idx], size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        text = emb.ids(tok([pairs.captions[i][c] for i, c in zip(idx.tolist(), caps.tolist())]))
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        loss = _clip_loss(model, x, text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
        losses.append(float(loss.detach()))
        faults.checkpoint("clip-step")
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    train_s = time.time() - t0
    emb.restore(model)
    model.eval()
    # fp16 storage keeps the file small; the metrics below are measured on exactly these stored weights
    state = sparsify({k: (v.half() if v.is_floating_point() else v).detach().contiguous()
                      for k, v in model.state_dict().items()})
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp))  # no metadata: its key order is not stable, and the bytes must be
    faults.checkpoint("clip-saved")
    backbone = load_backbone(name, weights=path)  # evaluate exactly what was stored
    metrics = evaluate_backbone(backbone, world_dir, cfg.eval_split, progress=progress, seed=seed)
    meta = {
        "name": name, "cache_key": key, "train_version": TRAIN_VERSION,
        "model_config": _open_clip().get_model_config(name), "train_config": cfg.to_dict(),
        "data_hash_clip": data_hash, "vocab_size_used": int(len(vocab)), "seed": seed, "steps": cfg.steps,
        "init_logit_scale": math.exp(cfg.init_logit_scale), "final_logit_scale": backbone.logit_scale,
        "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
        "metrics": metrics, "train_time_s": round(train_s, 1), "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "weights_sha256": sha256_file(path),
        "weights_bytes": path.stat().st_size,
    }
    atomic_write_json(path.with_suffix(".json"), meta)
    log.info("trained %s in %.0f s: %s", name, train_s, {k: round(v, 3) for k, v in metrics.items()})
    return TrainedClip(path, metrics, meta)


def _clip_loss(model: nn.Module, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    img = model.encode_image(x, normalize=True)
    txt = model.encode_text(text, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
    target = torch.arange(len(x))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def shipped_matches(name: str, world_dir: str | Path, seed: int, cfg: TrainConfig) -> Path | None:
    """The shipped weights when their provenance matches this world and these settings, else None."""
    spec = BACKBONES.get(name)
    w, meta_path = spec.shipped_weights, spec.shipped_weights.with_suffix(".json")
    if not (w.is_file() and meta_path.is_file()):
        return None
    meta = read_json(meta_path, "shipped weights provenance")
    vocab = world_vocabulary(Path(world_dir), name)
    key = cache_key(name, split_hash(world_dir, "clip"), vocab, seed, cfg)
    if meta.get("cache_key") != key or meta.get("weights_sha256") != sha256_file(w):
        return None
    return w


def ensure_backbone(name: str, world_dir: str | Path, seed: int = 0, cache_dir: str | Path = "work/clip",
                    steps: int | None = None, progress: bool = True, device: str = "cpu") -> tuple[Backbone, TrainedClip]:
    """Shipped weights when they match the world and settings; otherwise train (or reuse the cache)."""
    BACKBONES.get(name)
    check_seed(seed, "CLIP training seed")
    cfg = shipped_train_config(name)
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps)
    shipped = shipped_matches(name, world_dir, seed, cfg)
    if shipped is not None:
        meta = read_json(shipped.with_suffix(".json"), "shipped weights provenance")
        log.info("using shipped weights %s (provenance matches the world)", shipped)
        return load_backbone(name, device, weights=shipped), TrainedClip(shipped, meta.get("metrics", {}), meta, True)
    from filelock import FileLock

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(cache_dir) / f".{name}.lock")):  # concurrent sweep jobs train it once, then reuse it
        trained = train_clip(name, world_dir, seed, cache_dir=cache_dir, progress=progress, config=cfg)
    return load_backbone(name, device, weights=trained.path), trained


# Per-backbone training settings of the shipped weights (reproduced by `clip-train` by default).
SHIPPED_CONFIGS: dict[str, TrainConfig] = {
    "qs-rn": TrainConfig(steps=800, batch_size=64, lr=1e-3),
    "qs-vit": TrainConfig(steps=500, batch_size=64, lr=1e-3),
}


def shipped_train_config(name: str) -> TrainConfig:
    return SHIPPED_CONFIGS.get(name, TrainConfig())


# ----------------------------------------------------------------------------------------------
# Evaluation


_WORD = re.compile(r"[a-z]+")


def _mentioned(caption: str, obj: dict[str, Any]) -> dict[str, str]:
    """Which attributes of a named object the caption states (by the words it uses)."""
    from maccap.world.config import SHAPE_PLURALS

    words = set(_WORD.findall(caption.lower()))
    out = {}
    if obj["shape"] in words or SHAPE_PLURALS.get(obj["shape"], "") in words:
        out["shape"] = obj["shape"]
    if obj["colour"] in words:
        out["colour"] = obj["colour"]
    if obj.get("size") in words:
        out["size"] = obj["size"]
    return out


def caption_claims(caption: str, scene: list[dict[str, Any]], objects: list[int]) -> list[dict[str, str]]:
    """The attribute sets a caption asserts, one per object it names."""
    return [c for c in (_mentioned(caption, scene[i]) for i in objects if 0 <= i < len(scene)) if c]


def true_of(claims: list[dict[str, str]], scene: list[dict[str, Any]]) -> bool:
    """A caption holds for a scene when every object it names has a match with the stated attributes."""
    return all(any(all(o.get(k) == v for k, v in c.items()) for o in scene) for c in claims)


def consistency_matrix(pairs: Pairs) -> torch.Tensor:
    """[images, captions] bool: caption true of image. Uses the world's caption parser when it exists
    (every stated mention, relation and count holds), else the named objects' attributes."""
    scenes = pairs.scenes
    if not any(scenes):
        return torch.zeros(len(scenes), sum(len(c) for c in pairs.captions), dtype=torch.bool)
    try:
        from maccap.world.parse import parse_caption, satisfies
    except ImportError:
        claims = [caption_claims(c, scenes[i], (pairs.caption_objects[i] or [[]] * len(caps))[j])
                  for i, caps in enumerate(pairs.captions) for j, c in enumerate(caps)]
        return torch.tensor([[true_of(cl, sc) for cl in claims] for sc in scenes])
    parsed = [parse_caption(c) for caps in pairs.captions for c in caps]
    return torch.tensor([[satisfies(p, sc) for p in parsed] for sc in scenes])


def _recalls(sim: torch.Tensor, gt: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """sim [Q, C]; gt [Q, C] bool: fraction of queries with a positive in the top k."""
    top = sim.topk(max(ks), dim=1).indices
    hits = gt.gather(1, top)
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


@torch.no_grad()
def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor, consistent: torch.Tensor,
                      ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """img [N, D], txt [M, D], owner [M] image index of each caption, consistent [N, M] caption true of image."""
    sim = img @ txt.T
    paired = owner[None, :] == torch.arange(len(img))[:, None]
    out = {}
    for k, v in _recalls(sim, paired, ks).items():
        out[f"i2t_r{k}"] = v
    for k, v in _recalls(sim.T, paired.T, ks).items():
        out[f"t2i_r{k}"] = v
    for k, v in _recalls(sim, consistent, ks).items():
        out[f"i2t_consistent_r{k}"] = v
    for k, v in _recalls(sim.T, consistent.T, ks).items():
        out[f"t2i_consistent_r{k}"] = v
    return out


def probe_images(n_per: int = 4, seed: int = 1234, size: int = 64) -> tuple[list[Any], list[str], list[str]]:
    """Single-object images for every (colour, shape), in random cells and sizes."""
    from maccap.world.config import COLOUR_NAMES, HPOS, SHAPES, SIZES, VPOS
    from maccap.world.scene import make_object, render_scene

    rng = np.random.default_rng(seed)
    images, colours, shapes = [], [], []
    for c in COLOUR_NAMES:
        for s in SHAPES:
            for _ in range(n_per):
                obj = make_object(s, c, SIZES[rng.integers(len(SIZES))], HPOS[rng.integers(3)], VPOS[rng.integers(3)],
                                  frame=size)
                images.append(render_scene([obj], size, rng))
                colours.append(c)
                shapes.append(s)
    return images, colours, shapes


def _ensemble(backbone: Backbone, prompts: dict[str, list[str]]) -> torch.Tensor:
    feats = [F.normalize(backbone.encode_text(p).mean(dim=0), dim=-1) for p in prompts.values()]
    return torch.stack(feats)


@torch.no_grad()
def zero_shot_probes(backbone: Backbone, size: int = 64) -> dict[str, float]:
    images, colours, shapes = probe_images(size=size)
    img = backbone.encode_image(images)
    colour_p, shape_p = probe_prompts()
    out = {}
    for label, prompts, truth in (("colour", colour_p, colours), ("shape", shape_p, shapes)):
        classes = list(prompts)
        pred = (img @ _ensemble(backbone, prompts).T).argmax(dim=1)
        out[f"zeroshot_{label}"] = float(np.mean([classes[p] == t for p, t in zip(pred.tolist(), truth)]))
    return out


@torch.no_grad()
def evaluate_backbone(backbone: Backbone, world_dir: str | Path, split: str = "val", progress: bool = False,
                      seed: int = 0, batch_size: int = 256, probes: bool = True) -> dict[str, float]:
    """Recall@1/5 (paired and consistent), zero-shot colour/shape, logit scale, centroid gap of val pairs.

    Consistent recall needs scene annotations (quickstart data); without them it equals paired recall.
    """
    pairs = load_pairs(world_dir, split)
    prep = backbone.preprocess
    img = torch.cat([backbone.encode_image(torch.stack([prep(_to_pil(a)) for a in pairs.images[i:i + batch_size]]))
                     for i in range(0, len(pairs.names), batch_size)])
    texts, owner = [], []
    for i, caps in enumerate(pairs.captions):
        texts += caps
        owner += [i] * len(caps)
    txt = torch.cat([backbone.encode_text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    owner_t = torch.tensor(owner)
    consistent = consistency_matrix(pairs)
    consistent |= owner_t[None, :] == torch.arange(len(img))[:, None]
    metrics = retrieval_metrics(img, txt, owner_t, consistent)
    if probes:
        metrics.update(zero_shot_probes(backbone, size=int(pairs.images.shape[-1])))
    metrics["logit_scale"] = backbone.logit_scale
    metrics["centroid_gap"] = float((img[owner_t].mean(0) - txt.mean(0)).norm())
    metrics["n_images"] = float(len(img))
    metrics["n_captions"] = float(len(txt))
    return metrics


def _to_pil(arr: torch.Tensor) -> Any:
    from PIL import Image

    return Image.fromarray(arr.permute(1, 2, 0).numpy())
