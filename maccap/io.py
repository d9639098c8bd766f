"""Atomic file writes, checksums and JSON helpers.

Every artefact goes through a temp file in the target directory followed by os.replace, so a kill at
any point leaves either the old file or the new one, never half of one. Temp files are named
`.<name>.<pid>.<random>.tmp`: no reader ever opens them, and `sweep_stale_temps` removes those whose
process is gone (what a SIGKILL leaves behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from maccap import faults
from maccap.errors import UserError

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
_STARTED = time.time()  # a temp file of our own pid older than this came from an earlier process


def _new_file_mode() -> int:
    """The mode open() gives a new file; read once at import, since reading the umask means setting it."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _new_file_mode()  # written files get it, not mkstemp's 0600 (which would hide a served report)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        faults.checkpoint("atomic-replace")
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sweep_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Delete atomic-write temp files below `root` left by processes that no longer run; return them.

    A live writer's temp file is kept (its pid is alive), so this is safe while other runs write.
    """
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for dirpath, _, names in os.walk(root):
        for name in names:
            m = _TEMP_RE.match(name)
            if not m:
                continue
            p, pid = Path(dirpath) / name, int(m.group(1))
            if pid == os.getpid():
                try:
                    stale = p.stat().st_mtime < _STARTED - 1
                except FileNotFoundError:
                    continue
            else:
                stale = not _pid_alive(pid)
            if stale:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from e


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, fixed indent) so equal content gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, lines)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning every failure into a UserError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not raw.strip():
        raise UserError(f"{what} {path} is empty; expected JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 (byte {e.start}); expected UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {i} is malformed JSON: {e.msg}") from None
    return rows


def canonical_safetensors(raw: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors serialises the `__metadata__` mapping in hash order, which changes from one process
    to the next, so equal tensors and metadata would give different bytes. Offsets in the header are
    relative to the data block, so re-serialising the header (space-padded to 8 bytes) keeps it valid.
    """
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_config(obj: Any) -> str:
    """Stable short hash of a JSON-able object (cache keys, config hashes)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())[:16]
