"""VQAv2 accuracy as the official evaluation computes it, and the official file layouts.

Rules (VQAv2 evaluation): a predicted answer is cleaned of tabs/newlines, then punctuation is removed
(or replaced by a space, see `process_punctuation`), periods not followed by a digit are dropped, the
text is lower-cased, number words zero..ten (and "none") become digits, articles are dropped and
apostrophe-less contractions get their apostrophes back. Reference answers only get the punctuation
step, and only when the 10 answers are not all identical (the official code does exactly this; the
released VQAv2 answers are already normalised). An item scores the mean, over the 10 leave-one-out
subsets of 9 annotators, of min(#matches / 3, 1); overall and per-type accuracies are means over items.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from maccap.errors import UserError
from maccap.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

N_ANSWERS = 10

# Marks the official evaluation strips (periods are handled separately). The apostrophe and the colon
# are not in the list: "don't" and "3:30" survive the punctuation step.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"\.(?!\d)")  # "3.5" keeps its period, "yes." loses it
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")  # "1,000": punctuation is deleted rather than spaced
_MAX_PERIOD_REMOVALS = 32  # the official code passes re.UNICODE (=32) as `count` to re.sub
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions whose apostrophe-less spellings are restored. Each spelling with exactly one of its
# apostrophes dropped maps back to the full form ("dont" -> "don't", "hed've"/"he'dve" -> "he'd've").
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've "
    "mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't "
    "shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's "
    "something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've "
    "they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's "
    "where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for full in _CONTRACTIONS:
        for i, ch in enumerate(full):
            if ch == "'":
                table[full[:i] + full[i + 1:]] = full
    # the official table also holds one inverted entry; kept so results match it
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS: dict[str, str] = _contraction_table()


def process_punctuation(text: str) -> str:
    """Official punctuation step: delete each mark if it touches a space (or the text has a digit-comma-
    digit run such as "1,000"), otherwise replace it by a space ("red/blue" -> "red blue"); then drop
    periods not followed by a digit."""
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIOD_REMOVALS)


def process_digits_articles(text: str) -> str:
    """Official word step: lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean_ws(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(ans: str) -> str:
    """A predicted answer as the official VQAv2 evaluation compares it."""
    return process_digits_articles(process_punctuation(_clean_ws(ans)))


def _reference_answers(answers: list[str]) -> list[str]:
    cleaned = [_clean_ws(a) for a in answers]
    if len(set(cleaned)) > 1:
        cleaned = [process_punctuation(a) for a in cleaned]
    return cleaned


def item_accuracy(pred: str, answers: list[str], normalize_references: bool = False) -> float:
    """Mean over the leave-one-out subsets of min(#matching annotators / 3, 1) (pred already normalised)."""
    refs = [normalize_answer(a) for a in answers] if normalize_references else _reference_answers(answers)
    matches = [r == pred for r in refs]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(refs)


@dataclass
class VQAScores:
    """Accuracies on a 0-1 scale (the official tool prints x100 rounded to 2 decimals)."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_item: dict[int, float]
    normalized: dict[int, str] = field(default_factory=dict)
    n_questions: int = 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def vqa_accuracy(predictions: Mapping[int, str], annotations: list[dict[str, Any]],
                 normalize_references: bool = False) -> VQAScores:
    """VQAv2 accuracy of {question_id: answer} against annotation dicts (official layout).

    Every annotated question needs a prediction and vice versa (as the official loader asserts).
    normalize_references=True also applies the word step to reference answers (not official;
    useful for hand-made annotations that spell numbers as words).
    """
    ann_ids = {int(a["question_id"]) for a in annotations}
    preds = {int(k): v for k, v in predictions.items()}
    extra = sorted(set(preds) - ann_ids)
    missing = sorted(ann_ids - set(preds))
    if extra:
        raise UserError(f"vqa_accuracy: {len(extra)} predicted question_id(s) are not annotated, e.g. {extra[:5]}")
    if missing:
        raise UserError(f"vqa_accuracy: {len(missing)} annotated question_id(s) have no prediction, e.g. {missing[:5]}")
    if not annotations:
        raise UserError("vqa_accuracy: no annotations to score")
    per_item: dict[int, float] = {}
    normalized: dict[int, str] = {}
    by_answer: dict[str, list[float]] = defaultdict(list)
    by_question: dict[str, list[float]] = defaultdict(list)
    for ann in annotations:
        qid = int(ann["question_id"])
        if not isinstance(preds[qid], str):
            raise UserError(f"vqa_accuracy: answer for question_id {qid} is {type(preds[qid]).__name__}; expected str")
        pred = normalize_answer(preds[qid])
        acc = item_accuracy(pred, [a["answer"] for a in ann["answers"]], normalize_references)
        per_item[qid], normalized[qid] = acc, pred
        by_answer[ann["answer_type"]].append(acc)
        by_question[ann["question_type"]].append(acc)
    return VQAScores(
        overall=_mean(list(per_item.values())),
        per_answer_type={k: _mean(v) for k, v in sorted(by_answer.items())},
        per_question_type={k: _mean(v) for k, v in sorted(by_question.items())},
        per_item=per_item, normalized=normalized, n_questions=len(per_item),
    )


# ---------------------------------------------------------------- official file layouts

QUESTION_KEYS = ("image_id", "question", "question_id")
ANNOTATION_KEYS = ("question_id", "image_id", "answer_type", "question_type", "multiple_choice_answer", "answers")


def _records(path: Path, top_key: str, what: str) -> list[dict[str, Any]]:
    data = read_json(path, what)
    if not isinstance(data, dict) or top_key not in data:
        raise UserError(f"{what} {path}: expected a JSON object with a {top_key!r} list (VQAv2 layout)")
    rows = data[top_key]
    if not isinstance(rows, list):
        raise UserError(f"{what} {path}: field {top_key!r} must be a list, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{what} {path}: {top_key}[{i}] must be an object, got {type(row).__name__}")
    return rows


def _check_keys(path: Path, what: str, top_key: str, i: int, row: dict, keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise UserError(f"{what} {path}: {top_key}[{i}] is missing field(s) {', '.join(missing)}")


def _check_int(path: Path, what: str, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} {path}: {where} must be an integer, got {value!r}")
    return value


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """Questions from a VQAv2 questions file ({"questions": [{image_id, question, question_id}]})."""
    path, what = Path(path), "VQA questions file"
    rows = _records(path, "questions", what)
    seen: set[int] = set()
    for i, q in enumerate(rows):
        _check_keys(path, what, "questions", i, q, QUESTION_KEYS)
        qid = _check_int(path, what, f"questions[{i}].question_id", q["question_id"])
        _check_int(path, what, f"questions[{i}].image_id", q["image_id"])
        if not isinstance(q["question"], str) or not q["question"].strip():
            raise UserError(f"{what} {path}: questions[{i}].question must be a non-empty string")
        if qid in seen:
            raise UserError(f"{what} {path}: duplicate question_id {qid} (questions[{i}])")
        seen.add(qid)
    return rows


def _check_answers(path: Path, what: str, i: int, answers: Any) -> None:
    if not isinstance(answers, list) or len(answers) != N_ANSWERS:
        n = len(answers) if isinstance(answers, list) else type(answers).__name__
        raise UserError(f"{what} {path}: annotations[{i}].answers must hold {N_ANSWERS} answers, got {n}")
    for j, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
            raise UserError(f"{what} {path}: annotations[{i}].answers[{j}] must be an object with a string 'answer'")


def read_annotations(path: str | Path, questions: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Annotations from a VQAv2 annotations file, validated (and checked against `questions` if given)."""
    path, what = Path(path), "VQA annotations file"
    rows = _records(path, "annotations", what)
    known = {int(q["question_id"]): q for q in questions} if questions is not None else None
    seen: set[int] = set()
    for i, a in enumerate(rows):
        _check_keys(path, what, "annotations", i, a, ANNOTATION_KEYS)
        qid = _check_int(path, what, f"annotations[{i}].question_id", a["question_id"])
        _check_int(path, what, f"annotations[{i}].image_id", a["image_id"])
        for key in ("answer_type", "question_type", "multiple_choice_answer"):
            if not isinstance(a[key], str):
                raise UserError(f"{what} {path}: annotations[{i}].{key} must be a string")
        _check_answers(path, what, i, a["answers"])
        if qid in seen:
            raise UserError(f"{what} {path}: duplicate question_id {qid} (annotations[{i}])")
        seen.add(qid)
        if known is not None:
            if qid not in known:
                raise UserError(f"{what} {path}: annotations[{i}].question_id {qid} is not in the questions file")
            if int(known[qid]["image_id"]) != a["image_id"]:
                raise UserError(f"{what} {path}: annotations[{i}].image_id {a['image_id']} differs from the "
                                f"question's image_id {known[qid]['image_id']}")
    return rows


def write_questions(path: str | Path, questions: list[dict[str, Any]], **info: Any) -> None:
    """Write the VQAv2 questions layout (extra top-level fields such as data_subtype via **info)."""
    atomic_write_json(path, {**info, "questions": questions})


def write_annotations(path: str | Path, annotations: list[dict[str, Any]], **info: Any) -> None:
    """Write the VQAv2 annotations layout."""
    atomic_write_json(path, {**info, "annotations": annotations})


def write_results(path: str | Path, predictions: Mapping[int, str]) -> None:
    """Write answers in the official results format: [{"question_id": int, "answer": str}]."""
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in sorted(predictions.items(), key=lambda x: int(x[0]))]
    atomic_write_json(path, rows)


def read_results(path: str | Path) -> dict[int, str]:
    """Read an official results file back into {question_id: answer}."""
    path, what = Path(path), "VQA results file"
    data = read_json(path, what)
    if not isinstance(data, list):
        raise UserError(f"{what} {path}: expected a JSON list of {{question_id, answer}}")
    out: dict[int, str] = {}
    for i, r in enumerate(data):
        if not isinstance(r, dict) or "question_id" not in r or not isinstance(r.get("answer"), str):
            raise UserError(f"{what} {path}: entry {i} must be {{\"question_id\": int, \"answer\": str}}")
        qid = _check_int(path, what, f"entry {i} question_id", r["question_id"])
        if qid in out:
            raise UserError(f"{what} {path}: duplicate question_id {qid} (entry {i})")
        out[qid] = r["answer"]
    return out
