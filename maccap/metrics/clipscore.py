"""CLIP-S and RefCLIP-S (Hessel et al., 2021) from already-encoded, L2-normalised features.

The backbone does the encoding (the paper prefixes candidates with CLIP_S_PROMPT); these functions
only combine features, so they work for any backbone and are cheap to test. Inputs are normalised
again defensively (a no-op for normalised features).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from maccap.errors import UserError

CLIP_S_PROMPT = "A photo depicts "
DEFAULT_W = 2.5


def with_prompt(captions: Sequence[str], prompt: str = CLIP_S_PROMPT) -> list[str]:
    """Candidates as CLIP-S encodes them ("A photo depicts <caption>")."""
    return [prompt + c for c in captions]


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise UserError(f"{what}: expected two [N, D] tensors of equal shape, "
                        f"got {tuple(a.shape)} and {tuple(b.shape)}")


def clip_score(image_feats: torch.Tensor, caption_feats: torch.Tensor, w: float = DEFAULT_W) -> torch.Tensor:
    """Per-item CLIP-S = w * max(cos(image, caption), 0); returns [N]."""
    _check_pair(image_feats, caption_feats, "clip_score")
    cos = (F.normalize(image_feats.float(), dim=-1) * F.normalize(caption_feats.float(), dim=-1)).sum(-1)
    return w * cos.clamp_min(0.0)


def _ref_similarity(caption_feats: torch.Tensor, ref_feats: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """max over references of max(cos(caption, ref), 0), per item."""
    cap = F.normalize(caption_feats.float(), dim=-1)
    if isinstance(ref_feats, torch.Tensor) and ref_feats.ndim == 3:
        if ref_feats.shape[0] != cap.shape[0] or ref_feats.shape[2] != cap.shape[1]:
            raise UserError(f"refclip_score: reference features {tuple(ref_feats.shape)} "
                            f"do not match captions {tuple(cap.shape)}")
        sims = torch.einsum("nd,nrd->nr", cap, F.normalize(ref_feats.float(), dim=-1))
        return sims.max(dim=1).values.clamp_min(0.0)
    refs = list(ref_feats)
    if len(refs) != cap.shape[0]:
        raise UserError(f"refclip_score: {len(refs)} reference sets for {cap.shape[0]} captions")
    out = torch.empty(cap.shape[0])
    for i, r in enumerate(refs):
        if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] != cap.shape[1]:
            raise UserError(f"refclip_score: reference set {i} has shape {tuple(r.shape)}; "
                            f"expected [R>0, {cap.shape[1]}]")
        out[i] = (F.normalize(r.float(), dim=-1) @ cap[i]).max().clamp_min(0.0)
    return out


def refclip_score(image_feats: torch.Tensor, caption_feats: torch.Tensor,
                  ref_feats_list: torch.Tensor | Sequence[torch.Tensor], w: float = DEFAULT_W) -> torch.Tensor:
    """Per-item RefCLIP-S: harmonic mean of CLIP-S and max_r max(cos(caption, r), 0); returns [N].

    ref_feats_list is a [N, R, D] tensor or a list of N [R_i, D] tensors (variable reference counts).
    The reference term is not multiplied by w, as in the paper; an item with both terms 0 scores 0.
    """
    clip_s = clip_score(image_feats, caption_feats, w)
    ref_s = _ref_similarity(caption_feats, ref_feats_list)
    denom = clip_s + ref_s
    return torch.where(denom > 0, 2 * clip_s * ref_s / denom.clamp_min(1e-12), torch.zeros_like(denom))
