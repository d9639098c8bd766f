"""Tokenisation for the caption metrics: Stanford PTBTokenizer (Java) and a pure-Python stand-in.

The COCO caption metrics are defined on the output of Stanford's PTBTokenizer 3.4.1 run with
`-preserveLines -lowerCase`, after which pycocoevalcap drops a fixed list of punctuation tokens.
`ptb_tokenize` runs that exact jar, but from a writable work dir (pycocoevalcap's own wrapper writes
its temp file inside site-packages). `python_tokenize` mimics it without Java so BLEU, ROUGE-L and
CIDEr-D stay available on machines without a JVM; its numbers are close to, not identical with, the
PTB ones and every result computed with it is labelled tokenizer="python".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pycocoevalcap.tokenizer.ptbtokenizer as _ptb_module

log = logging.getLogger(__name__)

# pycocoevalcap's list; it compares case-sensitively after -lowerCase, so the bracket tokens
# (-LRB- etc.) never match and survive as "-lrb-": mirrored here on purpose.
PUNCTUATIONS = frozenset(_ptb_module.PUNCTUATIONS)
PTB_JAR = Path(_ptb_module.__file__).parent / _ptb_module.STANFORD_CORENLP_3_4_1_JAR


def find_java() -> str | None:
    """Path of the `java` executable on PATH, or None (callers then take the Java-free path)."""
    return shutil.which("java")


def _clean_line(text: str) -> str:
    # one caption per line: any line break inside a caption would shift every later caption
    return re.sub(r"[\r\n\u2028\u2029\x0b\x0c\x85]", " ", text)


def ptb_tokenize(texts: list[str], work_dir: Path, java: str, heap: str = "512m") -> list[str]:
    """Tokenise with Stanford PTBTokenizer exactly as pycocoevalcap does, temp file in `work_dir`."""
    if not texts:
        return []
    work_dir.mkdir(parents=True, exist_ok=True)
    # named like maccap.io's temp files, so the runner's sweep removes what a killed process leaves
    fd, name = tempfile.mkstemp(prefix=f".ptb_input.{os.getpid()}.", suffix=".tmp", dir=work_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write("\n".join(_clean_line(t) for t in texts).encode("utf-8"))
        cmd = [java, f"-Xmx{heap}", "-Dfile.encoding=UTF-8", "-cp", str(PTB_JAR),
               "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", name]
        proc = subprocess.run(cmd, cwd=work_dir, capture_output=True, check=False)
    finally:
        Path(name).unlink(missing_ok=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-500:]
        raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): {err}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(texts):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(texts)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in lines[: len(texts)]]


_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SUFFIXES = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
# abbreviations whose final period PTB keeps (besides single letters such as "n." or "b.")
_ABBREVIATIONS = frozenset(
    "st ave dr mr mrs ms jr sr prof rd blvd mt ft inc co corp ltd etc vs no dept gen gov sgt capt col lt".split()
)
_TOKEN = re.compile(
    r"""
    \d+(?:[.,:/]\d+)+            # numbers and times: 1,000  3.5  10:30  1/2
    | \w+(?:(?:[-&/.']|'')\w+)*   # words; inner hyphen, slash, ampersand, period, apostrophe
    | \.\.\.+ | -{2,}            # ellipsis, dashes
    | \S                         # any other single character
    """,
    re.VERBOSE,
)


def _split_clitics(tok: str) -> list[str]:
    if tok == "cannot":
        return ["can", "not"]
    for suf in _SUFFIXES:
        if tok.endswith(suf) and len(tok) > len(suf):
            return _split_clitics(tok[: -len(suf)]) + [suf]
    return [tok]


def _word_tokens(raw: str) -> list[str]:
    toks = _TOKEN.findall(raw)
    # keep the period of an abbreviation ("st.", "n.") attached, as PTB does
    out: list[str] = []
    for tok in toks:
        prev = out[-1] if out else ""
        if tok == "." and (prev in _ABBREVIATIONS or (len(prev) == 1 and prev.isalpha()) or "." in prev[1:]):
            out[-1] += "."
            continue
        out.append(tok)
    return out


def python_tokenize_one(text: str) -> str:
    """Lower-case, split like PTB (clitics, punctuation, brackets), drop pycocoevalcap's punctuation."""
    text = _clean_line(text).lower().replace("&amp;", "&").replace("\u2019", "'").replace("\u2018", "'")
    out: list[str] = []
    for raw in text.split():
        if raw in _SUFFIXES:  # a detached clitic ("person 's") stays one token
            out.append(raw)
            continue
        for tok in _word_tokens(raw):
            tok = _BRACKETS.get(tok, tok)
            for piece in _split_clitics(tok):
                if piece != '"' and piece not in PUNCTUATIONS:
                    out.append(piece)
    return " ".join(out)


def python_tokenize(texts: list[str]) -> list[str]:
    """Java-free approximation of `ptb_tokenize` (labelled tokenizer="python" in results)."""
    return [python_tokenize_one(t) for t in texts]
