"""The pre-training text of the quickstart LM: the world's caption corpus plus text-only QA.

Why. In the paper the frozen LM (OPT) was pre-trained on general text, so it already knows the
"Question: ... Short answer: ..." format and can read a caption put in front of a question; zero-shot
VQA relies on that. The quickstart LM is trained from scratch, so trained on captions alone it has
never seen a question and VQA would measure nothing. Our stand-in for "general language knowledge":
QA text in the prompt format, generated from *fresh* world scenes drawn on a random stream no world
split uses and rejected when their content (attributes and grid cells, `scene_signature`) equals any
scene of an image split (clip/val/test). No image is involved. Every QA text comes with a caption of
its scene: the quickstart LM may put that caption's words, unordered, in front of it (maccap.lm), the
form a captioner's image prefix takes, so the LM learns to answer from what a caption says; part of
the texts also carry the caption inline ("{caption} Question: {q} Short answer: {a}"), the
caption-then-answer format; the rest, seen without context, teach the answer format and priors.

What this is not. This text is world-specific: the LM learns the world's question templates, answer
vocabulary and answer frequencies, which is more than OPT knows about VQAv2. That is why every VQA
number must be read against the no-image baseline (the same LM answering from the prompt alone):
that baseline measures exactly the prior this corpus teaches, and the image's contribution is the
gap above it. Test questions and answers are never in this text (the scenes differ), but questions
about the same kinds of things are, as they are in real general text.

The captioner is trained with this LM frozen, so the captioner's LM and the VQA LM are one model.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from maccap.errors import UserError
from maccap.io import atomic_write_json, hash_config, read_json, sha256_file

log = logging.getLogger(__name__)

QA_TEXT = "Question: {question} Short answer: {answer}"
CONTEXT_QA_TEXT = "{context} Question: {question} Short answer: {answer}"
IMAGE_SPLITS = ("clip", "val", "test")
STREAM = 0x51A0  # mixed into the seed: a random stream no world split draws from
CORPUS_VERSION = 1  # bump when the QA text generation changes: cached corpora are keyed by it
MAX_ATTEMPTS_PER_TEXT = 50

# (scene, rng, n) -> up to n questions as dicts {"question": str, "answer"|"multiple_choice_answer"|"answers": ...}
QuestionFn = Callable[[list, np.random.Generator, int], Sequence[Mapping[str, Any]]]
# (scene, rng, n) -> n captions of the scene
CaptionFn = Callable[[list, np.random.Generator, int], Sequence[str]]


def world_questions(scene: list, rng: np.random.Generator, n: int) -> Sequence[Mapping[str, Any]]:
    """The quickstart world's own question generator (distinct question kinds per scene)."""
    from maccap.world import scene_questions

    return scene_questions(scene, rng, n)


def world_captions(scene: list, rng: np.random.Generator, n: int) -> Sequence[str]:
    """The quickstart world's own caption grammar (the one its corpus and references come from)."""
    from maccap.world import scene_captions

    return scene_captions(scene, rng, n)[0]


def answer_of(question: Mapping[str, Any]) -> str:
    """The answer written after "Short answer:": the generator's true answer, else the VQAv2 majority answer."""
    for key in ("answer", "multiple_choice_answer"):
        if isinstance(question.get(key), str):
            return question[key]
    answers = question.get("answers")
    if isinstance(answers, (list, tuple)) and answers:
        texts = [a["answer"] if isinstance(a, Mapping) else str(a) for a in answers]
        return Counter(texts).most_common(1)[0][0]
    raise ValueError(f"question {question.get('question')!r} carries no answer")


def world_config(data_dir: Path) -> Any:
    """The world's config from its manifest (the default sizes when there is none)."""
    from maccap.world.config import WorldConfig

    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return WorldConfig()
    cfg = read_json(manifest, "world manifest").get("config") or {}
    if not isinstance(cfg, dict):
        raise UserError(f"world manifest {manifest}: field 'config' must be an object")
    return WorldConfig.from_dict(cfg)


def image_scene_signatures(data_dir: Path) -> set[tuple]:
    """Signatures of every scene shown in an image split: QA scenes must differ from all of them."""
    from maccap.world.scene import scene_signature

    taken: set[tuple] = set()
    for split in IMAGE_SPLITS:
        path = data_dir / f"captions_{split}.json"
        if not path.is_file():
            continue
        for i, entry in enumerate(read_json(path, f"{split} caption file")):
            scene = entry.get("scene") if isinstance(entry, dict) else None
            if not isinstance(scene, list):
                raise UserError(f"{path}: entry {i} has no 'scene' list; the QA corpus needs the quickstart "
                                "world's scenes to stay disjoint from the image splits")
            taken.add(scene_signature(scene))
    return taken


