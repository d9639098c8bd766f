"""The static report of a suite: reports/<suite>/{index.html, tables/, figures/, data/}.

index.html is one self-contained page (figures embedded as base64, sortable tables with a few lines
of JavaScript from report_assets/) with: the paper-style tables, statistics across seeds, paired
comparisons, the analysis figures and markdown that tasks left in their run directories, per-image
caption examples (selected subregions drawn, candidates with CLIP scores), failed runs with their
errors, and provenance (git commits, library versions, seeds, config hashes).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis.aggregate import (AggregateResult, load_results, paired_comparisons, summarize, tidy_table,
                                write_table)
from analysis.tables import Table, method_key, build_tables, write_tables
from benchmark.store import slug
from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_bytes, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "report_assets"
MAX_FIG_METRICS = 12
MAX_EXAMPLES = 4
MAX_EMBED_BYTES = 2_000_000
ARTEFACT_SUFFIXES = (".png", ".svg", ".md")


def render_report(results_dir: str | Path, reports_dir: str | Path, suite_name: str,
                  agg: AggregateResult | None = None, n_resamples: int = 10_000) -> Path:
    """Write reports/<suite>/ from the suite's result files; returns the path of index.html."""
    results, invalid = load_results(results_dir, suite_name)
    if not results:
        raise UserError(f"no result.json files for suite {suite_name!r} under {results_dir}")
    if agg is None:
        tidy = tidy_table(results)
        agg = AggregateResult(tidy, summarize(tidy, n_resamples=n_resamples),
                              paired_comparisons(tidy, n_resamples=n_resamples), invalid)
    out = Path(reports_dir) / slug(suite_name)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("tidy", agg.tidy), ("summary", agg.summary), ("paired", agg.paired)):
        write_table(df, out / "data" / f"{name}.csv", parquet=False)
    tables = build_tables(agg.summary, suite_name)
    write_tables(tables, out / "tables")
    faults.checkpoint("report")
    figures = metric_figures(agg.tidy, out / "figures")
    artefacts = collect_artefacts(results, out / "figures" / "runs")
    examples = caption_examples(results, out / "figures" / "examples")
    page = _page(suite_name, results, agg, tables, figures, artefacts, examples, out)
    atomic_write_text(out / "index.html", page)
    log.info("report written to %s", out / "index.html")
    return out / "index.html"


# ----------------------------------------------------------------------------------------------
# Figures


