"""Zero-shot VQA with a text-only trained captioner and its frozen LM.

Three ways to put a question to the frozen LM (`VQAConfig.mode`):

- ``prefix`` (the paper's extension, METHOD.md section 2): the aligner's image prefix, then BOS, then
  the prompt ``Question: {q} Short answer:``. The memory is built exactly as captioning builds it
  (the method's subregions and test noise); the noise is drawn from the evaluation seed with the same
  call `caption_images` makes, and candidate 0 of that draw is used, so an image's VQA prefix is the
  prefix of its first caption candidate. `prefix_noise=False` uses the clean memory instead.
- ``caption`` (caption-then-answer): caption each image with the captioner (same seeds, so the same
  captions the caption task writes), then BOS + ``{caption} Question: {q} Short answer:`` without a
  prefix. `n_captions > 1` puts the best n candidates (CLIP-reranked order) into the context.
- ``no-image`` (the prior baseline): BOS + the prompt alone; no image information reaches the LM.

Decoding follows METHOD.md: beam 5, at most 10 new tokens, at least 1, length penalty -1 (HF divides
the beam's summed log-probability by length**penalty, so -1 favours short answers). Every mode goes
through the same batched call on input embeddings, left-padded, so answers do not depend on the
batch size. The generated text is cut to its first line/sentence and stripped of punctuation; the
VQAv2 normalisation itself happens in `maccap.metrics.vqa`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from maccap.errors import UserError

log = logging.getLogger(__name__)

MODES = ("prefix", "caption", "no-image")
QA_PROMPT = "Question: {question} Short answer:"
CONTEXT_PROMPT = "{context} Question: {question} Short answer:"

TextEncoder = Callable[[Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class VQAConfig:
    """How questions are put to the LM and decoded (defaults: METHOD.md section 2)."""

    mode: str = "prefix"
    num_beams: int = 5
    max_new_tokens: int = 10
    min_new_tokens: int = 1
    length_penalty: float = -1.0
    batch_size: int = 64  # questions per generate call
    prefix_noise: bool = True  # prefix mode: add the method's test noise (candidate 0 of the eval draw)
    n_captions: int = 1  # caption mode: candidate captions given as context, best first
    caption_batch_size: int = 64  # images per captioning batch (caption mode)
    prompt: str = QA_PROMPT
    context_prompt: str = CONTEXT_PROMPT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"VQA mode {self.mode!r}; expected one of {', '.join(MODES)}")
        for name in ("num_beams", "max_new_tokens", "batch_size", "n_captions", "caption_batch_size"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"VQA option {name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise UserError(f"VQA option min_new_tokens={self.min_new_tokens} must lie in [0, max_new_tokens]")
        if "{question}" not in self.prompt:
            raise UserError(f"VQA prompt {self.prompt!r} must contain '{{question}}'")
        if "{question}" not in self.context_prompt or "{context}" not in self.context_prompt:
            raise UserError(f"VQA context_prompt {self.context_prompt!r} must contain '{{context}}' and '{{question}}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "VQAConfig":
        """Build from task params, ignoring keys that are not VQA options (split, max_questions, ...)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in params.items() if k in known})


@dataclass
class ImageInputs:
    """Image features of the images the questions are about; row i belongs to image_ids[i]."""

    image_ids: list[int]
    cls: torch.Tensor  # [N, D] normalised CLS/pooled features
    tokens: torch.Tensor | None = None  # [N, T, D] (subregion methods)
    attn: torch.Tensor | None = None  # [N, T, T]

    def __post_init__(self) -> None:
        if len(self.image_ids) != len(self.cls):
            raise ValueError(f"{len(self.image_ids)} image ids for {len(self.cls)} feature rows")
        self.row = {int(i): r for r, i in enumerate(self.image_ids)}


@dataclass
class VQAOutput:
    """Answers per question id, plus what produced them (prompt, raw text, captions, beam score)."""

    answers: dict[int, str]
    details: dict[int, dict[str, Any]]
    captions: dict[int, list[str]] = field(default_factory=dict)  # caption mode: image_id -> context captions
    config: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# prompts and answers

def build_prompt(question: str, config: VQAConfig, context: str | None = None) -> str:
    """The text after BOS: the QA prompt, with the caption context in front in caption mode."""
    question = " ".join(question.split())
    if context is None:
        return config.prompt.format(question=question)
    return config.context_prompt.format(context=" ".join(context.split()), question=question)


