"""Paper-style tables from the across-seed summary: Markdown, LaTeX and CSV, plus run-id sidecars.

The caption table has methods as rows and, per dataset, B@4 / M / R / C / S (x100) as columns: our
mean +- CI half-width, and for real datasets with published numbers the reported value and the delta
beside it. Cells with nothing to show stay empty. Every cell's run ids go into <name>.runs.json so a
number in a paper can be traced to the result files it came from.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import reported as rep
from maccap.io import atomic_write_json, atomic_write_text

# Column key -> accepted metric names (compared after lower-casing and dropping non-alphanumerics).
CAPTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "B@4": ("bleu4",), "M": ("meteor",), "R": ("rougel",), "C": ("ciderd", "cider"), "S": ("spice",),
}
CAPTION_SCALE = 100.0
METHOD_ORDER = ("maccap", "maccap-no-noise", "maccap-no-subregion", "maccap-no-rerank", "maccap-1tok", "syntic",
                "capdec", "decap", "no-image")
TRANSPOSE_ABOVE = 12  # a task with more metrics gets one row per metric


def _norm(metric: str) -> str:
    return re.sub(r"[^a-z0-9]", "", metric.lower())


def caption_column(metric: str) -> str | None:
    n = _norm(metric)
    for col, names in CAPTION_COLUMNS.items():
        if n in names:
            return col
    return None


@dataclass
class Cell:
    """One table cell: ours (mean, CI), reported, delta, or plain text."""

    kind: str  # "ours" | "reported" | "delta" | "text"
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    text_value: str = ""
    run_ids: list[str] = field(default_factory=list)
    source: str = ""
    decimals: int = 1

    def text(self, tex: bool = False) -> str:
        if self.kind == "text":
            return self.text_value
        if self.value is None or not math.isfinite(self.value):
            return ""
        fmt = (lambda x: f"{x:.3g}") if self.decimals < 0 else (lambda x: f"{x:.{self.decimals}f}")  # noqa: E731
        v = fmt(self.value)
        if self.kind == "delta":
            return v if v.startswith("-") else "+" + v
        if self.kind != "ours":
            return v
        if self.ci_low is not None and math.isfinite(self.ci_low) and self.ci_high is not None and math.isfinite(self.ci_high):
            half = fmt(max(self.value - self.ci_low, self.ci_high - self.value))
            return f"{v} $\\pm$ {half}" if tex else f"{v} ± {half}"
        return f"{v} (n={self.n})"


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def cell_runs(self) -> dict[str, dict[str, Any]]:
        """row label -> column label -> run ids (ours) or source (reported)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            label = " / ".join(c.text() for c in row if c.kind == "text" and c.text())
            for col, c in zip(self.columns, row):
                if c.kind == "ours" and c.run_ids:
                    out.setdefault(label, {})[col] = {"run_ids": c.run_ids, "n": c.n, "mean": c.value,
                                                      "ci": [c.ci_low, c.ci_high]}
                elif c.kind == "reported" and c.value is not None:
                    out.setdefault(label, {})[col] = {"reported": c.value, "source": c.source}
        return out


def _fmt_decimals(x: float) -> int:
    """Decimals by magnitude; -1 means 3 significant digits (p-values, tiny variances)."""
    a = abs(x)
    return 1 if a >= 10 else 2 if a >= 1 else 3 if a >= 0.01 or a == 0 else -1


def _ours(row: pd.Series | None, scale: float = 1.0, decimals: int | None = None) -> Cell:
    if row is None:
        return Cell("ours")
    def sc(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) * scale
    mean = sc(row["mean"])
    return Cell("ours", mean, sc(row["ci_low"]), sc(row["ci_high"]), int(row["n"]),
                run_ids=str(row["run_ids"]).split(";") if row["run_ids"] else [],
                decimals=decimals if decimals is not None else _fmt_decimals(mean or 0.0))


