"""Subregion proximity study (METHOD.md section 1, finding 1), with its selection-effect control.

For every (image, caption) pair: cosine of the whole-image feature to the caption versus each
subregion's (grid crops, sliding windows, attention-selected token regions). The best of K crops
beats the whole image even for an unrelated caption, purely because it is a maximum over K noisy
scores; so every statistic is computed twice, against the image's own caption and against a
mismatched caption (one of another image's), and the finding is the difference between the two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of width/height


@dataclass
class SubregionConfig:
    grid_scales: tuple[int, ...] = (2, 3)
    sliding: tuple[tuple[float, float], ...] = ((0.5, 0.25), (0.67, 1 / 6))  # (window, stride) fractions
    attention_k: int = 10
    attention_weighting: str = "softmax_probs"
    attention_plus_cls: bool = True  # also the memory-token form normalise(cls + region)
    batch_size: int = 64
    seed: int = 0


def grid_boxes(scale: int) -> list[Box]:
    """scale x scale non-overlapping cells."""
    s = 1.0 / scale
    return [(c * s, r * s, (c + 1) * s, (r + 1) * s) for r in range(scale) for c in range(scale)]


def sliding_boxes(window: float, stride: float) -> list[Box]:
    """Square windows of side `window` moved by `stride`, last window flush with the border."""
    starts = list(np.arange(0.0, 1.0 - window + 1e-9, stride))
    if not starts or starts[-1] < 1.0 - window - 1e-9:
        starts.append(1.0 - window)
    return [(float(x), float(y), float(x + window), float(y + window)) for y in starts for x in starts]


def crop_sets(config: SubregionConfig) -> dict[str, list[Box]]:
    sets = {f"grid{s}": grid_boxes(s) for s in config.grid_scales}
    for w, st in config.sliding:
        sets[f"slide{round(w * 100)}"] = sliding_boxes(w, st)
    return sets


def crop_images(images: Sequence[Any], boxes: Sequence[Box]) -> list[Any]:
    """Crop every PIL image by every box (row-major: image, then box)."""
    out = []
    for im in images:
        w, h = im.size
        for x0, y0, x1, y1 in boxes:
            out.append(im.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))))
    return out


def encode_crops(encode: Callable[[list[Any]], torch.Tensor], images: Sequence[Any], boxes: Sequence[Box],
                 batch_size: int = 64) -> np.ndarray:
    """[N, K, D] normalised crop features; crops are encoded in batches across images."""
    k = len(boxes)
    per_batch = max(1, batch_size // max(k, 1))
    chunks = []
    for s in range(0, len(images), per_batch):
        crops = crop_images(images[s:s + per_batch], boxes)
        feats = encode(crops).float()
        chunks.append(feats.reshape(-1, k, feats.shape[-1]).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, k, 0))


def attention_regions(tokens: torch.Tensor, attn: torch.Tensor, cls: torch.Tensor, k: int,
                      weighting: str, plus_cls: bool) -> dict[str, np.ndarray]:
    """MacCap's attention-selected regions (maccap.subregions.select_regions), normalised."""
    from maccap.subregions import select_regions

    regions, _ = select_regions(tokens, attn, k=k, weighting=weighting)
    regions = torch.nn.functional.normalize(regions.float(), dim=-1)
    out = {f"attn{k}": regions.cpu().numpy()}
    if plus_cls:
        mem = torch.nn.functional.normalize(cls.float()[:, None, :] + regions, dim=-1)
        out[f"attn{k}+cls"] = mem.cpu().numpy()
    return out


def mismatched_captions(text_image: np.ndarray, seed: int) -> np.ndarray:
    """For each caption j, the index of a caption of a different image (seeded, uniform)."""
    text_image = np.asarray(text_image)
    rng = np.random.default_rng(seed)
    m = len(text_image)
    if len(np.unique(text_image)) < 2:
        raise ValueError("a mismatched-caption control needs captions of at least two images")
    ctrl = rng.integers(0, m, size=m)
    bad = text_image[ctrl] == text_image
    while bad.any():
        ctrl[bad] = rng.integers(0, m, size=int(bad.sum()))
        bad = text_image[ctrl] == text_image
    return ctrl


