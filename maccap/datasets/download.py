"""Resumable, verified downloads of the public files in `maccap.datasets.catalog`.

The bytes go to ROOT/<filename>.part; an interrupted transfer resumes from there with an HTTP Range
request. Only a file whose SHA-256 matches the pinned value is renamed to ROOT/<filename>; a mismatch
moves the part file aside to ROOT/<filename>.sha256-mismatch, so nothing half-written or wrong ever
sits under the final name. Archives are then extracted safely (see `maccap.datasets.archive`).
A file the user placed into ROOT by hand is verified and extracted the same way.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from maccap.datasets.archive import is_archive, safe_extract
from maccap.datasets.catalog import REMOTE_FILES, RemoteFile
from maccap.errors import UserError
from maccap.io import atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = "maccap-bench-downloader"


@dataclass
class DownloadResult:
    """What `download` produced: the verified file, its hash and where it was extracted."""

    name: str
    path: Path
    sha256: str
    pinned: bool  # False: the hash was computed and recorded, not checked against a pinned value
    extracted_to: Path | None
    downloaded_bytes: int  # bytes transferred by this call (0 when the file was already there)


class _Cut(Exception):
    """The connection ended before the whole file arrived (resumable)."""


def _manual_hint(spec: RemoteFile, root: Path) -> str:
    how = f"{spec.manual}; " if spec.manual else ""
    return (f"{how}you can download it by hand and save it as {root / spec.filename}, then rerun "
            f"`maccap-bench data download {spec.name} --root {root}` to verify and extract it")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_and_start(resp: http.client.HTTPResponse, offset: int) -> tuple[int | None, int]:
    """(total size if the server says, byte the body starts at) for a 200 or 206 response."""
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m:
            raise _Cut("206 response without a usable Content-Range")
        total = None if m.group(3) == "*" else int(m.group(3))
        return total, int(m.group(1))
    length = resp.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), 0


def _transfer(url: str, part: Path, timeout: float, progress: bool, expected_size: int | None,
              counter: list[int]) -> None:
    """Fetch the rest of `url` into `part`, adding bytes written to counter[0]. Raises _Cut when cut short."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        log.warning("%s is larger than the expected %d bytes; starting over", part, expected_size)
        part.unlink()
        offset = 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset and (expected_size is None or offset == expected_size):
            return  # the part file already holds everything the server has
        raise
    with resp:
        total, start = _total_and_start(resp, offset)
        if start != offset:  # server ignored the Range header (200) or answered another range
            if offset:
                log.info("server does not resume %s; downloading it from the start", url)
            part.unlink(missing_ok=True)
            offset = 0
            if start != 0:
                raise _Cut(f"server answered bytes from {start}, not from 0")
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress, leave=False)
        try:
            with open(part, "ab") as out:
                while True:
                    try:
                        block = resp.read(_CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as e:
                        raise _Cut(str(e) or type(e).__name__) from None
                    if not block:
                        break
                    out.write(block)
                    counter[0] += len(block)
                    bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
        finally:
            bar.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Cut(f"got {size} of {total} bytes")


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
          retries: int = 3, timeout: float = 60.0, progress: bool = True, retry_wait: float = 1.0,
          hint: str = "") -> tuple[str, int]:
    """Download `url` to `dest` (resuming `dest`.part), verify it, then rename it into place.

    Returns (sha256, bytes transferred). Connection failures are retried `retries` times in a row
    without progress, each time resuming from the part file; after that a UserError names the URL. The part file is kept for a
    later resume.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    counter = [0]
    attempt = 0
    gained = 0
    while True:
        try:
            _transfer(url, part, timeout, progress, size, counter)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416:  # our range is beyond the end: the part file is bad, start over once
                part.unlink(missing_ok=True)
                if attempt < retries:
                    attempt += 1
                    continue
            raise UserError(f"downloading {url} failed: HTTP {e.code} {e.reason}. {hint}") from None
        except (_Cut, urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError,
                http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            if counter[0] > gained:  # the attempt made progress: a flaky link gets fresh retries
                gained, attempt = counter[0], 0
            if attempt >= retries:
                have = part.stat().st_size if part.exists() else 0
                raise UserError(f"downloading {url} failed: {reason} (kept {have} bytes in {part}; rerun to "
                                f"resume). {hint}") from None
            attempt += 1
            log.warning("connection to %s lost (%s); resuming (attempt %d of %d)", url, reason, attempt, retries)
            time.sleep(retry_wait)
    return _verify_and_place(part, dest, sha256, size, source=url), counter[0]


def _verify_and_place(part: Path, dest: Path, sha256: str | None, size: int | None, source: str) -> str:
    """Hash `part`; on a match (or with nothing pinned) rename it to `dest`, else move it aside."""
    got_size = part.stat().st_size
    digest = sha256_file(part)
    if (size is not None and got_size != size) or (sha256 is not None and digest != sha256.lower()):
        bad = dest.with_name(dest.name + ".sha256-mismatch")
        os.replace(part, bad)
        raise UserError(
            f"checksum mismatch for {source}: expected sha256 {sha256} ({size if size is not None else '?'} bytes), "
            f"got {digest} ({got_size} bytes). The file was moved aside to {bad}; nothing was installed. "
            "Delete it and retry, or check that the mirror serves the same file.")
    if part != dest:
        os.replace(part, dest)
    return digest


def _record(root: Path, spec: RemoteFile, url: str | None, digest: str, size: int) -> Path:
    sidecar = root / f"{spec.filename}.sha256.json"
    atomic_write_json(sidecar, {"name": spec.name, "file": spec.filename, "url": url, "sha256": digest,
                                "size": size, "pinned": spec.pinned, "checksum_source": spec.checksum_source})
    return sidecar


def _check_existing(root: Path, spec: RemoteFile) -> str:
    """Verify a complete file already in ROOT (downloaded earlier, or placed there by hand)."""
    path = root / spec.filename
    sidecar = root / f"{spec.filename}.sha256.json"
    recorded = read_json(sidecar, "download record").get("sha256") if sidecar.exists() else None
    expected = spec.sha256 or recorded
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise UserError(f"{path} does not match its {'pinned' if spec.pinned else 'recorded'} sha256: expected "
                        f"{expected}, got {digest}. Delete it (and {sidecar.name}) and download it again.")
    return digest


def download(name: str, root: str | os.PathLike, progress: bool = True, *, url: str | None = None,
             extract: bool = True, retries: int = 3, timeout: float = 60.0, retry_wait: float = 1.0,
             spec: RemoteFile | None = None) -> DownloadResult:
    """Fetch the catalog file `name` into `root`, verify it, and extract it if it is an archive.

    `url` overrides the catalog URL (a mirror); `spec` replaces the catalog entry (tests, private
    mirrors). With no pinned checksum the computed one is recorded in ROOT/<filename>.sha256.json and
    logged as "checksum not pinned".
    """
    spec = spec or REMOTE_FILES.get(name)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--root {root} cannot be created: {e.strerror or e}") from None
    # one process per file at a time (Slurm arrays may start several on a shared disk)
    with FileLock(str(root / f".{spec.filename}.lock")):
        return _download_locked(spec, root, progress, url, extract, retries, timeout, retry_wait)


def _download_locked(spec: RemoteFile, root: Path, progress: bool, url: str | None, extract: bool, retries: int,
                     timeout: float, retry_wait: float) -> DownloadResult:
    dest = root / spec.filename
    src = url or spec.url
    transferred = 0
    if dest.exists():
        log.info("%s is already in %s; verifying it", spec.filename, root)
        digest = _check_existing(root, spec)
    else:
        if src is None:
            raise UserError(f"{spec.name} has no public download URL: {_manual_hint(spec, root)}")
        log.info("downloading %s from %s", spec.filename, src)
        digest, transferred = fetch(src, dest, sha256=spec.sha256, size=spec.size, retries=retries,
                                    timeout=timeout, progress=progress, retry_wait=retry_wait,
                                    hint=_manual_hint(spec, root))
    _record(root, spec, src, digest, dest.stat().st_size)
    if not spec.pinned:
        log.warning("checksum not pinned for %s: computed sha256 %s (recorded in %s.sha256.json)",
                    spec.filename, digest, spec.filename)
    extracted = None
    if extract and spec.extract_dir and is_archive(dest):
        log.info("extracting %s into %s", spec.filename, root / spec.extract_dir)
        extracted = safe_extract(dest, root / spec.extract_dir)
    return DownloadResult(spec.name, dest, digest, spec.pinned, extracted, transferred)
