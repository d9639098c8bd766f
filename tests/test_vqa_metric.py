"""VQAv2 accuracy: each normalisation rule, leave-one-out averaging, official file layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maccap.errors import UserError
from maccap.metrics.vqa import (CONTRACTIONS, normalize_answer, process_punctuation, read_annotations,
                                read_questions, read_results, vqa_accuracy, write_annotations, write_questions,
                                write_results)


def ann(qid: int, answers: list[str], qtype: str = "what color", atype: str = "other", image_id: int = 1) -> dict:
    assert len(answers) == 10
    return {"question_id": qid, "image_id": image_id, "question_type": qtype, "answer_type": atype,
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


def acc(pred: str, answers: list[str], **kw) -> float:
    return vqa_accuracy({1: pred}, [ann(1, answers)], **kw).overall


@pytest.mark.parametrize("matches,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_averaging(matches, expected):
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert acc("red", answers) == pytest.approx(expected)


def test_punctuation_rules():
    assert normalize_answer("yes.") == "yes"
    assert normalize_answer("  Yes!\t") == "yes"
    assert normalize_answer("red/blue") == "red blue"  # mark not touching a space -> space
    assert normalize_answer("red, blue") == "red blue"  # mark touching a space -> deleted
    assert normalize_answer("1,000") == "1000"  # digit-comma-digit: all marks deleted
    assert normalize_answer("3.5") == "3.5"  # period before a digit kept
    assert normalize_answer("t-shirt") == "t shirt"
    assert normalize_answer("don't") == "don't"  # apostrophe is not punctuation
    assert normalize_answer("10:30") == "10:30"  # neither is the colon
    assert process_punctuation("a.b.c.") == "abc"
    assert acc("Yes.", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)


def test_articles_numbers_contractions():
    assert normalize_answer("A dog") == "dog"
    assert normalize_answer("the Red car") == "red car"
    assert normalize_answer("an apple") == "apple"
    assert normalize_answer("Two") == "2"
    assert normalize_answer("none") == "0"
    assert normalize_answer("ten dogs") == "10 dogs"
    assert normalize_answer("eleven") == "eleven"  # only zero..ten
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("isnt") == "isn't"
    assert normalize_answer("hed've") == "he'd've" and normalize_answer("he'dve") == "he'd've"
    assert normalize_answer("yall'd've") == "y'all'd've"
    assert CONTRACTIONS["twas"] == "'twas" and "shes" not in CONTRACTIONS and "im" not in CONTRACTIONS
    answers = ["2"] * 4 + ["3"] * 6
    assert acc("two", answers) == 1.0
    assert acc("a dog", ["dog"] * 10) == 1.0


def test_reference_answers_follow_the_official_quirk():
    # references only get the punctuation step, and only when they disagree
    assert acc("yes", ["yes."] * 10) == 0.0
    assert acc("yes", ["yes."] * 5 + ["no"] * 5) == 1.0
    assert acc("two", ["two"] * 10) == 0.0  # prediction becomes "2"; identical references stay "two"
    assert acc("two", ["two"] * 10, normalize_references=True) == 1.0


def test_per_type_aggregation():
    anns = [ann(1, ["yes"] * 10, "is the", "yes/no"), ann(2, ["no"] * 10, "is the", "yes/no"),
            ann(3, ["2"] * 3 + ["3"] * 7, "how many", "number"), ann(4, ["red"] * 10, "what color", "other")]
    s = vqa_accuracy({1: "yes", 2: "yes", 3: "two", 4: "Red"}, anns)
    assert s.per_item == {1: 1.0, 2: 0.0, 3: pytest.approx(0.9), 4: 1.0}
    assert s.overall == pytest.approx(2.9 / 4)
    assert s.per_answer_type == {"number": pytest.approx(0.9), "other": 1.0, "yes/no": 0.5}
    assert s.per_question_type == {"how many": pytest.approx(0.9), "is the": 0.5, "what color": 1.0}
    assert s.normalized[4] == "red" and s.n_questions == 4
    with pytest.raises(UserError, match="no prediction"):
        vqa_accuracy({1: "yes"}, anns)
    with pytest.raises(UserError, match="not annotated"):
        vqa_accuracy({1: "yes", 2: "", 3: "", 4: "", 99: "x"}, anns)


def _layout(tmp_path: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    questions = [{"image_id": 7, "question": "What color is the cube?", "question_id": 70},
                 {"image_id": 8, "question": "How many spheres?", "question_id": 80}]
    anns = [ann(70, ["red"] * 10, image_id=7), ann(80, ["2"] * 6 + ["3"] * 4, "how many", "number", image_id=8)]
    qp, ap = tmp_path / "vqa" / "questions_test.json", tmp_path / "vqa" / "annotations_test.json"
    write_questions(qp, questions, data_subtype="test")
    write_annotations(ap, anns, data_subtype="test")
    return qp, ap, questions, anns


def test_official_layout_round_trip(tmp_path):
    qp, ap, questions, anns = _layout(tmp_path)
    assert json.loads(qp.read_text())["data_subtype"] == "test"
    q = read_questions(qp)
    assert q == questions
    assert read_annotations(ap, q) == anns
    rp = tmp_path / "results.json"
    write_results(rp, {80: "two", 70: "red"})
    assert json.loads(rp.read_text()) == [{"answer": "red", "question_id": 70}, {"answer": "two", "question_id": 80}]
    preds = read_results(rp)
    assert preds == {70: "red", 80: "two"}
    assert vqa_accuracy(preds, read_annotations(ap, q)).overall == 1.0
    assert not [p for p in rp.parent.iterdir() if p.name.endswith(".tmp")]


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def test_bad_question_files(tmp_path):
    qp = tmp_path / "q.json"
    cases = [
        ("[]", "'questions' list"),
        ({"questions": {}}, "must be a list"),
        ({"questions": [{"image_id": 1, "question": "x?"}]}, r"questions\[0\] is missing field\(s\) question_id"),
        ({"questions": [{"image_id": 1, "question": "x?", "question_id": "5"}]}, "question_id must be an integer"),
        ({"questions": [{"image_id": 1, "question": "", "question_id": 5}]}, "non-empty string"),
        ({"questions": [{"image_id": 1, "question": "a?", "question_id": 5},
                        {"image_id": 2, "question": "b?", "question_id": 5}]}, "duplicate question_id 5"),
        ('{"questions": [', "malformed JSON"),
    ]
    for obj, pattern in cases:
        with pytest.raises(UserError, match=pattern) as e:
            read_questions(_write(qp, obj))
        assert str(qp) in str(e.value)
    with pytest.raises(UserError, match="not found"):
        read_questions(tmp_path / "missing.json")


def test_bad_annotation_files(tmp_path):
    qp, ap, questions, anns = _layout(tmp_path)
    bad = tmp_path / "a.json"

    def broken(**change) -> dict:
        a = json.loads(json.dumps(anns[0]))
        a.update(change)
        return {"annotations": [a]}

    no_type = {"annotations": [{k: v for k, v in anns[0].items() if k != "answer_type"}]}
    cases = [
        (no_type, r"annotations\[0\] is missing field\(s\) answer_type"),
        (broken(answers=anns[0]["answers"][:9]), "must hold 10 answers, got 9"),
        (broken(answers=[{"answer_id": 1}] * 10), r"answers\[0\] must be an object with a string 'answer'"),
        ({"annotations": [anns[0], anns[0]]}, "duplicate question_id 70"),
        (broken(question_id=999), "question_id 999 is not in the questions file"),
        (broken(image_id=8), "differs from the question's image_id 7"),
    ]
    for obj, pattern in cases:
        with pytest.raises(UserError, match=pattern) as e:
            read_annotations(_write(bad, obj), questions)
        assert str(bad) in str(e.value)
    assert read_annotations(_write(bad, broken(question_id=999)))  # without questions: no cross-check
    with pytest.raises(UserError, match="duplicate question_id 70"):
        read_results(_write(bad, [{"question_id": 70, "answer": "a"}, {"question_id": 70, "answer": "b"}]))
