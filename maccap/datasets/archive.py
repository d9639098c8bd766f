"""Safe extraction of zip and tar archives.

Every entry is checked before anything is written: absolute paths, `..` components, drive letters,
symbolic and hard links and special files are refused, so an archive can never write outside its
target. Extraction goes into a hidden temporary folder beside the target, and only a complete
extraction is moved into place, so an interrupted run never leaves a folder that looks finished.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from maccap.errors import UserError
from maccap.io import atomic_write_text

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20


def is_archive(path: str | os.PathLike) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


def _safe_relpath(archive: Path, name: str) -> PurePosixPath:
    """The entry's path relative to the target, or a UserError when it would escape it."""
    norm = name.replace("\\", "/")
    reason = None
    if norm.startswith("/") or _DRIVE.match(norm):
        reason = "absolute path"
    elif any(part == ".." for part in norm.split("/")):
        reason = "'..' component"
    rel = PurePosixPath(*[p for p in norm.split("/") if p not in ("", ".")]) if reason is None else None
    if reason is None and (rel is None or not rel.parts):
        reason = "empty name"
    if reason is not None:
        raise UserError(f"archive {archive}: entry {name!r} would escape the extraction folder ({reason}); "
                        "refusing to extract this archive")
    return rel  # type: ignore[return-value]


def _refuse(archive: Path, name: str, what: str) -> UserError:
    return UserError(f"archive {archive}: entry {name!r} is a {what}; refusing to extract this archive "
                     "(links and special files could point outside the extraction folder)")


def _zip_entries(archive: Path, zf: zipfile.ZipFile) -> Iterator[tuple[PurePosixPath, bool, zipfile.ZipInfo]]:
    for info in zf.infolist():
        rel = _safe_relpath(archive, info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type bits; 0 when the zip has none
        if kind == stat.S_IFLNK:
            raise _refuse(archive, info.filename, "symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(archive, info.filename, "special file")
        yield rel, info.is_dir(), info


def _tar_entries(archive: Path, tf: tarfile.TarFile) -> Iterator[tuple[PurePosixPath, bool, tarfile.TarInfo]]:
    for m in tf.getmembers():
        rel = _safe_relpath(archive, m.name)
        if m.issym():
            raise _refuse(archive, m.name, "symbolic link")
        if m.islnk():
            raise _refuse(archive, m.name, "hard link")
        if not (m.isfile() or m.isdir()):
            raise _refuse(archive, m.name, "special file (device, fifo)")
        yield rel, m.isdir(), m


def _write_stream(src: IO[bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "xb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def _check_inside(root: Path, dest: Path, archive: Path, name: str) -> None:
    if not dest.resolve().is_relative_to(root.resolve()):
        raise UserError(f"archive {archive}: entry {name!r} resolves outside the extraction folder; refusing")


def _extract_into(archive: Path, tmp: Path) -> None:
    """Check every entry first, then write them; `tmp` is an empty private folder."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                entries = list(_zip_entries(archive, zf))
                for rel, is_dir, info in entries:
                    dest = tmp / rel
                    _check_inside(tmp, dest, archive, info.filename)
                    if is_dir:
                        dest.mkdir(parents=True, exist_ok=True)
                    else:
                        with zf.open(info) as src:
                            _write_stream(src, dest)
        else:
            with tarfile.open(archive, "r:*") as tf:
                entries_t = list(_tar_entries(archive, tf))
                for rel, is_dir, member in entries_t:
                    dest = tmp / rel
                    _check_inside(tmp, dest, archive, member.name)
                    if is_dir:
                        dest.mkdir(parents=True, exist_ok=True)
                    else:
                        src = tf.extractfile(member)
                        assert src is not None  # regular files always have data
                        with src:
                            _write_stream(src, dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise UserError(f"archive {archive} is damaged or not a zip/tar archive ({e}); delete it and "
                        "download it again") from None
    except FileExistsError as e:
        raise UserError(f"archive {archive} holds the entry {e.filename} twice; refusing to extract it") from None


def marker_path(target: Path, archive: Path) -> Path:
    """The file whose presence says that `archive` was fully extracted into `target`."""
    return target / f".extracted-{archive.name}"


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract `archive` into `target` (created if needed) without letting any entry escape it.

    Top-level entries already present in `target` are kept as they are (logged), so two archives may
    share a target folder. A marker file written last records the completed extraction; with the marker
    present the call does nothing.
    """
    archive, target = Path(archive), Path(target)
    marker = marker_path(target, archive)
    if marker.exists():
        log.info("%s already extracted into %s", archive.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        _extract_into(archive, tmp)
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            dest = target / entry.name
            if dest.exists() or dest.is_symlink():
                log.warning("%s already exists; keeping it and skipping the copy from %s", dest, archive.name)
                continue
            os.replace(entry, dest)
        atomic_write_text(marker, f"{archive.name}\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
