"""Saving matplotlib figures so that the same figure gives the same bytes (determinism checks).

Matplotlib stamps SVGs with the current date and draws their element ids from a random salt; both
are fixed here. PNGs carry only the matplotlib version, which is stable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SVG_SALT = "maccap-bench"


def savefig_stable(fig: Any, target: str | Path, fmt: str, dpi: int | None = None) -> None:
    """fig.savefig with no timestamp and a fixed SVG id salt."""
    import matplotlib

    metadata = {"Date": None} if fmt in ("svg", "pdf") else None
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT}):
        fig.savefig(target, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
