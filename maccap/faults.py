"""Fault injection for reliability tests: kill this process at the n-th pass of a named point.

Set ``MACCAP_FAULT=<point>:<n>`` (or ``<point>:<n>:int`` for a Ctrl-C instead of a SIGKILL; several
specs separated by commas) and the n-th call of ``checkpoint(<point>)`` in this process sends the
signal to the process itself. Tests use it to prove that a kill at any write point loses nothing: a
rerun of the same command must end with the same tables as an uninterrupted run.

With the variable unset, ``checkpoint`` costs one environment lookup, nothing else. The points are
listed in POINTS (and in docs/bad-inputs.md); an unknown point name in the variable is a ValueError,
so a typo in a test cannot silently turn into "no fault injected".
"""

from __future__ import annotations

import os
import signal

ENV = "MACCAP_FAULT"

# point -> where it is passed (once per pass)
POINTS: dict[str, str] = {
    "world-file": "quickstart world generation, after each file is written into the .partial directory",
    "world-publish": "world generation, after the manifest, before the .partial directory is renamed into place",
    "clip-step": "quickstart CLIP training, after each optimiser step",
    "clip-saved": "CLIP training, after the weights file, before its provenance JSON",
    "lm-step": "quickstart LM training, after each optimiser step",
    "lm-saved": "quickstart LM training, after save_pretrained, before the DONE marker",
    "feature-shard": "feature cache, after each shard file, before the sidecar meta.json",
    "captioner-step": "captioner training, after each optimiser step",
    "captioner-epoch": "captioner training, after each epoch checkpoint",
    "captioner-saved": "captioner training, after bridge.safetensors, before meta.json",
    "caption-batch": "captioning (evaluation), after each decoded batch of images",
    "metrics": "caption metrics, after tokenisation, before the scorers",
    "result-items": "result store, after items.jsonl, before result.json",
    "run-done": "runner, after a run's result.json is written",
    "aggregate": "aggregation, after each table CSV (tidy, summary, paired), before the next file",
    "report": "report rendering, after the tables, before the figures and index.html",
    "atomic-replace": "every atomic write (maccap.io.atomic_path), just before the temp file is renamed",
}

_SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT}
_passes: dict[str, int] = {}


def parse(spec: str) -> dict[str, tuple[int, signal.Signals]]:
    """'point:n[:kill|int],...' -> {point: (n, signal)}; ValueError on anything else."""
    out: dict[str, tuple[int, signal.Signals]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fields = part.split(":")
        if len(fields) not in (2, 3) or fields[0] not in POINTS or not fields[1].isdigit() or int(fields[1]) < 1:
            raise ValueError(f"{ENV}={spec!r}: expected point:n[:kill|int] with n >= 1 and point one of "
                             f"{', '.join(sorted(POINTS))}")
        sig = _SIGNALS.get(fields[2] if len(fields) == 3 else "kill")
        if sig is None:
            raise ValueError(f"{ENV}={spec!r}: signal must be 'kill' or 'int'")
        out[fields[0]] = (int(fields[1]), sig)
    return out


def checkpoint(point: str) -> None:
    """Count one pass of `point`; signal this process when MACCAP_FAULT asks for this pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _inject(point, spec)


def _inject(point: str, spec: str) -> None:
    if point not in POINTS:
        raise ValueError(f"fault point {point!r} is not declared in maccap.faults.POINTS")
    wanted = parse(spec).get(point)
    _passes[point] = _passes.get(point, 0) + 1
    if wanted is not None and _passes[point] == wanted[0]:
        os.kill(os.getpid(), wanted[1])


def reset() -> None:
    """Forget the pass counts (a forked test child starts counting from zero)."""
    _passes.clear()
