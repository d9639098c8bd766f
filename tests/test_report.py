"""Report files, table cells traced back to run ids, and the HTML checked in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis.report import markdown_to_html
from analysis.tables import tex_escape
from benchmark.runner import run_suite
from benchmark.store import read_result
from benchmark.suite import load_suite

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dummy suite on 'coco' (so reported numbers apply) with analysis artefacts, run and reported once."""
    root = tmp_path_factory.mktemp("rep")
    d = {"name": "rep", "version": 1, "dataset": {"name": "coco", "data_dir": str(root)},
         "backbones": ["bb-a", "bb-b"], "seeds": [0, 1, 2], "eval_seeds": [10, 11, 12],
         "tasks": [{"task": "dummy", "name": "analysis", "params": {"metrics": ["gap", "sigma2"], "n_items": 0,
                                                                       "artefacts": True}},
                   {"task": "dummy", "name": "caption", "methods": ["maccap", "decap", "capdec", "broken"],
                    "params": {"n_items": 2, "fail_methods": ["broken"]}}]}
    (root / "rep.yaml").write_text(yaml.safe_dump(d), encoding="utf-8")
    s = run_suite(load_suite(root / "rep.yaml"), root / "results", root / "reports", root / "work", progress=False)
    assert s.report == root / "reports" / "rep" / "index.html"
    return root


def test_report_files_exist(report: Path) -> None:
    out = report / "reports" / "rep"
    for name in ("index.html", "data/tidy.csv", "data/summary.csv", "data/paired.csv"):
        assert (out / name).is_file(), name
    for ext in ("md", "tex", "csv", "runs.json"):
        assert (out / "tables" / f"rep-captioning.{ext}").is_file()
        assert (out / "tables" / f"rep-analysis.{ext}").is_file()
    for ext in ("png", "svg"):
        assert (out / "figures" / f"caption-metrics.{ext}").stat().st_size > 1000
    copied = out / "figures" / "runs" / "analysis" / "default" / "bb-a" / "seed0"
    assert {p.name for p in copied.iterdir()} == {"dummy_figure.png", "dummy_figure.svg", "dummy_section.md"}
    assert len(list((out / "figures" / "examples" / "caption" / "maccap").glob("example*.png"))) == 2