def method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def caption_table(summary: pd.DataFrame, suite: str) -> Table | None:
    """Methods as rows; per dataset B@4/M/R/C/S (x100), ours beside reported and the delta."""
    s = summary[summary["suite"] == suite].copy()
    s["col"] = s["metric"].map(caption_column)
    s = s[s["col"].notna()]
    if s.empty:
        return None
    datasets = list(dict.fromkeys(s.sort_values("dataset", kind="stable")["dataset"]))
    rep_cols = {(r.dataset, r.metric) for r in rep.REPORTED}
    has_rep = {d: any(r.dataset == d for r in rep.REPORTED) for d in datasets}
    dup = s.groupby(["method", "backbone", "dataset", "col"]).size().max() > 1
    multi_bb = s["backbone"].nunique() > 1
    keys = sorted({(r.method, r.backbone, r.task if dup else "") for r in s.itertuples()},
                  key=lambda k: (method_key(k[0]), k[1], k[2]))
    columns = ["method"] + (["backbone"] if multi_bb else []) + (["task"] if dup else [])
    for d in datasets:
        for col in CAPTION_COLUMNS:
            columns.append(f"{d} {col}")
            if (d, col) in rep_cols:
                columns += [f"{d} {col} reported", f"{d} {col} Δ"]
    idx = {(r.method, r.backbone, r.task if dup else "", r.dataset, r.col): r for _, r in s.iterrows()}
    rows = []
    for m, bb, task in keys:
        row = [Cell("text", text_value=m)] + ([Cell("text", text_value=bb)] if multi_bb else []) + \
              ([Cell("text", text_value=task)] if dup else [])
        for d in datasets:
            for col in CAPTION_COLUMNS:
                ours = _ours(idx.get((m, bb, task, d, col)), CAPTION_SCALE, 1)
                row.append(ours)
                if (d, col) in rep_cols:
                    r = rep.reported_value(m, d, col)
                    row.append(Cell("reported", r.value, source=r.source) if r else Cell("reported"))
                    delta = ours.value - r.value if (r and ours.value is not None) else None
                    row.append(Cell("delta", delta))
        rows.append(row)
    rows += _reported_only_rows(datasets, has_rep, rep_cols, multi_bb, dup)
    notes = ["ours: mean ± half-width of the 95% percentile bootstrap CI across seeds (x100); "
             "(n=k): fewer than 3 seeds, no CI", "reported: published numbers (analysis/reported.py); Δ = ours - reported"]
    return Table(f"{suite}-captioning", f"Captioning ({suite})", columns, rows, notes)


def _reported_only_rows(datasets: list[str], has_rep: dict[str, bool], rep_cols: set[tuple[str, str]],
                        multi_bb: bool, dup: bool) -> list[list[Cell]]:
    if not any(has_rep.values()):
        return []
    rows = []
    for m in rep.reported_only_methods():
        if not any(rep.reported_value(m, d, c) for d in datasets for c in CAPTION_COLUMNS):
            continue
        row = [Cell("text", text_value=f"{m} (reported)")] + ([Cell("text")] if multi_bb else []) + ([Cell("text")] if dup else [])
        for d in datasets:
            for col in CAPTION_COLUMNS:
                row.append(Cell("ours"))
                if (d, col) in rep_cols:
                    r = rep.reported_value(m, d, col)
                    row += [Cell("reported", r.value, source=r.source) if r else Cell("reported"), Cell("delta")]
        rows.append(row)
    return rows


def metric_tables(summary: pd.DataFrame, suite: str) -> list[Table]:
    """One table per task entry, raw scale. Few metrics: (method, backbone, dataset) rows and a column
    per metric. Many metrics (the gap analysis): transposed, a row per metric."""
    out = []
    s = summary[summary["suite"] == suite]
    for task, g in s.groupby("task", sort=False):
        metrics = list(dict.fromkeys(g["metric"]))
        keys = sorted({(r.method, r.backbone, r.dataset) for r in g.itertuples()},
                      key=lambda k: (method_key(k[0]), k[1], k[2]))
        idx = {(r.method, r.backbone, r.dataset, r.metric): r for _, r in g.iterrows()}
        title = f"{task} ({suite}): mean ± CI half-width across seeds"
        if len(metrics) > TRANSPOSE_ABOVE:
            cols = ["metric"] + [" / ".join(x for x in k if x != "default") for k in keys]
            rows = [[Cell("text", text_value=metric)] + [_ours(idx.get((*k, metric))) for k in keys] for metric in metrics]
            out.append(Table(f"{suite}-{task}", title, cols, rows))
            continue
        rows = [[Cell("text", text_value=m), Cell("text", text_value=b), Cell("text", text_value=d)]
                + [_ours(idx.get((m, b, d, metric))) for metric in metrics] for m, b, d in keys]
        out.append(Table(f"{suite}-{task}", title, ["method", "backbone", "dataset"] + metrics, rows))
    return out


VQA_PREFIX = "vqa_acc"


