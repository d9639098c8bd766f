"""Image-text retrieval recall@K (the Flickr30k/COCO protocol: 5 captions per image).

Reported beside the gap statistics so users can see how alignment quality and gap size relate.
i2t: an image is a hit at K when any of its captions is among the K texts most similar to it.
t2i: a caption is a hit at K when its image is among the K most similar images. Ties count in the
query's favour (only strictly higher scores push the right answer down).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def first_k_captions(text_image: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the first k captions of every image (the standard protocol keeps 5 per image)."""
    text_image = np.asarray(text_image)
    seen: dict[int, int] = {}
    keep = []
    for j, i in enumerate(text_image.tolist()):
        if seen.get(i, 0) < k:
            keep.append(j)
            seen[i] = seen.get(i, 0) + 1
    return np.asarray(keep, dtype=np.int64)


def recall_at_k(image_feats: np.ndarray | torch.Tensor, text_feats: np.ndarray | torch.Tensor,
                text_image: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), captions_per_image: int | None = 5,
                chunk: int = 1024) -> dict[str, Any]:
    """Recall@K both ways on L2-normalised features; returns metrics plus the counts used."""
    img = torch.as_tensor(np.asarray(image_feats), dtype=torch.float32)
    txt = torch.as_tensor(np.asarray(text_feats), dtype=torch.float32)
    text_image = np.asarray(text_image, dtype=np.int64)
    if captions_per_image is not None:
        keep = first_k_captions(text_image, captions_per_image)
        txt, text_image = txt[torch.as_tensor(keep)], text_image[keep]
    n_img, n_txt = img.shape[0], txt.shape[0]
    ti = torch.as_tensor(text_image)
    # i2t: rank of the best own caption for each image
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    for s in range(0, n_img, chunk):
        sims = img[s:s + chunk] @ txt.T  # [b, M]
        own = ti[None, :] == torch.arange(s, min(s + chunk, n_img))[:, None]
        best_own = torch.where(own, sims, torch.full_like(sims, -torch.inf)).max(dim=1).values
        i2t_rank[s:s + chunk] = (sims > best_own[:, None]).sum(dim=1)
    # t2i: rank of the own image for each caption
    t2i_rank = torch.empty(n_txt, dtype=torch.long)
    for s in range(0, n_txt, chunk):
        sims = txt[s:s + chunk] @ img.T  # [b, N]
        own = sims.gather(1, ti[s:s + chunk, None])
        t2i_rank[s:s + chunk] = (sims > own).sum(dim=1)
    has_caption = torch.zeros(n_img, dtype=torch.bool)
    has_caption[ti] = True
    out: dict[str, Any] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank[has_caption] < k).float().mean())
        out[f"t2i_r{k}"] = float((t2i_rank < k).float().mean())
    out["rsum"] = float(100 * sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks))
    per_image = np.bincount(text_image)[np.unique(text_image)] if n_txt else np.zeros(1, dtype=np.int64)
    counts = {"images": int(has_caption.sum()), "captions": int(n_txt), "captions_per_image_min": int(per_image.min())}
    if counts["captions_per_image_min"] < (captions_per_image or 0):
        log.warning("some images have fewer than %d captions; recall is not comparable to the standard protocol",
                    captions_per_image)
    return {"metrics": out, "counts": counts}