def test_table_cells_trace_back_to_result_files(report: Path) -> None:
    out = report / "reports" / "rep"
    cells = json.loads((out / "tables" / "rep-captioning.runs.json").read_text())["cells"]
    cell = cells["maccap / bb-a"]["coco C"]
    assert len(cell["run_ids"]) == 3 and cell["n"] == 3
    values = []
    for rid in cell["run_ids"]:
        res = read_result(report / "results" / rid / "result.json")
        assert res["run_id"] == rid and res["method"] == "maccap" and res["backbone"] == "bb-a"
        values.append(res["metrics"]["CIDEr-D"] * 100)
    assert cell["mean"] == pytest.approx(np.mean(values))
    md = (out / "tables" / "rep-captioning.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| maccap | bb-a |"))
    assert f"{np.mean(values):.1f} ±" in row
    # reported numbers only where published: DeCap/CapDec yes, MacCap never
    assert cells["capdec / bb-a"]["coco B@4 reported"]["reported"] == 26.4
    assert "ViECap" in cells["decap / bb-a"]["coco C reported"]["source"]
    assert not any("reported" in k for k in cells["maccap / bb-a"])
    assert cells["MeaCap-InvLM (reported)"]["coco C reported"]["reported"] == 95.4
    header = md.splitlines()[2]
    assert "coco R reported" not in header and "coco S reported" in header
    csv = (out / "tables" / "rep-captioning.csv").read_text().splitlines()
    assert csv[0].startswith("method,backbone,coco B@4 mean,coco B@4 ci_low,coco B@4 ci_high,coco B@4 n,coco B@4 reported")
    tex = (out / "tables" / "rep-captioning.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "$\\Delta$" in tex and "\\toprule" in tex


def test_html_content(report: Path) -> None:
    page = (report / "reports" / "rep" / "index.html").read_text()
    assert page.count("<table class='sortable'>") >= 5
    assert "Dummy analysis (bb-a, seed 0)" in page and "<b>bold</b>" in page  # markdown section embedded
    assert "<figcaption>the figure</figcaption>" in page  # its image reference shown inline, once
    assert "<figcaption>dummy_figure.png</figcaption>" not in page
    assert "data:image/png;base64," in page
    assert "a red square on a plain background" in page and "class=score" in page
    assert "Failed runs (6)" in page and "injected failure" in page
    assert "git commit(s)" in page and "config_hash" in page
    assert "title=\"runs: rep/caption/maccap/bb-a/seed0" in page


def test_markdown_and_tex_helpers() -> None:
    h = markdown_to_html("# Title\n\nText with `x` and **b**.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- i\n- j\n")
    assert "<h3>Title</h3>" in h and "<code>x</code>" in h and "<b>b</b>" in h
    assert "<th>a</th>" in h and "<td>2</td>" in h and "<li>j</li>" in h
    assert "&lt;script&gt;" in markdown_to_html("<script>alert(1)</script>")
    # an escaped pipe is part of its cell, as the gap note's norms are: the row keeps its three cells
    h = markdown_to_html("| q | v | why |\n|---|---|---|\n| gap \\|\\|m\\|\\| | 0.5 | far |\n| x | | empty |\n")
    assert "<td>gap ||m||</td><td>0.5</td><td>far</td>" in h and "<td>x</td><td></td><td>empty</td>" in h
    assert tex_escape("a_b & 50% Δ") == r"a\_b \& 50\% $\Delta$"


def test_selected_regions_are_drawn_where_their_tokens_are(tmp_path: Path) -> None:
    from PIL import Image

    from analysis.report import _draw, _region_boxes, _region_note

    Image.new("RGB", (30, 30), "white").save(tmp_path / "w.png")
    item = {"region_indices": [0, 9], "n_tokens": 10}  # the CLS token and the last patch of a 3x3 grid
    boxes = _region_boxes(item)
    assert boxes == [pytest.approx((2 / 3, 2 / 3, 1.0, 1.0))]
    assert _region_note(item, drawn=True) == "1 of 9 patch tokens selected, and the CLS token"
    png = Image.open(io.BytesIO(_draw(tmp_path / "w.png", boxes, size=192))).convert("RGB")
    assert png.getpixel((128, 150)) == (255, 0, 0) and png.getpixel((60, 60)) == png.getpixel((150, 150)) == (255, 255, 255)
    assert "not drawn" in _region_note({"region_indices": [3]}, drawn=True)  # no grid: the numbers, not a guess
    crop = {"region_boxes": [[0.0, 0.0, 0.5, 0.5]], "best_box_kind": "grid2"}
    assert _region_boxes(crop) == [(0.0, 0.0, 0.5, 0.5)] and "grid2" in _region_note(crop, drawn=True)


def test_report_cli(report: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from benchmark.commands.report import command

    r = CliRunner().invoke(command, ["--suite", "rep", "--results-dir", str(report / "results"),
                                     "--reports-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "index.html").exists()
    r = CliRunner().invoke(command, ["--suite", "nope", "--results-dir", str(report / "results"),
                                     "--reports-dir", str(tmp_path)])
    assert r.exit_code != 0 and "no results for suite 'nope'" in str(r.exception)


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=3000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_renders_and_sorts_in_chromium(report: Path, tmp_path: Path) -> None:
    out = report / "reports" / "rep"
    # Sort the analysis table by its 'gap' column (index 3) twice: descending after two clicks.
    page = (out / "index.html").read_text()
    click = ("<script>var t=document.getElementById('rep-analysis').nextElementSibling.querySelector('table');"
             "var th=t.tHead.rows[0].cells[3]; th.click(); th.click();"
             "document.body.setAttribute('data-test-done', th.getAttribute('data-sort'));</script></body>")
    scripted = out / "scripted.html"
    scripted.write_text(page.replace("</body>", click), encoding="utf-8")
    dom = _chromium(["--dump-dom", scripted.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-test-done="desc"' in dom.stdout
    table = dom.stdout.split('id="rep-analysis"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)[1:]
    gaps = [float(re.findall(r"<td[^>]*>([^<]*)</td>", r)[3].split()[0]) for r in rows]
    assert len(gaps) == 2 and gaps == sorted(gaps, reverse=True)
    # The untouched page renders: a screenshot with content (kept for a human look).
    shot = tmp_path / "report.png"
    res = _chromium(["--window-size=1400,1800", f"--screenshot={shot}", (out / "index.html").as_uri()], tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert arr.std() > 10  # not a blank page
    keep = os.environ.get("MACCAP_KEEP_SCREENSHOT")  # a path, to look at the page by eye
    if keep:
        shutil.copy(shot, keep)


def test_caption_table_cross_domain_columns_and_small_n() -> None:
    from analysis.aggregate import summarize, tidy_table
    from analysis.tables import caption_table, to_markdown

    rows = []
    for ds, seeds in (("coco->flickr30k", (0, 1)), ("quickstart", (0, 1, 2))):
        for s in seeds:
            rows.append({"suite": "x", "task": "caption", "method": "decap", "backbone": "b", "dataset": ds,
                         "run_id": f"x/{ds}/decap/b/seed{s}", "config_hash": "h", "status": "ok",
                         "seeds": {"train": s, "eval": s}, "metrics": {"CIDEr-D": 0.3 + 0.01 * s, "BLEU-4": 0.2}})
    table = caption_table(summarize(tidy_table(rows), n_resamples=200), "x")
    assert table is not None
    assert "coco->flickr30k C reported" in table.columns and "quickstart C reported" not in table.columns
    md = to_markdown(table)
    decap = next(line for line in md.splitlines() if line.startswith("| decap |"))
    assert "30.5 (n=2)" in decap and "| 35.7 | -5.2 |" in decap  # DeCap COCO->Flickr30k CIDEr 35.7
    assert "31.0 ± " in decap  # quickstart: 3 seeds, a CI


def test_vqa_table_puts_every_mode_beside_the_prior() -> None:
    from analysis.aggregate import summarize, tidy_table
    from analysis.tables import to_markdown, vqa_table

    rows = []
    for entry, acc in (("vqa", 0.4), ("vqa-no-image", 0.3)):
        for s in (0, 1, 2):
            rows.append({"suite": "x", "task": entry, "method": "maccap", "backbone": "b", "dataset": "quickstart",
                         "run_id": f"x/{entry}/maccap/b/seed{s}", "config_hash": "h", "status": "ok",
                         "seeds": {"train": s, "eval": s},
                         "metrics": {"vqa_acc": acc, "vqa_acc/qtype/how many": acc + 0.1 * s}})
    table = vqa_table(summarize(tidy_table(rows), n_resamples=200), "x")
    assert table is not None and table.columns == ["entry", "method", "backbone", "overall", "how many"]
    md = to_markdown(table).splitlines()
    prefix = next(line for line in md if line.startswith("| vqa |"))
    prior = next(line for line in md if line.startswith("| vqa-no-image |"))
    assert "| 40.0 ± 0.0 | 50.0 ± " in prefix and "| 30.0 ± 0.0 |" in prior
    assert set(table.cell_runs()["vqa / maccap / b"]["overall"]["run_ids"]) == {f"x/vqa/maccap/b/seed{s}" for s in range(3)}
    captions_only = [dict(rows[0], task="caption", metrics={"CIDEr-D": 0.5})]
    assert vqa_table(summarize(tidy_table(captions_only), n_resamples=50), "x") is None
