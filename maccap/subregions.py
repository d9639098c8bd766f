"""Attention-selected subregion features (MacCap inference, METHOD.md section 2).

The CLS token's attention row picks the k most attended tokens; each picked token's own attention row
then weights all tokens into one region feature. The gap analysis imports this too.
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("softmax_probs", "probs")


def select_regions(tokens: torch.Tensor, attn: torch.Tensor, k: int = 10,
                   weighting: str = "softmax_probs") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (regions [N, k, D] L2-normalised, indices [N, k]) for tokens [N, T, D], attn [N, T, T].

    indices = top-k of attn[:, 0, :] (CLS/query row), which may include index 0 itself, as the
    reference does. weighting "softmax_probs" reproduces the reference: w_i = softmax(attn[i, :]) over
    the attention *probabilities*, which is close to uniform; "probs" uses the attention row itself
    (sums to one already), the sharper weighting the method intends.
    """
    if tokens.dim() != 3 or attn.dim() != 3 or attn.shape[1] != attn.shape[2] or attn.shape[:2] != tokens.shape[:2]:
        raise ValueError(f"expected tokens [N, T, D] and attn [N, T, T], got {tuple(tokens.shape)} and "
                         f"{tuple(attn.shape)}")
    if weighting not in WEIGHTINGS:
        from maccap.errors import UserError

        raise UserError(f"unknown region weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    k = min(k, tokens.shape[1])
    indices = attn[:, 0, :].topk(k, dim=-1).indices  # [N, k]
    rows = torch.gather(attn, 1, indices[:, :, None].expand(-1, -1, attn.shape[2]))  # [N, k, T]
    weights = rows.float().softmax(dim=-1) if weighting == "softmax_probs" else rows.float()
    regions = torch.bmm(weights.to(tokens.dtype), tokens)
    return torch.nn.functional.normalize(regions, dim=-1), indices
