"""Performance benchmarks: every module benchmark/perf/<area>.py defines `run(quick: bool) -> dict`.

`collect()` imports each area, runs it, and writes one JSON of throughput figures and ratios with the
machine and library versions beside them. A failing area is recorded with its error; the others run.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import os
import pkgutil
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmark.store import git_commit, library_versions
from maccap.io import atomic_write_json

log = logging.getLogger(__name__)


def list_areas() -> list[str]:
    """Names of the perf modules present in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run_area(name: str, quick: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
        figures = mod.run(quick=quick)
        status, error = "ok", None
    except Exception as e:  # noqa: BLE001 - one broken area must not hide the others
        figures, status = {}, "failed"
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        log.error("perf area %s failed: %s", name, e)
    return {"status": status, "error": error, "wall_s": round(time.perf_counter() - t0, 3), "figures": figures}


def collect(quick: bool = False, out: str | Path | None = None, areas: list[str] | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run the selected (default: all) areas; write the JSON to `out` when given."""
    names = areas or list_areas()
    unknown = sorted(set(names) - set(list_areas()))
    if unknown:
        from maccap.errors import UserError

        raise UserError(f"unknown perf area(s) {', '.join(unknown)}; known: {', '.join(list_areas())}")
    report: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "torch_threads": _torch_threads()},
        "git_commit": git_commit(),
        "versions": library_versions(),
        "areas": {},
    }
    for name in tqdm(names, desc="perf", disable=not progress):
        report["areas"][name] = run_area(name, quick)
    if out is not None:
        atomic_write_json(out, report)
    return report


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None
