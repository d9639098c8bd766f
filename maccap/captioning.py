"""Inference: image features -> memories -> prefix -> beam search -> CLIP reranking.

Batched over images *and* candidates: one `generate` call decodes B images x N noisy candidates.
All test-time randomness (the memory noise) is drawn up front for the whole evaluated set from one
torch.Generator seeded with the evaluation seed, so captions do not depend on the batch size and the
same seeds always give the same captions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from maccap import faults
from maccap.methods import MethodConfig
from maccap.noise import NoiseModel
from maccap.subregions import select_regions

log = logging.getLogger(__name__)

TextEncoder = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class Captioner:
    """A trained bridge with its frozen LM; `text_bank` (DeCap's memory) is set only when needed."""

    method: MethodConfig
    bridge: nn.Module
    lm: nn.Module
    tokenizer: Any
    feat_dim: int
    text_bank: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def prefix(self, memory: torch.Tensor) -> torch.Tensor:
        """memory [B, M, D] -> prefix embeddings [B, P, E] in the LM's dtype."""
        emb_dtype = self.lm.get_input_embeddings().weight.dtype
        return self.bridge(memory.to(self.device)).to(emb_dtype)


@dataclass
class CaptionResult:
    caption: str
    candidates: list[str]
    scores: list[float]  # CLIP cosine similarity of each candidate to the image
    selected: int
    region_indices: list[int] | None


# ------------------------------------------------------------------------------------------------
# memories

def decap_project(feats: torch.Tensor, bank: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """DeCap's projection: normalise(softmax(f . bank^T / T) @ bank) for normalised feats [B, D]."""
    weights = (feats @ bank.T / temperature).softmax(dim=-1)
    return nn.functional.normalize(weights @ bank, dim=-1)


def clean_memory(method: MethodConfig, cls: torch.Tensor, tokens: torch.Tensor | None,
                 attn: torch.Tensor | None, text_bank: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise-free test memory [B, M, D] (not yet renormalised) and selected token indices [B, k]."""
    if method.test_memory == "regions":
        if tokens is None or attn is None:
            raise ValueError("method uses subregions but no image tokens/attention were given")
        regions, idx = select_regions(tokens, attn, method.n_regions, method.region_weighting)
        return cls[:, None] + method.region_weight * regions, idx
    if method.test_memory == "cls":
        return cls[:, None], None
    if method.test_memory == "decap-projection":
        if text_bank is None:
            raise ValueError("DeCap needs the text-feature memory bank of the training corpus")
        return decap_project(cls, text_bank.to(cls), method.decap_temperature)[:, None], None
    return torch.zeros_like(cls)[:, None], None


def draw_test_noise(method: MethodConfig, n_images: int, mem_tokens: int, dim: int,
                    generator: torch.Generator) -> torch.Tensor | None:
    """All test-time noise of an evaluation, [n_images, N, M, D]; None when the method adds none."""
    if method.test_noise_variance == 0 or method.test_memory == "none":
        return None
    noise = NoiseModel.isotropic(method.test_noise_variance)
    return noise.sample((n_images, method.n_candidates, mem_tokens, dim), generator)


def candidate_memories(clean: torch.Tensor, n_candidates: int, noise: torch.Tensor | None) -> torch.Tensor:
    """[B, M, D] clean memory -> [B, N, M, D]: add each candidate's noise, then renormalise."""
    mem = clean[:, None].expand(-1, n_candidates, -1, -1)
    if noise is not None:
        mem = mem + noise[:, :, : mem.shape[2]].to(mem)  # k may be capped by the token count
    return nn.functional.normalize(mem, dim=-1)


def memory_tokens(method: MethodConfig) -> int:
    return method.n_regions if method.test_memory == "regions" else 1


# ------------------------------------------------------------------------------------------------
# decoding

_SPACE_PUNCT = re.compile(r"\s+([.,;:!?'])")


def clean_caption(text: str) -> str:
    """Light clean-up: first line, first sentence, single spaces, no space before punctuation."""
    text = text.strip().split("\n")[0]
    text = re.sub(r"\s+", " ", text)
    text = _SPACE_PUNCT.sub(r"\1", text)
    if "." in text:
        text = text[: text.index(".") + 1]
    return text.strip()


@torch.no_grad()
def decode_prefixes(captioner: Captioner, prefix: torch.Tensor, num_beams: int, max_new_tokens: int) -> list[str]:
    """Beam-search one caption per prefix [R, P, E]; the LM input is prefix + BOS, as in training."""
    lm, tok = captioner.lm, captioner.tokenizer
    bos = lm.get_input_embeddings()(torch.full((prefix.shape[0], 1), tok.bos_token_id, device=prefix.device))
    embeds = torch.cat([prefix, bos.to(prefix.dtype)], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=prefix.device)
    out = lm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams, do_sample=False,
                      max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      early_stopping=True)
    return [clean_caption(t) for t in tok.batch_decode(out, skip_special_tokens=True)]


def rerank(candidates: list[list[str]], image_feats: torch.Tensor, encode_text: TextEncoder
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP cosine similarity of every candidate to its image ([B, N]) and the argmax per image."""
    b, n = len(candidates), len(candidates[0])
    flat = [c if c else "." for row in candidates for c in row]
    text = nn.functional.normalize(encode_text(flat).float(), dim=-1).view(b, n, -1)
    img = nn.functional.normalize(image_feats.float().to(text.device), dim=-1)
    scores = torch.einsum("bnd,bd->bn", text, img)
    return scores.cpu(), scores.argmax(dim=1).cpu()


@torch.no_grad()
def caption_images(captioner: Captioner, cls: torch.Tensor, tokens: torch.Tensor | None,
                   attn: torch.Tensor | None, encode_text: TextEncoder | None, eval_seed: int,
                   batch_size: int = 64, progress: bool = False) -> list[CaptionResult]:
    """Caption every image; image i always gets the same noise for the same eval seed."""
    method = captioner.method
    captioner.bridge.eval()
    gen = torch.Generator().manual_seed(eval_seed)
    noise = draw_test_noise(method, len(cls), memory_tokens(method), cls.shape[1], gen)
    results: list[CaptionResult] = []
    starts = range(0, len(cls), batch_size)
    for s in tqdm(starts, desc=f"caption {method.name}", disable=not progress):
        sl = slice(s, s + batch_size)
        results += _caption_batch(captioner, cls[sl], None if tokens is None else tokens[sl],
                                  None if attn is None else attn[sl], encode_text,
                                  None if noise is None else noise[sl])
        faults.checkpoint("caption-batch")
    return results


def _caption_batch(captioner: Captioner, cls: torch.Tensor, tokens: torch.Tensor | None, attn: torch.Tensor | None,
                   encode_text: TextEncoder | None, noise: torch.Tensor | None) -> list[CaptionResult]:
    method = captioner.method
    dev = captioner.device
    clean, idx = clean_memory(method, cls.to(dev).float(), None if tokens is None else tokens.to(dev).float(),
                              None if attn is None else attn.to(dev).float(), captioner.text_bank)
    mem = candidate_memories(clean, method.n_candidates, noise)
    b, n = mem.shape[:2]
    texts = decode_prefixes(captioner, captioner.prefix(mem.flatten(0, 1)), method.num_beams, method.max_new_tokens)
    cands = [texts[i * n:(i + 1) * n] for i in range(b)]
    if encode_text is not None:
        scores, best = rerank(cands, cls, encode_text)
    else:
        scores, best = torch.full((b, n), float("nan")), torch.zeros(b, dtype=torch.long)
    out = []
    for i in range(b):
        sel = int(best[i]) if method.rerank else 0
        out.append(CaptionResult(cands[i][sel], cands[i], [float(x) for x in scores[i]], sel,
                                 None if idx is None else [int(j) for j in idx[i]]))
    return out


@torch.no_grad()
def caption_images_naive(captioner: Captioner, cls: torch.Tensor, tokens: torch.Tensor | None,
                         attn: torch.Tensor | None, encode_text: TextEncoder | None, eval_seed: int
                         ) -> list[CaptionResult]:
    """The reference's loop (one image, one candidate per generate call): the speed baseline."""
    method = captioner.method
    captioner.bridge.eval()
    gen = torch.Generator().manual_seed(eval_seed)
    noise = draw_test_noise(method, len(cls), memory_tokens(method), cls.shape[1], gen)
    dev = captioner.device
    results = []
    for i in range(len(cls)):
        clean, idx = clean_memory(method, cls[i:i + 1].to(dev).float(),
                                  None if tokens is None else tokens[i:i + 1].to(dev).float(),
                                  None if attn is None else attn[i:i + 1].to(dev).float(), captioner.text_bank)
        cands = []
        for j in range(method.n_candidates):
            mem = candidate_memories(clean, 1, None if noise is None else noise[i:i + 1, j:j + 1])
            cands += decode_prefixes(captioner, captioner.prefix(mem[:, 0]), method.num_beams, method.max_new_tokens)
        scores, best = rerank([cands], cls[i:i + 1], encode_text) if encode_text else (
            torch.full((1, len(cands)), float("nan")), torch.zeros(1, dtype=torch.long))
        sel = int(best[0]) if method.rerank else 0
        results.append(CaptionResult(cands[sel], cands, [float(x) for x in scores[0]], sel,
                                     None if idx is None else [int(j) for j in idx[0]]))
    return results
