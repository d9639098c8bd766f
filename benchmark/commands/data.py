"""`maccap-bench data download|prepare|ls`: fetch public files and build the suite's data directories."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maccap.datasets.catalog import REMOTE_FILES
from maccap.datasets.download import download
from maccap.datasets.prepare import LINK_MODES, PrepareReport, prepare_coco, prepare_flickr30k, prepare_vqav2
from maccap.errors import UserError

_ROOT_HELP = "Folder holding the raw files (where `data download` puts them)."
_DIR = click.Path(path_type=Path, file_okay=False)
_FILE = click.Path(path_type=Path, dir_okay=False)

# Where `data download` leaves things under --root; used when --karpathy/--images are not given.
_DEFAULTS = {
    "coco": ("karpathy/dataset_coco.json", "coco2014"),
    "flickr30k": ("karpathy/dataset_flickr30k.json", "flickr30k/flickr30k-images"),
}
_VQA_DEFAULTS = ("vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "vqav2/v2_mscoco_val2014_annotations.json",
                 "coco2014")


@click.group("data")
def command() -> None:
    """Download public data files and prepare COCO, Flickr30k and VQAv2 data directories."""


@command.command("ls")
def ls_cmd() -> None:
    """List the files `data download` knows, with their URLs and whether the checksum is pinned."""
    for name in REMOTE_FILES:
        spec = REMOTE_FILES.get(name)
        pin = "sha256 pinned" if spec.pinned else "checksum not pinned"
        click.echo(f"{name}\t{spec.url or '(no public URL: ' + spec.manual + ')'}\t{pin}\t{spec.description}")


@command.command("download")
@click.argument("name")
@click.option("--root", type=_DIR, required=True, help=_ROOT_HELP)
@click.option("--url", default=None, help="Download from this mirror instead of the catalog URL.")
@click.option("--no-extract", is_flag=True, help="Keep archives packed.")
@click.option("--retries", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Resume attempts after a dropped connection.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Socket timeout (s).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def download_cmd(name: str, root: Path, url: str | None, no_extract: bool, retries: int, timeout: float,
                 progress: bool) -> None:
    """Fetch NAME (see `maccap-bench data ls`) into --root, resumably, verify it and extract it."""
    res = download(name, root, progress=progress, url=url, extract=not no_extract, retries=retries, timeout=timeout)
    click.echo(f"{res.path}\tsha256 {res.sha256}\t{'verified (pinned)' if res.pinned else 'checksum not pinned (recorded)'}")
    if res.extracted_to is not None:
        click.echo(f"extracted into {res.extracted_to}")


def _default(root: Path | None, rel: str, option: str) -> Path:
    """ROOT/rel, or the same file name one folder deeper (archives that wrap their files in a folder)."""
    if root is None:
        raise UserError(f"pass {option} or --root (the folder `data download` filled)")
    path = root / rel
    if not path.exists() and path.parent.is_dir():
        deeper = sorted(path.parent.glob(f"*/{path.name}"))
        if deeper:
            return deeper[0]
    return path


def _echo_report(rep: PrepareReport) -> None:
    click.echo(f"prepared {rep.dataset} in {rep.out_dir}")
    for split, counts in rep.splits.items():
        click.echo(f"  {split}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if rep.dataset != "vqav2":
        click.echo(f"  training corpus: {rep.corpus_size} captions {json.dumps(rep.corpus_sources)}")
        click.echo(f"  leak check: {rep.leaks.found} training captions equal a val/test caption, "
                   f"{rep.leaks.dropped} dropped")
    if rep.questions_outside_captions:
        click.echo(f"  questions dropped (image not in captions_*.json): {rep.questions_outside_captions}")
    if rep.missing_images:
        click.echo(f"  missing images dropped: {len(rep.missing_images)}")
    click.echo(f"  images: {rep.link}" + (f" from {rep.images_root}" if rep.images_root else ""))


@command.group("prepare")
def prepare_group() -> None:
    """Build a data directory (captions_{val,test}.json, corpus_train.json, images/, vqa/, manifest.json)."""


def _caption_command(dataset: str):
    fn = {"coco": prepare_coco, "flickr30k": prepare_flickr30k}[dataset]
    karpathy_default, images_default = _DEFAULTS[dataset]

    @prepare_group.command(dataset)
    @click.option("--root", type=_DIR, default=None, help=_ROOT_HELP)
    @click.option("--out", "out_dir", type=_DIR, required=True, help="Data directory to write.")
    @click.option("--karpathy", type=_FILE, multiple=True,
                  help=f"Karpathy caption file(s) (default ROOT/{karpathy_default}); also accepts reference-layout "
                       "val/test files (JSON list of {split, image_name, file_path?, captions}). Repeatable.")
    @click.option("--images", type=_DIR, default=None, help=f"Image folder (default ROOT/{images_default}).")
    @click.option("--link", type=click.Choice(LINK_MODES), default="symlink", show_default=True,
                  help="How images enter DATA/images/ (none: only check that they exist and record --images; "
                       "suites need the images under DATA/images/).")
    @click.option("--allow-missing", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Drop up to this many val/test images that are missing instead of failing.")
    @click.option("--cc3m", type=_FILE, default=None,
                  help="Extra training captions: CC3M TSV (caption in column 1), text (one per line) or JSON list.")
    @click.option("--no-train-corpus", is_flag=True, help="Leave the Karpathy train+restval captions out of the corpus.")
    @click.option("--keep-leaks", is_flag=True, help="Report but keep training captions equal to val/test captions.")
    @click.option("--progress/--no-progress", default=True, show_default=True)
    def cmd(root: Path | None, out_dir: Path, karpathy: tuple[Path, ...], images: Path | None, link: str,
            allow_missing: int, cc3m: Path | None, no_train_corpus: bool, keep_leaks: bool, progress: bool) -> None:
        files = list(karpathy) or [_default(root, karpathy_default, "--karpathy")]
        if images is None and link != "none":
            images = _default(root, images_default, "--images")
        rep = fn(files, images, out_dir, link=link, allow_missing=allow_missing, cc3m=cc3m,  # type: ignore[arg-type]
                 train_corpus=not no_train_corpus, drop_leaks=not keep_leaks, progress=progress)
        _echo_report(rep)

    cmd.__doc__ = f"Prepare {dataset} from Karpathy caption files and its images."
    return cmd


for _ds in _DEFAULTS:
    _caption_command(_ds)


@prepare_group.command("vqav2")
@click.option("--root", type=_DIR, default=None, help=_ROOT_HELP)
@click.option("--out", "out_dir", type=_DIR, required=True, help="Data directory to write (may already hold COCO).")
@click.option("--questions", type=_FILE, default=None, help=f"VQAv2 questions JSON (default ROOT/{_VQA_DEFAULTS[0]}).")
@click.option("--annotations", type=_FILE, default=None, help=f"VQAv2 annotations JSON (default ROOT/{_VQA_DEFAULTS[1]}).")
@click.option("--images", type=_DIR, default=None, help=f"Folder holding val2014/ (default ROOT/{_VQA_DEFAULTS[2]}).")
@click.option("--split", default="test", show_default=True,
              help="Caption split whose images the questions are about; writes vqa/questions_SPLIT.json.")
@click.option("--no-restrict", is_flag=True,
              help="Keep questions about images that are not in captions_SPLIT.json (the VQA task cannot use them).")
@click.option("--image-subset", default="val2014", show_default=True, help="COCO image folder/prefix of the images.")
@click.option("--link", type=click.Choice(LINK_MODES), default="symlink", show_default=True)
@click.option("--allow-missing", type=click.IntRange(min=0), default=0, show_default=True,
              help="Drop the questions of up to this many missing images instead of failing.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def vqav2_cmd(root: Path | None, out_dir: Path, questions: Path | None, annotations: Path | None, images: Path | None,
              split: str, no_restrict: bool, image_subset: str, link: str, allow_missing: int, progress: bool) -> None:
    """Prepare VQAv2 questions and annotations (validated) and link their COCO images."""
    questions = questions or _default(root, _VQA_DEFAULTS[0], "--questions")
    annotations = annotations or _default(root, _VQA_DEFAULTS[1], "--annotations")
    if images is None and link != "none":
        images = _default(root, _VQA_DEFAULTS[2], "--images")
    rep = prepare_vqav2(questions, annotations, images, out_dir, split, image_subset=image_subset,
                        restrict_to_captions=not no_restrict,
                        link=link, allow_missing=allow_missing, progress=progress)  # type: ignore[arg-type]
    _echo_report(rep)