def vqa_table(summary: pd.DataFrame, suite: str) -> Table | None:
    """Every VQA entry (prompting mode) x method x backbone as a row; overall and per question type (x100).

    One table, so the image prefix and caption-then-answer stand beside the no-image prior they must beat.
    """
    s = summary[(summary["suite"] == suite) & summary["metric"].str.startswith(VQA_PREFIX)]
    if s.empty:
        return None
    qtypes = sorted({m for m in s["metric"] if m.startswith(f"{VQA_PREFIX}/qtype/")})
    metrics = [VQA_PREFIX] + qtypes
    idx = {(r.task, r.method, r.backbone, r.metric): r for _, r in s.iterrows()}
    keys = sorted({(r.task, r.method, r.backbone) for r in s.itertuples()},
                  key=lambda k: (method_key(k[1]), k[2], k[0]))
    rows = [[Cell("text", text_value=t), Cell("text", text_value=m), Cell("text", text_value=b)]
            + [_ours(idx.get((t, m, b, metric)), CAPTION_SCALE, 1) for metric in metrics] for t, m, b in keys]
    columns = ["entry", "method", "backbone", "overall"] + [q.split("/qtype/", 1)[1] for q in qtypes]
    return Table(f"{suite}-vqa-modes", f"Zero-shot VQA accuracy by prompting mode ({suite})", columns, rows,
                 ["VQAv2 accuracy x100: mean ± half-width of the 95% percentile bootstrap CI across seeds",
                  "entries: the suite's VQA task entries (their `mode`: prefix, caption-then-answer, no-image prior)"])


def build_tables(summary: pd.DataFrame, suite: str) -> list[Table]:
    extra = [t for t in (caption_table(summary, suite), vqa_table(summary, suite)) if t is not None]
    return extra + metric_tables(summary, suite)


# ----------------------------------------------------------------------------------------------
# Renderers


def to_markdown(t: Table) -> str:
    esc = lambda x: x.replace("|", "\\|")  # noqa: E731
    lines = [f"**{t.title}**", "", "| " + " | ".join(esc(c) for c in t.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(t.columns))) + "|"]
    lines += ["| " + " | ".join(esc(c.text()) for c in row) + " |" for row in t.rows]
    lines += [""] + [f"_{n}_" for n in t.notes]
    return "\n".join(lines) + "\n"


_TEX_ESC = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
            "Δ": r"$\Delta$", "±": r"$\pm$", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESC.get(ch, ch) for ch in text)


def to_latex(t: Table) -> str:
    spec = "l" * sum(1 for c in t.rows[0] if c.kind == "text") if t.rows else "l"
    spec += "r" * (len(t.columns) - len(spec))
    body = [" & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for row in t.rows:
        body.append(" & ".join(c.text(tex=True) if c.kind == "ours" else tex_escape(c.text()) for c in row) + r" \\")
    caption = tex_escape(t.title + ". " + " ".join(t.notes))
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{caption}}}",
                      f"\\label{{tab:{re.sub(r'[^A-Za-z0-9-]', '-', t.name)}}}", f"\\begin{{tabular}}{{{spec}}}",
                      r"\toprule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"


def to_csv(t: Table) -> str:
    """Numbers, not strings: each 'ours' column expands into mean, ci_low, ci_high, n."""
    header: list[str] = []
    for col, c in zip(t.columns, t.rows[0] if t.rows else []):
        header += [f"{col} mean", f"{col} ci_low", f"{col} ci_high", f"{col} n"] if c.kind == "ours" else [col]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    num = lambda v: "" if v is None or not math.isfinite(v) else repr(round(v, 6))  # noqa: E731
    for row in t.rows:
        out: list[str] = []
        for c in row:
            if c.kind == "ours":
                out += [num(c.value), num(c.ci_low), num(c.ci_high), str(c.n) if c.n else ""]
            elif c.kind == "text":
                out.append(c.text_value)
            else:
                out.append(num(c.value))
        w.writerow(out)
    return buf.getvalue()


def write_tables(tables: list[Table], out_dir: str | Path) -> dict[str, dict[str, Path]]:
    """tables/<name>.{md,tex,csv} and <name>.runs.json (cell -> run ids)."""
    out_dir = Path(out_dir)
    written: dict[str, dict[str, Path]] = {}
    for t in tables:
        paths = {"md": out_dir / f"{t.name}.md", "tex": out_dir / f"{t.name}.tex", "csv": out_dir / f"{t.name}.csv",
                 "runs": out_dir / f"{t.name}.runs.json"}
        atomic_write_text(paths["md"], to_markdown(t))
        atomic_write_text(paths["tex"], to_latex(t))
        atomic_write_text(paths["csv"], to_csv(t))
        atomic_write_json(paths["runs"], {"table": t.name, "title": t.title, "cells": t.cell_runs()})
        written[t.name] = paths
    return written