_NEXT_QUESTION = re.compile(r"\bquestion\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;](?!\d)|\n")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def clean_answer(text: str) -> str:
    """First line and first sentence of the generated text, cut before a follow-up "Question:", trimmed
    of punctuation at both ends (" Red." -> "Red"; case and articles are the VQA normalisation's job)."""
    text = _NEXT_QUESTION.split(text.strip(), maxsplit=1)[0]
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    text = re.sub(r"\s+", " ", text)
    return _EDGE_PUNCT.sub("", text).strip()


def prompt_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """BOS + tokens of each prompt (the LM was trained on BOS + text + EOS)."""
    return [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]


def max_positions(lm: nn.Module) -> int | None:
    cfg = getattr(lm, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_to_window(ids: list[int], budget: int) -> list[int]:
    """Keep BOS and the last budget-1 tokens (the question and answer cue sit at the end)."""
    if len(ids) <= budget:
        return ids
    return [ids[0], *ids[len(ids) - (budget - 1):]]


def embed_batch(lm: nn.Module, pad_id: int, rows: Sequence[list[int]], prefix: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (inputs_embeds [B, L, E], attention_mask [B, L]) for prefix [B, P, E] + token rows."""
    emb = lm.get_input_embeddings()
    device = emb.weight.device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
        mask[i, width - len(r):] = 1
    embeds = emb(ids)
    if prefix is None:
        return embeds, mask
    p = prefix.to(device=device, dtype=embeds.dtype)
    # rows now read prefix | pads | BOS prompt; move the pads in front: pads | prefix | BOS prompt
    embeds = torch.cat([p, embeds], dim=1)
    mask = torch.cat([torch.ones(p.shape[:2], dtype=torch.long, device=device), mask], dim=1)
    return _left_align(embeds, mask)


def _left_align(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's padding (mask 0) to the front, keeping the order of the real positions."""
    order = torch.sort(mask, dim=1, stable=True).indices  # zeros first, then ones, stable
    embeds = torch.gather(embeds, 1, order[:, :, None].expand(-1, -1, embeds.shape[2]))
    return embeds, torch.gather(mask, 1, order)


@torch.no_grad()
def generate_answers(lm: nn.Module, tokenizer: Any, rows: Sequence[list[int]], prefix: torch.Tensor | None,
                     config: VQAConfig) -> tuple[list[str], list[float | None]]:
    """One beam search over a batch; returns (raw decoded texts, beam scores)."""
    embeds, mask = embed_batch(lm, tokenizer.pad_token_id, rows, prefix)
    beam = {"num_beams": config.num_beams, "length_penalty": config.length_penalty, "early_stopping": True,
            "output_scores": True} if config.num_beams > 1 else {}
    out = lm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                      max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      return_dict_in_generate=True, **beam)
    # generating from inputs_embeds alone, decoder-only models return the new tokens only
    texts = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    scores = getattr(out, "sequences_scores", None)
    return texts, ([float(s) for s in scores] if scores is not None else [None] * len(texts))


# ------------------------------------------------------------------------------------------------
# image side: prefixes and captions

def _check_images(questions: Sequence[Mapping[str, Any]], images: ImageInputs | None, mode: str) -> ImageInputs:
    if images is None:
        raise UserError(f"VQA mode {mode!r} needs image features")
    missing = sorted({int(q["image_id"]) for q in questions} - set(images.row))
    if missing:
        raise UserError(f"VQA: {len(missing)} question image_id(s) have no image in the split, e.g. {missing[:5]}")
    return images


@torch.no_grad()
def image_prefixes(captioner: Any, images: ImageInputs, eval_seed: int, use_noise: bool,
                   batch_size: int = 64) -> torch.Tensor:
    """Prefix embeddings [N, P, E] of every image: the memory of its first caption candidate."""
    from maccap.captioning import candidate_memories, clean_memory, draw_test_noise, memory_tokens

    method = captioner.method
    captioner.bridge.eval()
    gen = torch.Generator().manual_seed(int(eval_seed))
    noise = draw_test_noise(method, len(images.cls), memory_tokens(method), images.cls.shape[1], gen)
    dev = captioner.device
    out = []
    for s in range(0, len(images.cls), batch_size):
        sl = slice(s, s + batch_size)
        tok = None if images.tokens is None else images.tokens[sl].to(dev).float()
        att = None if images.attn is None else images.attn[sl].to(dev).float()
        clean, _ = clean_memory(method, images.cls[sl].to(dev).float(), tok, att, captioner.text_bank)
        cand0 = None if (noise is None or not use_noise) else noise[sl, :1]
        mem = candidate_memories(clean, 1, cand0)[:, 0]
        out.append(captioner.prefix(mem))
    return torch.cat(out)


def image_contexts(captioner: Any, images: ImageInputs, encode_text: TextEncoder | None, eval_seed: int,
                   n_captions: int, batch_size: int, progress: bool) -> dict[int, list[str]]:
    """image_id -> context captions: the chosen caption first, then the next best distinct candidates."""
    from maccap.captioning import caption_images

    results = caption_images(captioner, images.cls, images.tokens, images.attn, encode_text, eval_seed,
                             batch_size=batch_size, progress=progress)
    out: dict[int, list[str]] = {}
    for image_id, res in zip(images.image_ids, results):
        order = sorted(range(len(res.candidates)), key=lambda j: (j != res.selected, -_score(res.scores, j), j))
        picked: list[str] = []
        for j in order:
            cap = res.candidates[j].strip()
            if cap and cap not in picked:
                picked.append(cap)
        out[int(image_id)] = picked[:n_captions] or [res.caption]
    return out


def _score(scores: Sequence[float], j: int) -> float:
    s = scores[j] if j < len(scores) else float("nan")
    return s if s == s else 0.0  # NaN (no reranker) keeps the decoding order


# ------------------------------------------------------------------------------------------------
# the library entry point

def answer_questions(questions: Sequence[Mapping[str, Any]], config: VQAConfig, *, lm: nn.Module | None = None,
                     tokenizer: Any = None, captioner: Any = None, images: ImageInputs | None = None,
                     encode_text: TextEncoder | None = None, eval_seed: int = 0,
                     progress: bool = False) -> VQAOutput:
    """Answer VQAv2-layout questions ({question_id, image_id, question}) with the frozen LM.

    prefix and caption modes need `captioner` (its LM is used unless `lm` is given) and `images`;
    no-image needs only an LM and tokenizer (or a captioner to take them from) and reads no image.
    The same eval seed always gives the same answers, whatever `batch_size`.
    """
    if captioner is not None:
        lm = lm if lm is not None else captioner.lm
        tokenizer = tokenizer if tokenizer is not None else captioner.tokenizer
    if lm is None or tokenizer is None:
        raise ValueError("answer_questions needs an LM and tokenizer (or a captioner holding them)")
    if config.mode != "no-image" and captioner is None:
        raise UserError(f"VQA mode {config.mode!r} needs a trained captioner")
    lm.eval()
    prefixes: torch.Tensor | None = None
    contexts: dict[int, list[str]] = {}
    if config.mode == "prefix":
        images = _check_images(questions, images, config.mode)
        prefixes = image_prefixes(captioner, images, eval_seed, config.prefix_noise, config.caption_batch_size)
    elif config.mode == "caption":
        images = _check_images(questions, images, config.mode)
        contexts = image_contexts(captioner, images, encode_text, eval_seed, config.n_captions,
                                  config.caption_batch_size, progress)
    texts = [build_prompt(str(q["question"]), config,
                          " ".join(contexts[int(q["image_id"])]) if contexts else None) for q in questions]
    rows = prompt_ids(tokenizer, texts)
    rows = _fit_rows(lm, rows, 0 if prefixes is None else prefixes.shape[1], config.max_new_tokens)
    answers: dict[int, str] = {}
    details: dict[int, dict[str, Any]] = {}
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))  # similar lengths share a batch
    starts = range(0, len(order), config.batch_size)
    for s in tqdm(starts, desc=f"vqa {config.mode}", disable=not progress):
        idx = order[s:s + config.batch_size]
        pre = None
        if prefixes is not None:
            pre = prefixes[[images.row[int(questions[i]["image_id"])] for i in idx]]
        raw, scores = generate_answers(lm, tokenizer, [rows[i] for i in idx], pre, config)
        for i, text, score in zip(idx, raw, scores):
            qid = int(questions[i]["question_id"])
            answers[qid] = clean_answer(text)
            details[qid] = {"prompt": texts[i], "raw": text, "beam_score": score}
    return VQAOutput(answers, details, contexts, config.to_dict())


def _fit_rows(lm: nn.Module, rows: list[list[int]], prefix_len: int, max_new: int) -> list[list[int]]:
    limit = max_positions(lm)
    if limit is None:
        return rows
    budget = limit - prefix_len - max_new
    if budget < 2:
        raise UserError(f"the LM's context of {limit} positions cannot hold a {prefix_len}-token prefix, a "
                        f"prompt and {max_new} answer tokens")
    cut = sum(len(r) > budget for r in rows)
    if cut:
        log.warning("%d prompt(s) longer than the LM's window were cut from the left to %d tokens", cut, budget)
    return [fit_to_window(r, budget) for r in rows]
