"""fetch_model against a real HTTP server on 127.0.0.1 (no mocks)."""

import hashlib
import random
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from duo_builder.model.download import DownloadError, fetch_model

PAYLOAD = random.Random(1234).randbytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = random.Random(99).randbytes(1_000)
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()


class ModelServer(ThreadingHTTPServer):
    """Serves PAYLOAD at /model.bin; the attributes below make it misbehave on purpose."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict[str, str]] = []  # headers of every request, in order
        self.statuses: list[int] = []
        self.truncate_at: int | None = None  # send only this many body bytes, then hang up
        self.corrupt = False  # right length, wrong bytes
        self.ignore_range = False  # always 200 with the full body

    def url(self, path: str = "/model.bin") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(dict(self.headers.items()))
        if self.path != "/model.bin":
            return self._reply(404, b"not found")
        body = bytes(b ^ 0xFF for b in PAYLOAD) if srv.corrupt else PAYLOAD
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match is None or srv.ignore_range:
            return self._reply(200, body)
        start = int(match.group(1))
        if start >= len(body):
            return self._reply(416, b"", {"Content-Range": f"bytes */{len(body)}"})
        content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
        self._reply(206, body[start:], {"Content-Range": content_range})

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.server.statuses.append(status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))  # always the full length
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        cut = self.server.truncate_at
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not intercept requests to 127.0.0.1.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    srv = ModelServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fetch(srv: ModelServer, cache: Path, **kw: object) -> Path:
    return fetch_model(sha256=SHA, url=srv.url(), cache=cache, progress=False, **kw)


def partial_of(cache: Path) -> Path:
    return cache / "partial" / f"{SHA}.part"


def test_full_download_then_cache_hit(server, tmp_path):
    got = fetch_model(sha256=SHA, url=server.url(), cache=tmp_path)  # progress bar on
    assert got == tmp_path / SHA / "model.bin"
    assert got.read_bytes() == PAYLOAD
    assert not partial_of(tmp_path).exists()
    assert "Range" not in server.requests[0]

    assert fetch(server, tmp_path) == got
    assert len(server.requests) == 1  # verified cache hit: no HTTP at all


def test_interrupted_download_resumes(server, tmp_path):
    server.truncate_at = 100_000
    with pytest.raises(DownloadError, match="truncated at 100000 of 300000 bytes"):
        fetch(server, tmp_path)
    assert not (tmp_path / SHA / "model.bin").exists()
    assert partial_of(tmp_path).stat().st_size == 100_000

    server.truncate_at = None
    got = fetch(server, tmp_path)
    assert server.requests[-1]["Range"] == "bytes=100000-"
    assert server.statuses[-1] == 206
    assert got.read_bytes() == PAYLOAD
    assert not partial_of(tmp_path).exists()


def test_corrupt_download_is_discarded(server, tmp_path):
    server.corrupt = True
    with pytest.raises(DownloadError, match="sha256") as err:
        fetch(server, tmp_path)
    assert SHA in str(err.value)
    assert not (tmp_path / SHA / "model.bin").exists()
    assert not partial_of(tmp_path).exists()


def test_server_ignoring_range_with_stale_partial(server, tmp_path):
    server.ignore_range = True
    partial_of(tmp_path).parent.mkdir(parents=True)
    partial_of(tmp_path).write_bytes(b"stale junk" * 500)
    got = fetch(server, tmp_path)
    assert server.requests[0]["Range"] == "bytes=5000-"
    assert server.statuses == [200]
    assert got.read_bytes() == PAYLOAD


def test_416_with_oversized_partial_restarts_once(server, tmp_path):
    partial_of(tmp_path).parent.mkdir(parents=True)
    partial_of(tmp_path).write_bytes(b"x" * (len(PAYLOAD) + 10))
    got = fetch(server, tmp_path)
    assert server.statuses == [416, 200]
    assert "Range" not in server.requests[1]
    assert got.read_bytes() == PAYLOAD


def test_416_with_complete_partial_is_used(server, tmp_path):
    partial_of(tmp_path).parent.mkdir(parents=True)
    partial_of(tmp_path).write_bytes(PAYLOAD)  # killed after the last byte, before the move
    got = fetch(server, tmp_path)
    assert server.statuses == [416]
    assert got.read_bytes() == PAYLOAD


def test_http_404_names_url_and_status(server, tmp_path):
    url = server.url("/missing.bin")
    with pytest.raises(DownloadError) as err:
        fetch_model(sha256=SHA, url=url, cache=tmp_path, progress=False)
    assert url in str(err.value) and "404" in str(err.value)
    assert not (tmp_path / SHA).exists()


def test_connection_refused(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.bin"
    with pytest.raises(DownloadError, match="refused") as err:
        fetch_model(sha256=SHA, url=url, cache=tmp_path, progress=False, timeout=2)
    assert url in str(err.value)


def test_silent_server_times_out(tmp_path):
    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/model.bin"
        with pytest.raises(DownloadError, match="timed out"):
            fetch_model(sha256=SHA, url=url, cache=tmp_path, progress=False, timeout=0.2)


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/model.bin", "http://"])
def test_invalid_url(tmp_path, url):
    with pytest.raises(DownloadError, match="Invalid URL"):
        fetch_model(sha256=SHA, url=url, cache=tmp_path, progress=False)


@pytest.mark.parametrize("bad", ["", "xyz", SHA[:-1], SHA + "0", "g" * 64, SHA[:-1] + " 0"])
def test_bad_sha256(tmp_path, bad):
    with pytest.raises(DownloadError, match="sha256"):
        fetch_model(sha256=bad, url="http://127.0.0.1/model.bin", cache=tmp_path)


def test_needs_exactly_one_source(tmp_path):
    with pytest.raises(DownloadError, match="exactly one"):
        fetch_model(sha256=SHA, cache=tmp_path)
    with pytest.raises(DownloadError, match="exactly one"):
        fetch_model(sha256=SHA, url="http://127.0.0.1/m", path=tmp_path / "m", cache=tmp_path)


def test_unsafe_name_rejected(tmp_path):
    with pytest.raises(DownloadError, match="file name"):
        fetch_model(sha256=SHA, url="http://127.0.0.1/m", cache=tmp_path, name="../evil")


def test_path_copied_into_cache(tmp_path):
    src = tmp_path / "src" / "stories.bin"
    src.parent.mkdir()
    src.write_bytes(OTHER)
    cache = tmp_path / "cache"
    got = fetch_model(sha256=OTHER_SHA.upper(), path=src, cache=cache)  # hash is normalised
    assert got == cache / OTHER_SHA / "stories.bin"
    assert got.read_bytes() == OTHER
    assert src.exists()


def test_path_with_wrong_hash_rejected(tmp_path):
    src = tmp_path / "stories.bin"
    src.write_bytes(OTHER)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        fetch_model(sha256=SHA, path=src, cache=cache)
    assert str(src) in str(err.value) and SHA in str(err.value) and OTHER_SHA in str(err.value)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_missing_path(tmp_path):
    with pytest.raises(DownloadError, match="does not exist"):
        fetch_model(sha256=SHA, path=tmp_path / "nope.bin", cache=tmp_path / "cache")


def test_tampered_cache_file_is_replaced(server, tmp_path):
    got = fetch(server, tmp_path)
    got.write_bytes(b"tampered")
    assert fetch(server, tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 2