def qa_texts(n_qa: int, seed: int, config: Any, taken: set[tuple], questions_fn: QuestionFn,
             captions_fn: CaptionFn, context_fraction: float = 0.5, questions_per_scene: int = 2,
             max_tokens: int | None = 23) -> list[tuple[str, str]]:
    """n_qa (QA text, caption of the same scene) pairs from fresh scenes (signature not in `taken`).

    Deterministic in `seed`. A `context_fraction` of the texts carry the caption inline in front
    (the caption-then-answer format); one that would exceed `max_tokens` word-level tokens (the
    quickstart LM truncates its training texts) is written without it. The caption is returned with
    every text: the LM may see its words as an unordered context (maccap.lm), the form an image
    prefix takes.
    """
    from maccap.lm import words
    from maccap.world.scene import sample_scene, scene_signature

    if not 0.0 <= context_fraction <= 1.0:
        raise UserError(f"context_fraction={context_fraction} must lie in [0, 1]")
    rng = np.random.default_rng([int(seed), STREAM])
    out: list[tuple[str, str]] = []
    attempts = 0
    while len(out) < n_qa:
        attempts += 1
        if attempts > MAX_ATTEMPTS_PER_TEXT * max(n_qa, 1):
            raise UserError(f"could not draw {n_qa} QA texts from scenes disjoint from the image splits "
                            f"(got {len(out)}); lower n_qa")
        scene = sample_scene(rng, config)
        if scene_signature(scene) in taken:
            continue
        for q in questions_fn(scene, rng, questions_per_scene):
            question, answer = " ".join(str(q["question"]).split()), answer_of(q)
            caption = " ".join(str(captions_fn(scene, rng, 1)[0]).split())
            text = QA_TEXT.format(question=question, answer=answer)
            if rng.random() < context_fraction:
                with_context = CONTEXT_QA_TEXT.format(context=caption, question=question, answer=answer)
                if max_tokens is None or len(words(with_context)) <= max_tokens:
                    text = with_context
            out.append((text, caption))
            if len(out) == n_qa:
                break
    return out


def lm_pretraining_corpus(data_dir: str | Path, seed: int, n_qa: int, *, context_fraction: float = 0.5,
                          questions_per_scene: int = 2, max_tokens: int | None = 23,
                          questions_fn: QuestionFn | None = None, captions_fn: CaptionFn | None = None,
                          cache_dir: str | Path | None = None) -> tuple[list[str], list[str | None]]:
    """The quickstart LM's pre-training text: corpus_train.json captions, then n_qa QA texts.

    Returns (texts, contexts): contexts[i] is the text whose words may precede texts[i] as an
    unordered context (None: the text's own words; a QA text gets a caption of its scene).
    Same (world, seed, n_qa, options) -> the same lists. `max_tokens` should be the LM's
    max_len - 2 (BOS and EOS). The generators default to the world's public ones
    (`maccap.world.scene_questions` / `scene_captions`); pass others for another world.
    With `cache_dir` (and the default generators) the QA texts are kept there, keyed by the world's
    files and the options: drawing them takes ~30 s, and every process that loads the LM needs them.
    """
    from maccap.train import load_corpus_texts

    data_dir = Path(data_dir)
    if n_qa < 0:
        raise UserError(f"n_qa={n_qa} must be >= 0")
    captions = load_corpus_texts(data_dir)
    contexts: list[str | None] = [None] * len(captions)
    if n_qa == 0:
        return captions, contexts
    options = {"seed": seed, "n_qa": n_qa, "context_fraction": context_fraction,
               "questions_per_scene": questions_per_scene, "max_tokens": max_tokens}

    def draw() -> list[tuple[str, str]]:
        return qa_texts(n_qa, seed, world_config(data_dir), image_scene_signatures(data_dir),
                        questions_fn or world_questions, captions_fn or world_captions, context_fraction,
                        questions_per_scene, max_tokens)

    cacheable = cache_dir is not None and questions_fn is None and captions_fn is None
    pairs = _cached_qa(Path(cache_dir), data_dir, options, draw) if cacheable else draw()
    log.info("LM pre-training corpus: %d captions + %d QA texts", len(captions), len(pairs))
    return captions + [t for t, _ in pairs], contexts + [c for _, c in pairs]


def _cached_qa(cache_dir: Path, data_dir: Path, options: dict[str, Any],
               draw: Callable[[], list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The QA pairs from cache_dir when drawn before from the same world files and options."""
    inputs = {name: sha256_file(data_dir / name) for name in
              ["corpus_train.json", *(f"captions_{s}.json" for s in IMAGE_SPLITS)] if (data_dir / name).is_file()}
    path = cache_dir / f"qa-texts-{hash_config({'inputs': inputs, 'options': options, 'v': CORPUS_VERSION})}.json"
    if path.is_file():
        try:
            cached = read_json(path, "cached QA texts")
            if isinstance(cached, list) and len(cached) == options["n_qa"]:
                return [(str(t), str(c)) for t, c in cached]
        except (UserError, TypeError, ValueError):
            pass
        log.warning("cached QA texts %s are unreadable; drawing them again", path)
    pairs = draw()
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, [list(p) for p in pairs])
    return pairs
