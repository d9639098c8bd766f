"""SynTIC in the shared harness: synthetic image-text pairs for text-only captioning.

How each component of the paper (METHOD.md section 3) is realised here:

1. Synthetic pairs. Every training caption is rendered to an image by a text-to-image renderer
   (`maccap.renderers`: the world's own renderer on the quickstart world, a diffusers pipeline
   elsewhere) and encoded by the frozen CLIP image encoder; these features replace the text
   features (plus noise) that MacCap/CapDec train on.
2. Feature alignment. Rendered images are not the real images, so their features are pulled toward
   the paired caption features (the region of CLIP space the real pairs share) by a small adapter
   a(x) = normalise(x + W x + b): `align="mean-shift"` is the closed form (W = 0, b = mean(t) - mean(s),
   the centroid correction); `align="adapter"` starts there and trains W, b for a few hundred steps
   on a symmetric InfoNCE loss between a(s_i) and the caption features t_j at temperature
   `align_temperature`, plus `align_pull` x (1 - cos(a(s_i), t_i)). Captions with identical text
   are not counted as negatives. The adapter is frozen afterwards and, with `align_test`, also
   applied to real image features at test time.
3. Re-representation through text. The (aligned) image feature is projected onto the text features
   of the training corpus, normalise(softmax(sim / T) @ bank) as DeCap does, T = `project_temperature`,
   at training time (synthetic features) and at test time (real image features).
   `project_exclude_self` drops bank entries whose text equals the training caption (leave-one-out);
   off by default.
4. Salient objects (optional, `objects` = k > 0). A vocabulary of object prompts (on the quickstart
   world "a {colour} {shape}" and "a {shape}") is encoded by CLIP. In training the objects the caption
   names are taken (padded cyclically to k; top-k by similarity when it names none); at test time the
   k prompts most similar to the aligned image feature stand in for a detector. Their text features
   are k extra memory tokens after the projected image feature.

The memory [B, 1 + k, D] goes through the method's usual aligner and the frozen LM, trained by the
shared loop (`maccap.train.fit`) and decoded by the shared beam search, so differences between
methods come from the method. `SynticBridge` wraps the aligner: in train mode it receives the memory
built here; in eval mode it receives the raw image feature (test_memory "cls") and builds the memory
itself (align -> project -> objects).

Synthetic-vs-real gap: `synthetic_real_pairs(...)` renders every val/test caption and pairs its
features with the real image's; `synthetic_real_gap(pairs)` runs the project's gap analysis on
d = real - synthetic and reports the centroid gaps between the three populations:

    from maccap import syntic
    from maccap.backbones import load_backbone
    pairs = syntic.synthetic_real_pairs(load_backbone("qs-rn"), "WORK/world-s0", "WORK/features", ("val", "test"))
    report = syntic.synthetic_real_gap(pairs)  # report["summary"], report["gap"], report["metrics"]
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from maccap.errors import UserError
from maccap.renderers import get_renderer, synthetic_features

log = logging.getLogger(__name__)

ALIGN_MODES = ("none", "mean-shift", "adapter")


@dataclass(frozen=True)
class SynticConfig:
    """SynTIC's own knobs; a MethodConfig carries them as `syntic_<field>`."""

    renderer: str = "world"
    renderer_model: str | None = None  # diffusers: hub id or local directory
    renderer_steps: int = 25  # diffusers: denoising steps
    render_seed: int | None = 0  # seed of the synthetic images; None: the training seed (renders per seed)
    align: str = "adapter"  # none | mean-shift | adapter
    align_temperature: float = 0.07
    align_pull: float = 1.0
    align_steps: int = 300
    align_lr: float = 1e-2
    align_batch: int = 256
    align_test: bool = True  # apply the adapter to real image features at test time
    project: bool = True
    project_temperature: float = 0.01
    project_exclude_self: bool = False
    objects: int = 3  # salient-object memory tokens (0: off)
    object_vocab: str | None = None  # text file, one object word per line (None: the world vocabulary)

    def __post_init__(self) -> None:
        if self.align not in ALIGN_MODES:
            raise UserError(f"syntic_align={self.align!r}; expected one of {', '.join(ALIGN_MODES)}")
        for name in ("align_temperature", "project_temperature", "align_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"syntic_{name} must be > 0, got {getattr(self, name)}")
        if self.objects < 0 or self.align_steps < 0 or self.align_batch < 2:
            raise UserError("syntic_objects and syntic_align_steps must be >= 0, syntic_align_batch >= 2")

    @classmethod
    def from_method(cls, method: Any) -> "SynticConfig":
        """Read `syntic_<field>` attributes of a MethodConfig (missing ones keep the defaults)."""
        kw = {f.name: getattr(method, f"syntic_{f.name}") for f in fields(cls) if hasattr(method, f"syntic_{f.name}")}
        return cls(**kw)

    def renderer_options(self) -> dict[str, Any]:
        if self.renderer == "diffusers":
            return {"model": self.renderer_model or "", "steps": self.renderer_steps}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# alignment: pull synthetic image features toward the caption features

class FeatureAdapter(nn.Module):
    """a(x) = normalise(x + x W^T + b); W = 0 and b = 0 is the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + x @ self.weight.T + self.bias, dim=-1)


def centroid_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|| mean(a) - mean(b) || (the modality gap of Liang et al.)."""
    return float((a.float().mean(0) - b.float().mean(0)).norm())


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def _same_text(t: torch.Tensor) -> torch.Tensor:
    """[B, B] True where two caption features are identical (duplicate captions: not negatives)."""
    return t @ t.T > 1 - 1e-5


def fit_adapter(synthetic: torch.Tensor, text: torch.Tensor, cfg: SynticConfig, seed: int,
                progress: bool = False) -> tuple[FeatureAdapter, dict[str, Any]]:
    """The frozen alignment adapter for (synthetic s_i, caption t_i) pairs, and before/after statistics."""
    s, t = F.normalize(synthetic.float(), dim=-1), F.normalize(text.float(), dim=-1)
    adapter = FeatureAdapter(s.shape[1])
    if cfg.align in ("mean-shift", "adapter"):
        with torch.no_grad():
            adapter.bias.copy_(t.mean(0) - s.mean(0))
    losses: list[float] = []
    if cfg.align == "adapter" and cfg.align_steps > 0:
        gen = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.Adam(adapter.parameters(), lr=cfg.align_lr)
        bs = min(cfg.align_batch, len(s))
        for _ in tqdm(range(cfg.align_steps), desc="syntic alignment", disable=not progress):
            idx = torch.randperm(len(s), generator=gen)[:bs]
            loss = alignment_loss(adapter(s[idx]), t[idx], cfg.align_temperature, cfg.align_pull)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    adapter.requires_grad_(False)
    adapter.eval()
    with torch.no_grad():
        a = adapter(s)
    stats = {"mode": cfg.align, "n_pairs": len(s),
             "centroid_gap_before": centroid_gap(s, t), "centroid_gap_after": centroid_gap(a, t),
             "paired_cosine_before": paired_cosine(s, t), "paired_cosine_after": paired_cosine(a, t),
             "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
    log.info("syntic alignment (%s): centroid gap %.3f -> %.3f, paired cosine %.3f -> %.3f", cfg.align,
             stats["centroid_gap_before"], stats["centroid_gap_after"], stats["paired_cosine_before"],
             stats["paired_cosine_after"])
    return adapter, stats


def alignment_loss(a: torch.Tensor, t: torch.Tensor, temperature: float, pull: float) -> torch.Tensor:
    """Symmetric InfoNCE between aligned features a_i and captions t_j, plus pull * mean(1 - cos(a_i, t_i))."""
    logits = a @ t.T / temperature
    pos = _same_text(t).float()
    target = pos / pos.sum(1, keepdim=True)
    nce = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())
    return nce + pull * (1 - (a * t).sum(-1)).mean()


# ---------------------------------------------------------------------------------------------------
# re-representation through the text features of the training corpus

def project_onto_texts(feats: torch.Tensor, bank: torch.Tensor, temperature: float,
                       exclude: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """normalise(softmax(f . bank^T / T) @ bank) per row (DeCap's projection), in batches.

    `exclude` [N, D]: per row, bank entries identical to exclude[i] (cosine > 1 - 1e-5) get no weight,
    unless that would leave none.
    """
    out = []
    bank = bank.to(feats)
    for s in range(0, len(feats), batch_size):
        f = feats[s:s + batch_size]
        sims = f @ bank.T / temperature
        if exclude is not None:
            mask = exclude[s:s + batch_size].to(bank) @ bank.T > 1 - 1e-5
            mask &= ~mask.all(1, keepdim=True)
            sims = sims.masked_fill(mask, float("-inf"))
        out.append(F.normalize(sims.softmax(-1) @ bank, dim=-1))
    return torch.cat(out) if out else feats.new_zeros(0, bank.shape[1])


# ---------------------------------------------------------------------------------------------------
# salient objects

def world_object_prompts() -> list[str]:
    from maccap.world import COLOUR_NAMES, SHAPES

    return [_article(f"{c} {s}") for s in SHAPES for c in COLOUR_NAMES] + [_article(s) for s in SHAPES]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def world_caption_objects(caption: str) -> list[str]:
    """The object prompts a world caption names ("a red circle", "a star"), in order, no duplicates."""
    from maccap.world import parse_caption

    p = parse_caption(caption)
    found = []
    for m in p["mentions"]:
        shape = m["shape"]
        if shape is None:
            continue
        found.append(_article(f"{m['colour']} {shape}" if m["colour"] else shape))
    if p["count_shape"]:
        c = p["count_colour"]
        found.append(_article(f"{c} {p['count_shape']}" if c else p["count_shape"]))
    return list(dict.fromkeys(found))


class ObjectVocabulary:
    """Object prompts with CLIP text features; extraction from captions and top-k selection for images."""

    def __init__(self, prompts: Sequence[str], feats: torch.Tensor, world: bool) -> None:
        self.prompts = list(prompts)
        self.index = {p: i for i, p in enumerate(self.prompts)}
        self.feats = F.normalize(feats.float(), dim=-1)
        self.world = world
        self._words = [re.compile(rf"\b{re.escape(p)}s?\b") for p in self.prompts]

    @classmethod
    def build(cls, backbone: Any, vocab_file: str | None = None) -> "ObjectVocabulary":
        if vocab_file is None:
            prompts, world = world_object_prompts(), True
        else:
            path = Path(vocab_file)
            if not path.is_file():
                raise UserError(f"syntic_object_vocab: {path} not found; expected a text file with one object per line")
            prompts = list(dict.fromkeys(w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()
                                         if w.strip()))
            if not prompts:
                raise UserError(f"syntic_object_vocab: {path} lists no objects")
            world = False
        return cls(prompts, backbone.encode_text(prompts).cpu(), world)

    def from_caption(self, caption: str) -> list[int]:
        if self.world:
            return [self.index[p] for p in world_caption_objects(caption) if p in self.index]
        low = caption.lower()
        return [i for i, rx in enumerate(self._words) if rx.search(low)]

    def top_k(self, feats: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k] indices of the prompts most similar to each (normalised) image feature."""
        sims = F.normalize(feats.float(), dim=-1) @ self.feats.to(feats.device).T
        return sims.topk(min(k, len(self.prompts)), dim=-1).indices

    def caption_tokens(self, captions: Sequence[str], fallback: torch.Tensor, k: int) -> torch.Tensor:
        """[N, k, D] object tokens for training: the caption's objects, cycled to k; top-k of `fallback` if none."""
        top = self.top_k(fallback, k)
        rows = []
        for i, cap in enumerate(captions):
            found = self.from_caption(cap)
            idx = [found[j % len(found)] for j in range(k)] if found else top[i].tolist()
            idx = (idx * k)[:k]
            rows.append(idx)
        return self.feats[torch.tensor(rows, dtype=torch.long)]


# ---------------------------------------------------------------------------------------------------
# the bridge used by the captioner

class SynticBridge(nn.Module):
    """The method's aligner behind SynTIC's test-time feature pipeline.

    train mode: `memory` is the training memory built by `training_memory` ([B, 1 + k, D]).
    eval mode: `memory` holds the image feature in token 0 ([B, M, D]); the bridge aligns it, projects
    it onto the corpus text features and appends the k most similar object prompts.
    """

    def __init__(self, aligner: nn.Module, cfg: SynticConfig, bank: torch.Tensor,
                 objects: ObjectVocabulary | None) -> None:
        super().__init__()
        self.aligner = aligner
        self.cfg = cfg
        self.adapter = FeatureAdapter(bank.shape[1]).requires_grad_(False)
        self.register_buffer("bank", F.normalize(bank.float(), dim=-1), persistent=False)
        self.objects = objects
        obj = objects.feats if objects is not None else torch.zeros(0, bank.shape[1])
        self.register_buffer("object_feats", obj.clone(), persistent=False)
        self.info: dict[str, Any] = {}

    @property
    def prefix_len(self) -> int:
        return int(getattr(self.aligner, "prefix_len"))

    def train(self, mode: bool = True) -> "SynticBridge":
        super().train(mode)
        self.adapter.eval()  # frozen after alignment
        return self

    def aligned(self, feats: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(feats.float(), dim=-1)
        return self.adapter(feats) if self.cfg.align != "none" else feats

    def test_memory(self, image_feats: torch.Tensor) -> torch.Tensor:
        """[B, D] real image features -> [B, 1 + k, D] memory."""
        a = self.aligned(image_feats) if self.cfg.align_test else F.normalize(image_feats.float(), dim=-1)
        p = project_onto_texts(a, self.bank, self.cfg.project_temperature) if self.cfg.project else a
        parts = [p[:, None]]
        if self.cfg.objects > 0 and len(self.object_feats):
            sims = a @ self.object_feats.T
            idx = sims.topk(min(self.cfg.objects, len(self.object_feats)), dim=-1).indices
            idx = idx.repeat(1, math.ceil(self.cfg.objects / idx.shape[1]))[:, : self.cfg.objects]
            parts.append(self.object_feats[idx])
        return torch.cat(parts, dim=1)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        if memory.dim() == 2:
            memory = memory[:, None]
        if self.training:
            return self.aligner(memory)
        with torch.no_grad():
            mem = self.test_memory(memory[:, 0])
        return self.aligner(mem.to(memory.dtype))


def training_memory(bridge: SynticBridge, synthetic: torch.Tensor, text: torch.Tensor, captions: Sequence[str],
                    seed: int, progress: bool = False) -> torch.Tensor:
    """Fit the adapter on (synthetic, caption) pairs and build the training memory [N, 1 + k, D]."""
    cfg = bridge.cfg
    adapter, stats = fit_adapter(synthetic, text, cfg, seed, progress)
    bridge.adapter.load_state_dict(adapter.state_dict())
    with torch.no_grad():  # on the CPU, with the fitted (CPU) copy of the adapter
        s = F.normalize(synthetic.float().cpu(), dim=-1)
        a = adapter(s) if cfg.align != "none" else s
        p = project_onto_texts(a, bridge.bank.cpu(), cfg.project_temperature,
                               exclude=text if cfg.project_exclude_self else None) if cfg.project else a
    stats["centroid_gap_memory_text"] = centroid_gap(p, text)
    stats["paired_cosine_memory_text"] = paired_cosine(p, text)
    bridge.info = {"alignment": stats}
    parts = [p[:, None]]
    if cfg.objects > 0 and bridge.objects is not None:
        parts.append(bridge.objects.caption_tokens(captions, a, cfg.objects))
    return torch.cat(parts, dim=1).float()


def attach(captioner: Any, method: Any, backbone: Any, corpus_feats: torch.Tensor,
           cfg: SynticConfig | None = None) -> SynticBridge:
    """Wrap captioner.bridge (the method's aligner) in a SynticBridge; the adapter weights load with it.

    `cfg` defaults to the method's `syntic_*` fields.
    """
    cfg = cfg or SynticConfig.from_method(method)
    objects = ObjectVocabulary.build(backbone, cfg.object_vocab) if cfg.objects > 0 else None
    dev = captioner.device
    bridge = SynticBridge(captioner.bridge, cfg, corpus_feats, objects).to(dev)
    captioner.bridge = bridge
    return bridge


def prepare_training(captioner: Any, backbone: Any, corpus: Sequence[str], corpus_feats: torch.Tensor,
                     cache_dir: str | Path, train_seed: int, progress: bool = False) -> torch.Tensor:
    """Render + encode the corpus (cached), align, and return the memory.

    The synthetic images are an artefact like the corpus: rendered once with `render_seed` and shared by
    every training seed (set render_seed None to re-render per training seed).
    """
    bridge: SynticBridge = captioner.bridge
    cfg = bridge.cfg
    renderer = get_renderer(cfg.renderer, cfg.renderer_options(), device=str(captioner.device))
    seed = train_seed if cfg.render_seed is None else cfg.render_seed
    synth = synthetic_features(backbone, corpus, renderer, seed, cache_dir, progress=progress)
    return training_memory(bridge, synth, corpus_feats, corpus, train_seed, progress)


# ---------------------------------------------------------------------------------------------------
# synthetic-vs-real feature gap

@dataclass
class SyntheticRealPairs:
    """Per caption of the evaluated splits: the synthetic image feature, the caption feature and the real image."""

    real: torch.Tensor  # [n_images, D] real image features (CLS)
    synthetic: torch.Tensor  # [n_captions, D]
    text: torch.Tensor  # [n_captions, D]
    text_image: np.ndarray  # [n_captions] index of the caption's real image
    splits: tuple[str, ...]
    renderer: dict[str, Any]


def synthetic_real_pairs(backbone: Any, data_dir: str | Path, cache_dir: str | Path,
                         splits: Sequence[str] = ("val", "test"), renderer: str = "world",
                         renderer_options: dict[str, Any] | None = None, seed: int = 0,
                         progress: bool = False) -> SyntheticRealPairs:
    """Render every caption of `splits` and pair its features with the real image's (all cached)."""
    from maccap import features
    from maccap.data import load_split

    rend = get_renderer(renderer, renderer_options, device=str(getattr(backbone, "device", "cpu")))
    reals, synths, texts, owners = [], [], [], []
    offset = 0
    for split in splits:
        names, toks = features.image_tokens(backbone, data_dir, split, cache_dir, progress=progress)
        by_name = {r.image_name: r for r in load_split(data_dir, split).records}
        caps, own = [], []
        for i, n in enumerate(names):
            for c in by_name[n].captions:
                caps.append(c)
                own.append(offset + i)
        reals.append(toks.cls)
        synths.append(synthetic_features(backbone, caps, rend, seed, cache_dir, progress=progress))
        texts.append(features.text_features(backbone, caps, cache_dir, progress=progress))
        owners.append(np.asarray(own))
        offset += len(names)
    return SyntheticRealPairs(torch.cat(reals), torch.cat(synths), torch.cat(texts), np.concatenate(owners),
                              tuple(splits), rend.ident())


def synthetic_real_gap(pairs: SyntheticRealPairs, gap_config: Any = None) -> dict[str, Any]:
    """Gap analysis of d = real - synthetic (paired by caption), plus centroid gaps to the captions.

    Uses `analysis.gap.analyze_gap` (centroid gap, isotropic sigma^2, zero-mean and normality tests);
    the import is local because `analysis` sits above `maccap` in the dependency order.
    """
    from analysis.gap import analyze_gap, paired_batches

    real = pairs.real.float().numpy()
    synth = pairs.synthetic.float().numpy()
    result = analyze_gap(paired_batches(real, synth, pairs.text_image), real.shape[1], gap_config,
                         meta={"kind": "synthetic-vs-real", "renderer": pairs.renderer, "splits": list(pairs.splits)})
    real_per_caption = pairs.real[torch.as_tensor(pairs.text_image)]
    summary = {
        "centroid_gap_real_synthetic": centroid_gap(real_per_caption, pairs.synthetic),
        "centroid_gap_real_text": centroid_gap(real_per_caption, pairs.text),
        "centroid_gap_synthetic_text": centroid_gap(pairs.synthetic, pairs.text),
        "paired_cosine_real_synthetic": paired_cosine(real_per_caption, pairs.synthetic),
        "paired_cosine_real_text": paired_cosine(real_per_caption, pairs.text),
        "paired_cosine_synthetic_text": paired_cosine(pairs.synthetic, pairs.text),
        "n_captions": int(len(pairs.synthetic)), "n_images": int(len(pairs.real)),
    }
    return {"summary": summary, "gap": result.report["gap"], "metrics": result.report["metrics"],
            "report": result.report}
