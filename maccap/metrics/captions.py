"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) through pycocoevalcap's scorers.

Why a wrapper: pycocoevalcap's `COCOEvalCap.evaluate()` always builds SPICE (which downloads CoreNLP on
first use), its Java pieces write temp files inside site-packages and SPICE asks for an 8 GB heap.
Here every scorer is called directly on PTB-tokenised text, every Java process runs from a writable
work dir with a configurable heap, SPICE runs only when its jars are present, and a Java-free path
(Python tokenizer; BLEU, ROUGE-L, CIDEr-D) keeps the pure-Python metrics available without a JVM.

CIDEr-D depends on the evaluated set: its IDF weights are document frequencies over the references of
every image scored together. Scores are therefore always computed over the whole evaluated set, and
confidence intervals must resample the stored per-item values, never re-run CIDEr-D on a subset.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as _spice_module
from tqdm import tqdm

from maccap import faults
from maccap.errors import UserError
from maccap.metrics.ptb import find_java, ptb_tokenize, python_tokenize

log = logging.getLogger(__name__)

CAPTION_METRICS: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider", "spice")
JAVA_METRICS = frozenset({"meteor", "spice"})
METEOR_JAR = Path(_meteor_module.__file__).parent / _meteor_module.METEOR_JAR
SPICE_DIR = Path(_spice_module.__file__).parent
SPICE_JAR = SPICE_DIR / _spice_module.SPICE_JAR
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
DEFAULT_JAVA_HEAP = "2g"
DEFAULT_SPICE_HEAP = "4g"  # CoreNLP parsing; pycocoevalcap asks for 8g
# SPICE's serialiser (FST) reflects into java.base; Java 9+ refuses unless these packages are opened
_SPICE_OPENS = ("java.lang", "java.math", "java.util", "java.util.concurrent", "java.net", "java.text", "java.io")


@dataclass
class CaptionScores:
    """Corpus metrics on pycocoevalcap's 0-1 scale (tables multiply by 100) plus per-item values.

    per_item maps an output column (BLEU-4, CIDEr-D, SPICE, ...) to {item id: value}; skipped maps a
    metric name to the reason it was not computed; tokenizer says which tokenisation produced them
    ("ptb" = Stanford PTBTokenizer as in the COCO evaluation, "python" = the Java-free stand-in).
    """

    metrics: dict[str, float]
    per_item: dict[str, dict[str, float]]
    skipped: dict[str, str]
    tokenizer: str
    n_items: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def as_percent(self) -> dict[str, float]:
        """Metrics x 100, the scale papers report."""
        return {k: 100.0 * v for k, v in self.metrics.items()}


def spice_status() -> tuple[bool, str]:
    """(available, reason): SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap would download."""
    missing = [j for j in SPICE_CORENLP_JARS if not (SPICE_DIR / "lib" / j).is_file()]
    if not SPICE_JAR.is_file():
        return False, f"SPICE jar missing: {SPICE_JAR}"
    if missing:
        return False, (f"Stanford CoreNLP jars missing from {SPICE_DIR / 'lib'} ({', '.join(missing)}); "
                       "install them by hand to enable SPICE (never downloaded here)")
    return True, ""


