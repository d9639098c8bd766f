"""Evaluation metrics: COCO caption metrics, CLIP-S / RefCLIP-S and VQAv2 accuracy.

`METRICS` maps each metric name used in suites and result files to a `MetricSpec` (what it reports,
whether it needs Java, how it is computed). Text metrics go through `score_captions`; the CLIP-based
ones combine backbone features with `clip_score` / `refclip_score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from maccap.metrics.captions import CAPTION_METRICS, CaptionScores, score_captions, spice_status
from maccap.metrics.clipscore import CLIP_S_PROMPT, clip_score, refclip_score, with_prompt
from maccap.metrics.ptb import find_java, ptb_tokenize, python_tokenize
from maccap.metrics.vqa import (VQAScores, normalize_answer, read_annotations, read_questions, read_results,
                                vqa_accuracy, write_annotations, write_questions, write_results)
from maccap.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name, description, the result columns it fills, and what it needs."""

    name: str
    description: str
    outputs: tuple[str, ...]
    kind: str  # "text" (score_captions) or "clip" (features from the run's backbone)
    needs_java: bool
    scorer: Callable


METRICS: Registry[MetricSpec] = Registry("metric")

_SPECS = (
    MetricSpec("bleu", "BLEU-1..4 (pycocoevalcap, 'closest' reference length)",
               ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"), "text", False, score_captions),
    MetricSpec("meteor", "METEOR 1.5 (pycocoevalcap jar, -l en -norm)", ("METEOR",), "text", True, score_captions),
    MetricSpec("rouge", "ROUGE-L (beta 1.2)", ("ROUGE-L",), "text", False, score_captions),
    MetricSpec("cider", "CIDEr-D (sigma 6, clipped counts); IDF from the whole evaluated set",
               ("CIDEr-D",), "text", False, score_captions),
    MetricSpec("spice", "SPICE F-score (needs Stanford CoreNLP 3.6.0 jars; skipped with reason otherwise)",
               ("SPICE",), "text", True, score_captions),
    MetricSpec("clip_s", "CLIP-S = 2.5 * max(cos(image, caption), 0) (Hessel et al. 2021)",
               ("CLIP-S",), "clip", False, clip_score),
    MetricSpec("refclip_s", "RefCLIP-S = harmonic mean of CLIP-S and max over references of max(cos, 0)",
               ("RefCLIP-S",), "clip", False, refclip_score),
)
for _spec in _SPECS:
    METRICS.add(_spec.name, _spec)

__all__ = [
    "CAPTION_METRICS", "CLIP_S_PROMPT", "CaptionScores", "METRICS", "MetricSpec", "VQAScores", "clip_score",
    "find_java", "normalize_answer", "ptb_tokenize", "python_tokenize", "read_annotations", "read_questions",
    "read_results", "refclip_score", "score_captions", "spice_status", "vqa_accuracy", "with_prompt",
    "write_annotations", "write_questions", "write_results",
]
