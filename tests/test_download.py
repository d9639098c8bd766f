"""The downloader against a local HTTP server: full fetch, resume after a cut, checksum mismatch, safe
extraction. Nothing here touches the network beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from maccap.datasets.archive import safe_extract
from maccap.datasets.catalog import REMOTE_FILES, RemoteFile
from maccap.datasets.download import download, fetch
from maccap.errors import UserError


class _Server:
    """Serves `files` (path -> bytes) with Range support; `cut_once` paths drop mid-stream once."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop the connection mid-stream
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919 + i // 251) % 256 for i in range(n))


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _spec(name: str, filename: str, data: bytes | None, pinned: bool = True, **kw) -> RemoteFile:
    return RemoteFile(name=name, filename=filename, url=None,
                      sha256=hashlib.sha256(data).hexdigest() if (pinned and data is not None) else None,
                      size=len(data) if (pinned and data is not None) else None, **kw)


def test_catalog_entries_are_well_formed():
    for name in REMOTE_FILES:
        spec = REMOTE_FILES.get(name)
        assert spec.sha256 is None or (len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0)
        assert spec.url is None or spec.url.startswith(("http://", "https://"))
        assert spec.pinned == (spec.checksum_source != "")  # every pinned hash names its source
    with pytest.raises(UserError, match="did you mean 'karpathy-splits'"):
        REMOTE_FILES.get("karpathy-split")