class _WorkDirMeteor(Meteor):
    """pycocoevalcap's METEOR protocol (inherited compute_score), started from `work_dir` with `heap`."""

    def __init__(self, java: str, work_dir: Path, heap: str = DEFAULT_JAVA_HEAP) -> None:  # noqa: D107
        self.lock = threading.Lock()
        self.meteor_cmd = [java, "-Dfile.encoding=UTF-8", "-jar", f"-Xmx{heap}", str(METEOR_JAR),
                           "-", "-", "-stdio", "-l", "en", "-norm"]
        # stderr to DEVNULL: an unread PIPE can fill and stall the JVM on long runs
        self.meteor_p = subprocess.Popen(self.meteor_cmd, cwd=work_dir, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        proc = getattr(self, "meteor_p", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.kill()
            proc.wait()
        self.meteor_p = None

    def __del__(self) -> None:
        self.close()


@functools.lru_cache(maxsize=8)
def java_major_version(java: str) -> int:
    """Major version of a JVM ("1.8.0_312" -> 8, "17.0.9" -> 17); 0 when it cannot be told."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return parse_java_version(proc.stderr + proc.stdout)


def parse_java_version(text: str) -> int:
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def spice_command(java: str, in_path: Path, out_path: Path, cache: Path, heap: str = DEFAULT_SPICE_HEAP) -> list[str]:
    """The SPICE command line; on Java 9+ it opens the packages SPICE's serialiser needs."""
    opens = [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in _SPICE_OPENS] if java_major_version(java) >= 9 else []
    return [java, *opens, "-jar", f"-Xmx{heap}", str(SPICE_JAR), str(in_path), "-cache", str(cache),
            "-out", str(out_path), "-subset", "-silent"]


def _spice_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def run_spice(gts: Mapping[str, list[str]], res: Mapping[str, list[str]], java: str, work_dir: Path,
              heap: str = DEFAULT_SPICE_HEAP) -> tuple[float, dict[str, float]]:
    """SPICE F-score (corpus mean, per item) with input/output/cache files under `work_dir`."""
    ids = sorted(gts)
    rows = [{"image_id": i, "test": res[i][0], "refs": list(gts[i])} for i in ids]
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = work_dir / "spice_cache"
    cache.mkdir(exist_ok=True)
    in_path = work_dir / f"spice_in_{os.getpid()}.json"
    out_path = work_dir / f"spice_out_{os.getpid()}.json"
    in_path.write_text(json.dumps(rows), encoding="utf-8")
    cmd = spice_command(java, in_path, out_path, cache, heap)
    try:
        proc = subprocess.run(cmd, cwd=work_dir, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"SPICE exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-400:]}")
        results = json.loads(out_path.read_text(encoding="utf-8"))
    finally:
        in_path.unlink(missing_ok=True)
        out_path.unlink(missing_ok=True)
    per = {str(r["image_id"]): _spice_float(r["scores"]["All"]["f"]) for r in results}
    return float(np.mean([per[i] for i in ids])), {i: per[i] for i in ids}


def _validate(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    if not predictions:
        raise UserError("score_captions: predictions are empty; expected {item id: caption}")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise UserError(f"score_captions: {len(missing)} prediction id(s) have no references, "
                        f"e.g. {missing[:3]}; expected every prediction id in references")
    for k in predictions:
        if not isinstance(predictions[k], str):
            raise UserError(f"score_captions: prediction {k!r} is {type(predictions[k]).__name__}; expected str")
        refs = references[k]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise UserError(f"score_captions: references of {k!r} must be a non-empty list of strings")
    extra = len(references) - len(predictions)
    if extra > 0:
        log.info("scoring %d predictions; %d reference items have no prediction", len(predictions), extra)
    return [str(k) for k in predictions]


def _resolve_metrics(metrics: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(metrics))
    for m in wanted:
        if m not in CAPTION_METRICS:
            from maccap.metrics import METRICS  # late import: the registry imports this module

            METRICS.get(m)  # raises "did you mean" for typos
            raise UserError(f"metric {m!r} is not a text caption metric (expected one of "
                            f"{', '.join(CAPTION_METRICS)}); CLIP-S/RefCLIP-S are computed from "
                            "backbone features with maccap.metrics.clipscore")
    return wanted


@contextlib.contextmanager
def _work_dir(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        work_dir = Path(work_dir)
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"metric work dir {work_dir} is not writable: {e.strerror or e}") from e
        yield work_dir
    else:
        with tempfile.TemporaryDirectory(prefix="maccap_metrics_") as tmp:
            yield Path(tmp)


def tokenize_for_metrics(ids: list[str], predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                         java: str | None, work_dir: Path, heap: str = DEFAULT_JAVA_HEAP
                         ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(gts, res) in pycocoevalcap's layout, tokenised in one PTB call (or the Python stand-in)."""
    texts = [predictions[i] for i in ids]
    counts = [len(references[i]) for i in ids]
    texts += [r for i in ids for r in references[i]]
    toks = ptb_tokenize(texts, work_dir, java, heap) if java else python_tokenize(texts)
    res = {i: [toks[n]] for n, i in enumerate(ids)}
    gts: dict[str, list[str]] = {}
    pos = len(ids)
    for i, c in zip(ids, counts):
        gts[i] = toks[pos: pos + c]
        pos += c
    return gts, res


def _per_item(ids: list[str], values: Sequence[float]) -> dict[str, float]:
    return {i: float(v) for i, v in zip(ids, values)}


def score_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   metrics: Iterable[str] = CAPTION_METRICS, work_dir: Path | None = None, progress: bool = False,
                   java_heap: str = DEFAULT_JAVA_HEAP, use_java: bool | None = None) -> CaptionScores:
    """Score captions against references with pycocoevalcap's scorers on PTB-tokenised text.

    predictions: {item id: caption}; references: {item id: [reference captions]} (may hold more items
    than predictions; the evaluated set is the prediction ids). Every metric, CIDEr-D included, is
    computed over that whole set at once: CIDEr-D's IDF comes from it, so never call this on bootstrap
    resamples; resample `per_item` instead. use_java=None finds `java` on PATH; False forces the
    Java-free path (tokenizer="python", METEOR and SPICE skipped). Temp files live in `work_dir`
    (a fresh temp dir when None); the JVMs get `-Xmx{java_heap}`, SPICE at least DEFAULT_SPICE_HEAP.
    """
    predictions = {str(k): v for k, v in predictions.items()}  # ids may be ints; results use str ids
    references = {str(k): v for k, v in references.items()}
    ids = _validate(predictions, references)
    wanted = _resolve_metrics(metrics)
    _heap_bytes(java_heap)
    java = find_java() if use_java is not False else None
    if use_java and java is None:
        raise UserError("use_java=True but no `java` executable is on PATH")
    if java is None and use_java is None:
        log.warning("java not found: Java-free caption metrics (Python tokenizer; METEOR and SPICE skipped)")
    scores = CaptionScores(metrics={}, per_item={}, skipped={}, tokenizer="ptb" if java else "python", n_items=len(ids))
    if java is None:
        for m in wanted:
            if m in JAVA_METRICS:
                scores.skipped[m] = "java not found" if use_java is None else "java disabled (use_java=False)"
    with _work_dir(work_dir) as wd:
        t0 = time.perf_counter()
        gts, res = tokenize_for_metrics(ids, predictions, references, java, wd, java_heap)
        scores.timings["tokenize"] = time.perf_counter() - t0
        faults.checkpoint("metrics")
        todo = [m for m in wanted if m not in scores.skipped]
        for m in tqdm(todo, desc="caption metrics", disable=not progress):
            t0 = time.perf_counter()
            _RUNNERS[m](scores, ids, gts, res, java, wd, java_heap)
            scores.timings[m] = time.perf_counter() - t0
    log.info("caption metrics (%s tokenizer, %d items): %s; skipped %s", scores.tokenizer, len(ids),
             {k: round(v, 4) for k, v in scores.metrics.items()}, scores.skipped)
    return scores


_Gts = Mapping[str, list[str]]


def _run_bleu(s: CaptionScores, ids: list[str], gts: _Gts, res: _Gts, *_: object) -> None:
    corpus, per = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        s.metrics[f"BLEU-{n + 1}"] = float(corpus[n])
        s.per_item[f"BLEU-{n + 1}"] = _per_item(ids, per[n])


_METEOR: dict[tuple[str, str], _WorkDirMeteor] = {}


def _meteor(java: str, heap: str) -> _WorkDirMeteor:
    """One METEOR JVM per (java, heap) for the whole process: its start (~10 s, the paraphrase
    tables) dwarfs scoring 500 captions (~2 s), and a suite scores dozens of runs. Segment scores
    do not depend on what the JVM scored before, so sharing it changes no number."""
    scorer = _METEOR.get((java, heap))
    if scorer is None or scorer.meteor_p is None or scorer.meteor_p.poll() is not None:
        cwd = Path(tempfile.mkdtemp(prefix="maccap-meteor-"))  # never site-packages
        scorer = _METEOR[(java, heap)] = _WorkDirMeteor(java, cwd, heap)
    return scorer


@atexit.register
def _close_meteors() -> None:
    for scorer in _METEOR.values():
        scorer.close()
    _METEOR.clear()


def _run_meteor(s: CaptionScores, ids: list[str], gts: _Gts, res: _Gts, java: str, wd: Path, heap: str) -> None:
    scorer = _meteor(java, heap)
    try:
        corpus, per = scorer.compute_score(gts, res)
    except (ValueError, OSError) as e:  # the JVM died or printed something unexpected
        scorer.close()
        s.skipped["meteor"] = f"METEOR failed: {e}"
        log.warning("METEOR failed: %s", e)
        return
    s.metrics["METEOR"] = float(corpus)
    s.per_item["METEOR"] = _per_item(ids, per)


def _run_rouge(s: CaptionScores, ids: list[str], gts: _Gts, res: _Gts, *_: object) -> None:
    corpus, per = Rouge().compute_score(gts, res)
    s.metrics["ROUGE-L"] = float(corpus)
    s.per_item["ROUGE-L"] = _per_item(ids, per)


def _run_cider(s: CaptionScores, ids: list[str], gts: _Gts, res: _Gts, *_: object) -> None:
    # pycocoevalcap's Cider is CIDEr-D (clipped counts, Gaussian length penalty sigma=6, x10)
    corpus, per = Cider().compute_score(gts, res)
    s.metrics["CIDEr-D"] = float(corpus)
    s.per_item["CIDEr-D"] = _per_item(ids, per)


def _run_spice(s: CaptionScores, ids: list[str], gts: _Gts, res: _Gts, java: str, wd: Path, heap: str) -> None:
    ok, reason = spice_status()
    if not ok:
        s.skipped["spice"] = reason
        return
    try:
        corpus, per = run_spice(gts, res, java, wd, max(heap, DEFAULT_SPICE_HEAP, key=_heap_bytes))
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        s.skipped["spice"] = f"SPICE failed: {e}"
        log.warning("SPICE failed: %s", e)
        return
    s.metrics["SPICE"] = corpus
    s.per_item["SPICE"] = per


def _heap_bytes(heap: str) -> int:
    m = re.fullmatch(r"(\d+)([kmgt]?)", heap.strip().lower())
    if not m:
        raise UserError(f"java_heap {heap!r} is not a JVM heap size; expected e.g. '512m' or '2g'")
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")


_RUNNERS: dict[str, Callable[..., None]] = {
    "bleu": _run_bleu, "meteor": _run_meteor, "rouge": _run_rouge, "cider": _run_cider, "spice": _run_spice,
}