@dataclass
class PairScores:
    """Per-pair similarities for one crop kind: whole [M], crops [M, K]."""

    whole: np.ndarray
    crops: np.ndarray

    @property
    def best(self) -> np.ndarray:
        return self.crops.max(axis=1)

    @property
    def best_index(self) -> np.ndarray:
        return self.crops.argmax(axis=1)

    @property
    def mean(self) -> np.ndarray:
        return self.crops.mean(axis=1)


def pair_scores(whole: np.ndarray, crops: np.ndarray, text: np.ndarray, text_image: np.ndarray,
                caption_index: np.ndarray | None = None) -> PairScores:
    """Cosines of image text_image[j] (whole and crops) to caption caption_index[j] (default j)."""
    cap = np.arange(len(text_image)) if caption_index is None else caption_index
    t = text[cap]
    w = np.einsum("md,md->m", whole[text_image], t)
    c = np.einsum("mkd,md->mk", crops[text_image], t)
    return PairScores(w, c)


def _per_image(values: np.ndarray, text_image: np.ndarray) -> np.ndarray:
    """Average pair values over the captions of each image (images are the independent units)."""
    ids, inv = np.unique(text_image, return_inverse=True)
    return np.bincount(inv, weights=values) / np.bincount(inv)


def _wilcoxon(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    if x.size < 2 or np.all(x == 0):
        return float("nan")
    nz = x[x != 0]
    ties = len(np.unique(np.abs(nz))) < len(nz)
    # exact null only for small tie-free samples; scipy's permutation fallback with ties costs minutes
    method = "exact" if len(nz) <= 50 and not ties else "asymptotic"
    return float(stats.wilcoxon(x, method=method).pvalue)


def side_stats(s: PairScores, text_image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Win-rate of the best crop, distribution of best - whole, mean over crops, Wilcoxon (per image)."""
    if mask is not None:
        s, text_image = PairScores(s.whole[mask], s.crops[mask]), text_image[mask]
    if len(s.whole) == 0:
        return {"n_pairs": 0}
    diff = s.best - s.whole
    q = np.quantile(diff, [0.05, 0.25, 0.5, 0.75, 0.95])
    per_img = _per_image(diff, text_image)
    return {"n_pairs": int(len(diff)), "n_images": int(len(per_img)),
            "win_rate": float(np.mean(s.best > s.whole)),
            "win_rate_mean_crop": float(np.mean(s.mean > s.whole)),
            "frac_crops_beating_whole": float(np.mean(s.crops > s.whole[:, None])),
            "best_minus_whole_mean": float(diff.mean()),
            "best_minus_whole_quantiles": [float(x) for x in q],
            "mean_crop_minus_whole_mean": float(np.mean(s.mean - s.whole)),
            "whole_mean": float(s.whole.mean()),
            "wilcoxon_p": _wilcoxon(per_img)}


def subregion_study(whole: np.ndarray, crops: dict[str, np.ndarray], text: np.ndarray, text_image: np.ndarray,
                    partial: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """The full study over precomputed normalised features.

    whole [N, D]; crops {kind: [N, K, D]}; text [M, D]; text_image [M] image index of each caption;
    partial [M] (optional) True where the caption names only part of the scene.
    Returns {"kinds": {kind: {matched, control, effect, split}}, "metrics": flat dict, "best_index"}.
    """
    text_image = np.asarray(text_image)
    ctrl = mismatched_captions(text_image, seed)
    kinds: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    best_index: dict[str, np.ndarray] = {}
    all_crops = np.concatenate(list(crops.values()), axis=1) if crops else None
    items = dict(crops)
    if all_crops is not None and len(crops) > 1:
        items["any"] = all_crops
    for kind, c in items.items():
        m = pair_scores(whole, c, text, text_image)
        x = pair_scores(whole, c, text, text_image, ctrl)
        res = {"n_crops": int(c.shape[1]), "matched": side_stats(m, text_image),
               "control": side_stats(x, text_image)}
        eff = _per_image((m.best - m.whole) - (x.best - x.whole), text_image)
        res["effect"] = {"win_rate_diff": res["matched"]["win_rate"] - res["control"]["win_rate"],
                         "best_minus_whole_diff": float(eff.mean()),
                         "wilcoxon_p_vs_control": _wilcoxon(eff)}
        if partial is not None:
            partial = np.asarray(partial, dtype=bool)
            res["split"] = {
                "partial": {"matched": side_stats(m, text_image, partial),
                            "control": side_stats(x, text_image, partial[ctrl])},
                "full": {"matched": side_stats(m, text_image, ~partial),
                         "control": side_stats(x, text_image, ~partial[ctrl])}}
        kinds[kind] = res
        best_index[kind] = m.best_index
        metrics[f"win_rate.{kind}"] = res["matched"]["win_rate"]
        metrics[f"win_rate_control.{kind}"] = res["control"]["win_rate"]
        metrics[f"win_rate_diff.{kind}"] = res["effect"]["win_rate_diff"]
        metrics[f"wilcoxon_p.{kind}"] = res["matched"]["wilcoxon_p"]
        metrics[f"wilcoxon_p_vs_control.{kind}"] = res["effect"]["wilcoxon_p_vs_control"]
        metrics[f"best_minus_whole.{kind}"] = res["matched"]["best_minus_whole_mean"]
        metrics[f"mean_crop_minus_whole.{kind}"] = res["matched"]["mean_crop_minus_whole_mean"]
        if partial is not None:
            for part in ("partial", "full"):
                metrics[f"win_rate_{part}.{kind}"] = res["split"][part]["matched"].get("win_rate", float("nan"))
                metrics[f"win_rate_{part}_control.{kind}"] = res["split"][part]["control"].get("win_rate", float("nan"))
    return {"kinds": kinds, "metrics": metrics, "best_index": best_index, "control_index": ctrl}


def partial_flags(records: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per caption: (partial?, number of objects named) from quickstart records, None for real data."""
    flags, named = [], []
    for rec in records:
        objs = _get(rec, "caption_objects")
        scene = _get(rec, "scene")
        if objs is None or scene is None:
            return None
        for idx in objs:
            n = len(set(idx))
            named.append(n)
            flags.append(n < len(scene))
    return np.asarray(flags, dtype=bool), np.asarray(named)


def _get(rec: Any, key: str) -> Any:
    return rec.get(key) if isinstance(rec, dict) else getattr(rec, key, None)


@dataclass
class SubregionFeatures:
    whole: np.ndarray
    crops: dict[str, np.ndarray]
    boxes: dict[str, list[Box]] = field(default_factory=dict)


def extract_features(backbone: Any, images: Sequence[Any] | Callable[[int], Any], config: SubregionConfig,
                     n_images: int | None = None, progress: bool = False, chunk: int = 32) -> SubregionFeatures:
    """Whole-image, crop and attention-region features.

    `images` is a list of PIL images or a loader `i -> PIL image` (with n_images), so a large split is
    read `chunk` images at a time instead of being held in memory.
    """
    from tqdm import tqdm

    load = images if callable(images) else images.__getitem__
    n = len(images) if n_images is None else n_images
    boxes = crop_sets(config)
    parts: dict[str, list[np.ndarray]] = {"__whole__": []}
    for s in tqdm(range(0, n, chunk), desc="subregion features", disable=not progress):
        ims = [load(i) for i in range(s, min(s + chunk, n))]
        parts["__whole__"].append(backbone.encode_image(ims).float().cpu().numpy())
        for name, bx in boxes.items():
            parts.setdefault(name, []).append(encode_crops(backbone.encode_image, ims, bx, config.batch_size))
        if config.attention_k > 0:
            tok = backbone.encode_image_tokens(ims)
            for key, arr in attention_regions(tok.tokens, tok.attn, tok.cls, config.attention_k,
                                              config.attention_weighting, config.attention_plus_cls).items():
                parts.setdefault(key, []).append(arr)
    whole = np.concatenate(parts.pop("__whole__"))
    return SubregionFeatures(whole=whole, crops={k: np.concatenate(v) for k, v in parts.items()}, boxes=boxes)