def test_full_download_verified(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    res = download("x", tmp_path, progress=False, url=server.url("/f.bin"), spec=_spec("x", "f.bin", data))
    assert res.path.read_bytes() == data
    assert res.pinned and res.sha256 == hashlib.sha256(data).hexdigest()
    assert not (tmp_path / "f.bin.part").exists()
    assert (tmp_path / "f.bin.sha256.json").exists()
    # a second call finds the verified file and transfers nothing
    n_requests = len(server.requests)
    again = download("x", tmp_path, progress=False, url=server.url("/f.bin"), spec=_spec("x", "f.bin", data))
    assert again.downloaded_bytes == 0 and len(server.requests) == n_requests


def test_resume_after_cut_connection_within_one_call(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.cut_once.add("/f.bin")
    res = download("x", tmp_path, progress=False, url=server.url("/f.bin"), retry_wait=0,
                   spec=_spec("x", "f.bin", data))
    assert res.path.read_bytes() == data
    ranges = [r for p, r in server.requests if p == "/f.bin"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    resumed_from = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from < len(data)
    assert res.downloaded_bytes == len(data)  # each byte transferred once


def test_resume_across_calls_keeps_part_file(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.cut_once.add("/f.bin")
    spec = _spec("x", "f.bin", data)
    with pytest.raises(UserError, match=r"127\.0\.0\.1.*rerun to resume"):
        download("x", tmp_path, progress=False, url=server.url("/f.bin"), retries=0, spec=spec)
    part = tmp_path / "f.bin.part"
    assert part.exists() and 0 < part.stat().st_size < len(data)
    assert not (tmp_path / "f.bin").exists()
    have = part.stat().st_size
    res = download("x", tmp_path, progress=False, url=server.url("/f.bin"), retries=0, spec=spec)
    assert res.path.read_bytes() == data and res.downloaded_bytes == len(data) - have
    assert server.requests[-1][1] == f"bytes={have}-"


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(data[:1000])
    res = download("x", tmp_path, progress=False, url=server.url("/f.bin"), spec=_spec("x", "f.bin", data))
    assert res.path.read_bytes() == data


def test_checksum_mismatch_rejected_nothing_looks_complete(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    wrong = replace(_spec("x", "f.bin", data), sha256="0" * 64)
    with pytest.raises(UserError, match="checksum mismatch.*moved aside"):
        download("x", tmp_path, progress=False, url=server.url("/f.bin"), spec=wrong)
    assert not (tmp_path / "f.bin").exists()
    assert not (tmp_path / "f.bin.part").exists()  # a rerun starts afresh
    assert not (tmp_path / "f.bin.sha256.json").exists()
    assert (tmp_path / "f.bin.sha256-mismatch").read_bytes() == data


def test_wrong_file_placed_by_hand_is_rejected(tmp_path):
    data = _payload(1000)
    (tmp_path / "f.bin").write_bytes(b"not it")
    with pytest.raises(UserError, match="does not match its pinned sha256"):
        download("x", tmp_path, progress=False, spec=_spec("x", "f.bin", data))


def test_unpinned_checksum_is_recorded_not_invented(server, tmp_path, caplog):
    data = _payload(5000)
    server.files["/f.bin"] = data
    res = download("x", tmp_path, progress=False, url=server.url("/f.bin"), spec=_spec("x", "f.bin", data, pinned=False))
    assert not res.pinned and res.sha256 == hashlib.sha256(data).hexdigest()
    assert "checksum not pinned" in caplog.text
    # once recorded, a tampered file is caught on the next call
    res.path.write_bytes(b"tampered")
    with pytest.raises(UserError, match="recorded sha256"):
        download("x", tmp_path, progress=False, spec=_spec("x", "f.bin", data, pinned=False))


def test_connection_refused_names_url_and_manual_route(tmp_path):
    spec = _spec("x", "f.bin", b"abc", manual="get it from the authors")
    url = "http://127.0.0.1:9/nothing.zip"  # discard port: nothing listens
    with pytest.raises(UserError) as ei:
        download("x", tmp_path, progress=False, url=url, retries=0, timeout=5, spec=spec)
    msg = str(ei.value)
    assert url in msg and "get it from the authors" in msg and str(tmp_path / "f.bin") in msg


def test_http_404_is_a_user_error(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        download("x", tmp_path, progress=False, url=server.url("/missing"), spec=_spec("x", "f.bin", b"abc"))


def test_no_public_url_explains_manual_download(tmp_path):
    with pytest.raises(UserError, match="no public download URL.*flickr30k-images.tar.gz"):
        download("flickr30k-images", tmp_path, progress=False)


def test_zip_downloaded_and_extracted(server, tmp_path):
    data = _zip_bytes({"top/a.json": b"[1]", "top/sub/b.txt": b"hi", "c.txt": b"c"})
    server.files["/a.zip"] = data
    spec = _spec("x", "a.zip", data, extract_dir="out")
    res = download("x", tmp_path, progress=False, url=server.url("/a.zip"), spec=spec)
    assert res.extracted_to == tmp_path / "out"
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"hi"
    assert (tmp_path / "out/c.txt").read_bytes() == b"c"
    assert not [p for p in tmp_path.iterdir() if ".extracting-" in p.name]


def test_two_archives_share_one_folder(tmp_path):
    a, b = tmp_path / "q.zip", tmp_path / "a.zip"
    a.write_bytes(_zip_bytes({"questions.json": b"{}"}))
    b.write_bytes(_zip_bytes({"annotations.json": b"{}"}))
    safe_extract(a, tmp_path / "vqa")
    safe_extract(b, tmp_path / "vqa")
    assert {p.name for p in (tmp_path / "vqa").iterdir() if not p.name.startswith(".")} == {
        "questions.json", "annotations.json"}


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt", "C:/evil.txt"])
def test_zip_slip_rejected(tmp_path, bad):
    arc = tmp_path / "dl" / "bad.zip"
    arc.parent.mkdir()
    arc.write_bytes(_zip_bytes({"fine.txt": b"ok", bad: b"pwned"}))
    with pytest.raises(UserError, match="escape"):
        safe_extract(arc, tmp_path / "dl" / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dl" / "evil.txt").exists()
    assert not (tmp_path / "dl" / "out").exists()  # nothing half-extracted left in place
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["bad.zip"]


def test_zip_symlink_rejected(tmp_path):
    arc = tmp_path / "link.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    arc.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="symbolic link"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tar_with(path: Path, build) -> None:
    with tarfile.open(path, "w:gz") as tf:
        build(tf)


def _add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_tar_escape_rejected(tmp_path, kind):
    arc = tmp_path / "bad.tar.gz"

    def build(tf: tarfile.TarFile) -> None:
        _add_file(tf, "images/ok.jpg", b"fine")
        if kind == "dotdot":
            _add_file(tf, "images/../../evil.txt", b"x")
        elif kind == "absolute":
            _add_file(tf, "/tmp/evil.txt", b"x")
        else:
            info = tarfile.TarInfo("images/link")
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[kind]
            info.linkname = "/etc/passwd"
            tf.addfile(info)

    _tar_with(arc, build)
    with pytest.raises(UserError, match="escape|link|special file"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_tar_extracts_and_marks_completion(tmp_path):
    arc = tmp_path / "imgs.tar.gz"
    _tar_with(arc, lambda tf: [_add_file(tf, "flickr30k-images/1.jpg", b"jpg1"), _add_file(tf, "flickr30k-images/2.jpg", b"jpg2")])
    out = safe_extract(arc, tmp_path / "flickr30k")
    assert (out / "flickr30k-images/2.jpg").read_bytes() == b"jpg2"
    assert (out / ".extracted-imgs.tar.gz").exists()
    os.remove(out / "flickr30k-images/1.jpg")
    safe_extract(arc, tmp_path / "flickr30k")  # marked complete: not re-extracted
    assert not (out / "flickr30k-images/1.jpg").exists()


def test_damaged_archive_is_a_user_error(tmp_path):
    arc = tmp_path / "broken.zip"
    arc.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UserError, match="damaged"):
        safe_extract(arc, tmp_path / "out")


def test_fetch_without_catalog(server, tmp_path):
    data = _payload(10_000)
    server.files["/raw"] = data
    digest, n = fetch(server.url("/raw"), tmp_path / "raw.bin", sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert n == len(data) and (tmp_path / "raw.bin").read_bytes() == data


def test_cli_download_unpinned_catalog_entry_from_mirror(server, tmp_path):
    from click.testing import CliRunner

    from benchmark.cli import cli

    data = _zip_bytes({"v2_OpenEnded_mscoco_val2014_questions.json": b'{"questions": []}'})
    server.files["/q.zip"] = data
    res = CliRunner().invoke(cli, ["data", "download", "vqav2-val-questions", "--root", str(tmp_path),
                                   "--url", server.url("/q.zip"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "checksum not pinned (recorded)" in res.output and hashlib.sha256(data).hexdigest() in res.output
    assert (tmp_path / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json").read_bytes() == b'{"questions": []}'
    ls = CliRunner().invoke(cli, ["data", "ls"])
    assert "karpathy-splits" in ls.output and "sha256 pinned" in ls.output