def _save_fig(fig: Any, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from analysis.figsave import savefig_stable

    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            savefig_stable(fig, tmp, ext, dpi=110)
        paths.append(path)
    plt.close(fig)
    return paths


def _mean_marks(ax: Any, d: pd.DataFrame, order: list[str], hue_order: list[str]) -> None:
    """A black bar at each (method, backbone) mean, at the stripplot's dodged position."""
    k = len(hue_order)
    means = d.groupby(["method", "backbone"])["value"].mean()
    for (m, b), v in means.items():
        x = order.index(m) + (-0.4 + 0.8 * (hue_order.index(b) + 0.5) / k if k > 1 else 0.0)
        ax.plot([x - 0.12, x + 0.12], [v, v], color="black", lw=1.5)


def metric_figures(tidy: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """Per task: one panel per metric, methods on x, seeds as points, backbones as hue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    ok = tidy[(tidy["status"] == "ok") & (tidy["metric"] != "")]
    figs = []
    for task, g in ok.groupby("task", sort=True):
        metrics = list(dict.fromkeys(g["metric"]))[:MAX_FIG_METRICS]
        cols = min(3, len(metrics))
        nrows = -(-len(metrics) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
        order = sorted(set(g["method"]), key=method_key)
        hue_order = sorted(set(g["backbone"]))
        for ax, metric in zip(axes.flat, metrics):
            d = g[g["metric"] == metric].copy()
            d["seed"] = d["seed"].astype(str)
            sns.stripplot(data=d, x="method", y="value", hue="backbone", order=order, hue_order=hue_order, dodge=True, ax=ax, size=5,
                          jitter=0.08, legend=ax is axes.flat[0])
            _mean_marks(ax, d, order, hue_order)
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("")
            ax.tick_params(axis="x", rotation=30, labelsize=8)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        fig.suptitle(f"{task}: each point one seed; bar = mean", fontsize=11)
        fig.tight_layout()
        stem = out_dir / f"{slug(task)}-metrics"
        _save_fig(fig, stem)
        figs.append((task, stem.with_suffix(".png")))
    return figs


def collect_artefacts(results: Sequence[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Copy the figures and markdown that tasks wrote into their run dirs (gap, subregion, ...)."""
    found = []
    for r in results:
        if r["status"] != "ok":
            continue
        run_dir = Path(r["_path"]).parent
        files = sorted(p for p in list(run_dir.glob("*")) + list(run_dir.glob("figures/*"))
                       if p.is_file() and p.suffix in ARTEFACT_SUFFIXES)
        if not files:
            continue
        dest = out_dir / slug(r["task"]) / slug(r["method"]) / slug(r["backbone"]) / f"seed{r['seeds'].get('train')}"
        copied = []
        for f in files:
            target = dest / f.relative_to(run_dir)
            atomic_write_bytes(target, f.read_bytes())
            copied.append(target)
        found.append({"run_id": r["run_id"], "task": r["task"], "dir": dest, "files": copied})
    return found


_IMAGE_INDEX: dict[str, dict[str, Path]] = {}


def _find_by_name(data_dir: Path, name: str) -> Path | None:
    """Fallback when an item gives only the file name: index data_dir/images once per report."""
    key = str(data_dir)
    if key not in _IMAGE_INDEX:
        root = data_dir / "images"
        _IMAGE_INDEX[key] = {p.name: p for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}
    return _IMAGE_INDEX[key].get(name)


def _image_path(item: dict[str, Any], data_dir: Path | None) -> Path | None:
    cands = []
    for k in ("image_path", "image", "file"):
        if isinstance(item.get(k), str):
            cands.append(Path(item[k]))
    if isinstance(item.get("image_name"), str):
        cands.append(Path("images") / str(item.get("file_path") or "") / item["image_name"])
    for c in cands:
        for p in ([c] if c.is_absolute() else ([data_dir / c, data_dir / "images" / c] if data_dir else [])):
            if p.is_file():
                return p
    if data_dir is not None and isinstance(item.get("image_name"), str):
        return _find_by_name(data_dir, item["image_name"])
    return None


def _region_indices(item: dict[str, Any]) -> list[int] | None:
    keys = ("region_indices", "selected_regions", "selected_tokens", "regions")
    return next((item[k] for k in keys if isinstance(item.get(k), list)), None)


def _region_boxes(item: dict[str, Any]) -> list[tuple[float, float, float, float]]:
    """Boxes as fractions of the image: given directly, or from token indices on a square grid."""
    if isinstance(item.get("region_boxes"), list):
        return [tuple(float(x) for x in b) for b in item["region_boxes"] if len(b) == 4]  # type: ignore[misc]
    idx = _region_indices(item)
    grid = item.get("grid") or (int(round((item["n_tokens"] - 1) ** 0.5)) if item.get("n_tokens") else None)
    if not idx or not grid:
        return []
    boxes = []
    for i in idx:
        if not isinstance(i, int) or i < 1 or i > grid * grid:
            continue  # token 0 is the CLS/pooled token: the whole image
        p = i - 1
        r, c = divmod(p, grid)
        boxes.append((c / grid, r / grid, (c + 1) / grid, (r + 1) / grid))
    return boxes


def _region_note(item: dict[str, Any], drawn: bool) -> str | None:
    """What the boxes on a card are, or the selection as numbers where it cannot be drawn."""
    boxes, idx = _region_boxes(item), _region_indices(item)
    if drawn and boxes and item.get("best_box_kind"):
        return f"best crop for this caption: {item['best_box_kind']}"
    if drawn and boxes and idx:
        cls = ", and the CLS token" if 0 in idx else ""
        patches = item["grid"] ** 2 if item.get("grid") else item["n_tokens"] - 1
        return f"{len(boxes)} of {patches} patch tokens selected{cls}"
    return f"selected tokens: {idx} (token grid unknown: not drawn)" if idx else None


def _draw(path: Path, boxes: list[tuple[float, float, float, float]], size: int = 192) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.open(path).convert("RGB").resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * size, y0 * size, x1 * size - 1, y1 * size - 1], outline=(255, 0, 0), width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _candidates(item: dict[str, Any]) -> tuple[list[tuple[str, float | None]], int | None]:
    raw = item.get("candidates") or []
    scores = item.get("clip_scores") or []
    cands = []
    for i, c in enumerate(raw):
        if isinstance(c, dict):
            text = str(c.get("text") or c.get("caption") or "")
            score = next((c[k] for k in ("clip_score", "clip_similarity", "score") if k in c), None)
        else:
            text, score = str(c), scores[i] if i < len(scores) else None
        cands.append((text, float(score) if isinstance(score, (int, float)) else None))
    chosen = next((item[k] for k in ("chosen", "selected", "best") if isinstance(item.get(k), int)), None)
    return cands, chosen


def caption_examples(results: Sequence[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """For each caption-like task and method: the first items of its first run (by backbone, seed)."""
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: (r["task"], method_key(r["method"]), r["backbone"], r["seeds"].get("train") or 0)):
        if r["status"] == "ok" and (r.get("artifacts") or {}).get("items"):
            firsts.setdefault((r["task"], r["method"]), r)
    examples = []
    for (task, method), r in firsts.items():
        run_dir = Path(r["_path"]).parent
        try:
            items = read_jsonl(run_dir / r["artifacts"]["items"])
        except (OSError, UserError) as e:
            log.warning("cannot read items of %s: %s", r["run_id"], e)
            continue
        items = [it for it in items if isinstance(it, dict) and (it.get("candidates") or it.get("caption"))]
        if not items:
            continue
        runner = (r.get("provenance") or {}).get("runner") or (r.get("extra") or {}).get("runner") or {}  # old files: extra
        data_dir = runner.get("data_dir")
        shown = []
        for k, it in enumerate(items[:MAX_EXAMPLES]):
            img = _image_path(it, Path(data_dir) if data_dir else None)
            png = None
            if img is not None:
                png = _draw(img, _region_boxes(it))
                atomic_write_bytes(out_dir / slug(task) / slug(method) / f"example{k}.png", png)
            cands, chosen = _candidates(it)
            shown.append({"png": png, "caption": it.get("caption") or it.get("prediction") or "",
                          "regions": _region_note(it, drawn=png is not None),
                          "candidates": cands, "chosen": chosen,
                          "references": it.get("references") or it.get("refs") or [],
                          "name": str(it.get("image_name") or it.get("image_id") or k)})
        examples.append({"task": task, "method": method, "run_id": r["run_id"], "items": shown})
    return examples


# ----------------------------------------------------------------------------------------------
# HTML


def _b64(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _img(path: Path, out: Path, alt: str) -> str:
    if path.suffix == ".png" and path.stat().st_size <= MAX_EMBED_BYTES:
        return f'<img src="{_b64(path.read_bytes())}" alt="{html.escape(alt)}">'
    return f'<img src="{html.escape(str(path.relative_to(out)))}" alt="{html.escape(alt)}">'


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            title = f' title="runs: {html.escape(", ".join(c.run_ids))}"' if c.run_ids else (
                f' title="{html.escape(c.source)}"' if c.source else "")
            cls = f' class="{c.kind}"'
            cells.append(f"<td{cls}{title}>{html.escape(c.text())}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in t.notes)
    return (f"<h3 id='{html.escape(t.name)}'>{html.escape(t.title)}</h3><div class='scroll'><table class='sortable'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{notes}")


def _df_html(df: pd.DataFrame, cls: str = "sortable", max_rows: int = 500) -> str:
    if df.empty:
        return "<p class='note'>none</p>"
    shown = df.head(max_rows)
    more = f"<p class='note'>{len(df) - max_rows} more rows in the CSV</p>" if len(df) > max_rows else ""
    fmt = lambda v: "" if v is None or (isinstance(v, float) and v != v) else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>"
                   for r in shown.itertuples(index=False))
    return f"<div class='scroll'><table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>{more}"


def _md_cells(row: str) -> list[str]:
    """Cells of a pipe-table row; an escaped `\\|` is a pipe inside a cell (a norm ||d||, say)."""
    cells = re.split(r"(?<!\\)\|", row.strip())[1:]
    if cells and not cells[-1].strip():
        cells = cells[:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(text: str, images: dict[str, str] | None = None, used: set[str] | None = None) -> str:
    """A small Markdown subset (headings, pipe tables, lists, paragraphs, code, bold, images).

    `images` maps an image path as written in the markdown to the src to use (a data URI); those
    found are added to `used`. Other image references are dropped.
    """
    images = images or {}
    out: list[str] = []
    lines = text.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![*\w])_([^_]+)_(?![\w])", r"<i>\1</i>", s)
        return s

    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^(#{1,6})\s+(.*)", line):
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
            i += 1
        elif line.strip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_md_cells(lines[i]))
                i += 1
            rows = [r for r in rows if not all(re.fullmatch(r":?-{2,}:?", c) for c in r if c)]
            if rows:
                head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
                body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                out.append(f"<div class='scroll'><table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
        elif re.match(r"^\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                items.append("<li>" + inline(re.sub(r"^\s*[-*]\s+", "", lines[i])) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out.append("<pre>" + html.escape("\n".join(block)) + "</pre>")
        elif m := re.match(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$", line.strip()):
            i += 1
            src = images.get(m.group(2))
            if src:
                out.append(f"<figure><img src=\"{src}\" alt=\"{html.escape(m.group(1))}\">"
                           f"<figcaption>{html.escape(m.group(1))}</figcaption></figure>")
                if used is not None:
                    used.add(m.group(2))
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||\s*[-*]\s|```)", lines[i]):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{inline(' '.join(para))}</p>")
        else:
            i += 1
    return "\n".join(out)


def _artefacts_html(artefacts: list[dict[str, Any]], out: Path) -> str:
    if not artefacts:
        return ""
    parts = ["<h2 id='analysis'>Analysis figures and notes from the runs</h2>"]
    for k, a in enumerate(artefacts):
        body = []
        rel = {f.relative_to(a["dir"]).as_posix(): f for f in a["files"]}
        srcs = {name: _b64(f.read_bytes()) for name, f in rel.items()
                if f.suffix == ".png" and f.stat().st_size <= MAX_EMBED_BYTES}
        used: set[str] = set()
        for f in a["files"]:
            if f.suffix == ".md":
                body.append(f"<div class='md'>{markdown_to_html(f.read_text(encoding='utf-8'), srcs, used)}</div>")
        pngs = {f.stem for f in a["files"] if f.suffix == ".png"}
        for name, f in rel.items():
            if name in used:
                continue
            if f.suffix == ".png" or (f.suffix == ".svg" and f.stem not in pngs):
                src = _img(f, out, f.name) if f.suffix == ".png" else f'<img src="{html.escape(str(f.relative_to(out)))}" alt="{html.escape(f.name)}">'
                body.append(f"<figure>{src}<figcaption>{html.escape(f.name)}</figcaption></figure>")
        opened = " open" if k == 0 or a["task"] != artefacts[k - 1]["task"] else ""
        parts.append(f"<details{opened}><summary>{html.escape(a['run_id'])}</summary>{''.join(body)}</details>")
    return "".join(parts)


def _examples_html(examples: list[dict[str, Any]]) -> str:
    if not examples:
        return ""
    parts = ["<h2 id='examples'>Per-image examples</h2><p class='note'>Red boxes: the selected subregions. "
             "Candidates with their CLIP scores; the chosen one in bold.</p>"]
    for ex in examples:
        cards = []
        for it in ex["items"]:
            img = f'<img src="{_b64(it["png"])}" alt="image {html.escape(it["name"])}">' if it["png"] else "<div class='noimg'>image not found</div>"
            cands = "".join(
                f"<li class='{'chosen' if j == it['chosen'] else ''}'>{html.escape(t)}"
                f"{'' if s is None else f' <span class=score>{s:.3f}</span>'}</li>" for j, (t, s) in enumerate(it["candidates"]))
            refs = "".join(f"<li>{html.escape(str(r))}</li>" for r in it["references"][:3])
            refs = f"<p class='note'>references</p><ul class='refs'>{refs}</ul>" if refs else ""
            regions = f"<p class='note'>{html.escape(it['regions'])}</p>" if it.get("regions") else ""
            cards.append(f"<div class='card'>{img}{regions}<p class='cap'>{html.escape(str(it['caption']))}</p>"
                         f"<ol class='cands'>{cands}</ol>{refs}</div>")
        parts.append(f"<details open><summary>{html.escape(ex['task'])} / {html.escape(ex['method'])} "
                     f"({html.escape(ex['run_id'])})</summary><div class='cards'>{''.join(cards)}</div></details>")
    return "".join(parts)


def _provenance(results: Sequence[dict[str, Any]]) -> tuple[str, pd.DataFrame]:
    commits = sorted({str(r["provenance"].get("git_commit")) + (" with uncommitted changes" if r["provenance"].get("git_dirty") else "")
                      for r in results})
    versions: dict[str, set[str]] = {}
    for r in results:
        for k, v in (r["provenance"].get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(v))
    vtxt = ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(versions.items()))
    head = (f"<p><b>git commit(s):</b> {html.escape(', '.join(commits))}</p>"
            f"<p><b>versions:</b> {html.escape(vtxt)}</p>")
    runs = pd.DataFrame([{"run_id": r["run_id"], "status": r["status"], "train_seed": r["seeds"].get("train"),
                          "eval_seed": r["seeds"].get("eval"), "config_hash": r["config_hash"],
                          "total_s": (r.get("timings") or {}).get("total_s"), "created": r["provenance"].get("created"),
                          "git": (r["provenance"].get("git_commit") or "")[:10] + ("+" if r["provenance"].get("git_dirty") else "")}
                         for r in results])
    return head, runs


def _failed_html(results: Sequence[dict[str, Any]], invalid: list[str]) -> str:
    failed = [r for r in results if r["status"] != "ok"]
    if not failed and not invalid:
        return ""
    parts = [f"<h2 id='failed'>Failed runs ({len(failed)})</h2>"]
    for r in failed:
        err = str(r.get("error") or "")
        first = err.split("\n", 1)[0]
        parts.append(f"<details class='fail'><summary>{html.escape(r['run_id'])}: {html.escape(first)}</summary>"
                     f"<pre>{html.escape(err)}</pre></details>")
    parts += [f"<p class='fail'>unreadable result: {html.escape(m)}</p>" for m in invalid]
    return "".join(parts)


def _suite_yaml(suite_name: str) -> str:
    try:
        from benchmark.suite import suite_path

        return suite_path(suite_name).read_text(encoding="utf-8")
    except (UserError, OSError):
        return ""


def _page(suite: str, results: Sequence[dict[str, Any]], agg: AggregateResult, tables: list[Table],
          figures: list[tuple[str, Path]], artefacts: list[dict[str, Any]], examples: list[dict[str, Any]],
          out: Path) -> str:
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "sort.js").read_text(encoding="utf-8")
    n_ok = sum(r["status"] == "ok" for r in results)
    prov_head, runs = _provenance(results)
    ref = agg.paired[agg.paired["method_a"].isin(["maccap"])] if not agg.paired.empty else agg.paired
    paired = ref if not ref.empty else agg.paired
    seeds = sorted({(r["seeds"].get("train"), r["seeds"].get("eval")) for r in results}, key=str)
    yaml_text = _suite_yaml(suite)
    sections = [
        f"<h1>maccap-bench report: {html.escape(suite)}</h1>",
        f"<p>{len(results)} runs ({n_ok} ok, {len(results) - n_ok} failed); seeds (train/eval): "
        f"{html.escape(', '.join(f'{a}/{b}' for a, b in seeds))}. Click a column header to sort. "
        "Hover a number to see the runs it comes from.</p>",
        "<nav><a href='#tables'>tables</a> · <a href='#figures'>figures</a> · <a href='#analysis'>analysis</a> · "
        "<a href='#examples'>examples</a> · <a href='#paired'>paired comparisons</a> · <a href='#summary'>summary</a> · "
        "<a href='#failed'>failed</a> · <a href='#provenance'>provenance</a></nav>",
        "<h2 id='tables'>Tables</h2>" + "".join(_table_html(t) for t in tables),
        "<h2 id='figures'>Metrics by seed and backbone</h2>" + "".join(
            f"<figure>{_img(p, out, task)}<figcaption>{html.escape(task)}</figcaption></figure>" for task, p in figures),
        _artefacts_html(artefacts, out),
        _examples_html(examples),
        "<h2 id='paired'>Paired comparisons (matched seeds)</h2><p class='note'>mean_diff = a - b with a 95% "
        "bootstrap CI over seeds; prob_improvement = P(a &gt; b) over seed pairs (ties count 1/2).</p>"
        + _df_html(paired.drop(columns=["suite"])),
        "<h2 id='summary'>Statistics across seeds</h2>" + _df_html(agg.summary.drop(columns=["suite", "run_ids"])),
        _failed_html(results, agg.invalid),
        "<h2 id='provenance'>Provenance</h2>" + prov_head + _df_html(runs)
        + (f"<details><summary>suite definition</summary><pre>{html.escape(yaml_text)}</pre></details>" if yaml_text else ""),
    ]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>maccap-bench: {html.escape(suite)}</title><style>{css}</style></head><body>"
            + "\n".join(s for s in sections if s) + f"<script>{js}</script></body></html>\n")

