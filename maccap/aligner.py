"""Trainable bridges from CLIP feature space into the frozen LM's embedding space.

`Aligner` (MacCap): learnable queries -> DETR-style transformer decoder (post-norm, ReLU, dropout)
cross-attending to a memory of feature tokens -> final LayerNorm -> 3-layer MLP to the LM width.
`PrefixMLP` (CapDec / DeCap / no-image): one feature -> `prefix_len` prefix embeddings through an MLP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AlignerConfig:
    """Sizes of the trainable bridge. Defaults are the paper's (for B/32: width 512)."""

    n_queries: int = 32
    n_layers: int = 1
    n_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    mlp_hidden: int | None = None  # hidden width of the 3-layer MLP; None = the feature width
    prefix_len: int = 1  # PrefixMLP only

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class Aligner(nn.Module):
    """Queries attend to the memory [B, M, D]; returns prefix embeddings [B, n_queries, lm_dim]."""

    def __init__(self, feat_dim: int, lm_dim: int, config: AlignerConfig = AlignerConfig()) -> None:
        super().__init__()
        if feat_dim % config.n_heads:
            raise ValueError(f"feature width {feat_dim} is not divisible by n_heads={config.n_heads}")
        self.config = config
        self.queries = nn.Parameter(torch.randn(config.n_queries, feat_dim) * 0.02)
        layer = nn.TransformerDecoderLayer(feat_dim, config.n_heads, config.ffn_dim, config.dropout,
                                           activation="relu", batch_first=True, norm_first=False)
        self.decoder = nn.TransformerDecoder(layer, config.n_layers, norm=nn.LayerNorm(feat_dim))
        self.mlp = _mlp(feat_dim, config.mlp_hidden or feat_dim, lm_dim)

    @property
    def prefix_len(self) -> int:
        return self.config.n_queries

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        if memory.dim() == 2:
            memory = memory[:, None]
        q = self.queries[None].expand(memory.shape[0], -1, -1).to(memory.dtype)
        return self.mlp(self.decoder(q, memory))


class PrefixMLP(nn.Module):
    """One feature -> prefix_len LM embeddings (CapDec style); a memory [B, M, D] is mean-pooled."""

    def __init__(self, feat_dim: int, lm_dim: int, config: AlignerConfig = AlignerConfig()) -> None:
        super().__init__()
        self.config = config
        self.lm_dim = lm_dim
        hidden = config.mlp_hidden or max(feat_dim, lm_dim * config.prefix_len // 2)
        self.mlp = _mlp(feat_dim, hidden, lm_dim * config.prefix_len)

    @property
    def prefix_len(self) -> int:
        return self.config.prefix_len

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        feat = memory.mean(dim=1) if memory.dim() == 3 else memory
        return self.mlp(feat).view(feat.shape[0], self.config.prefix_len, self.lm_dim)


def n_trainable(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
