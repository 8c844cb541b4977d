"""Fetch a model file into a cache keyed by its sha256, verified and resumable.

Layout under the cache directory:
    <sha256>/<name>          the verified file; only ever appears complete (os.replace)
    <sha256>/.<name>.*.tmp   a copy in progress (a killed copy's is removed by the next run)
    partial/<sha256>.part    an unfinished download, kept so that a re-run resumes it

A cached file is hashed on every use; a resumed download whose result fails the hash is
discarded and fetched once more from its first byte (the partial may have been damaged)
before the hash is blamed.
"""

import hashlib
import os
import re
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests
from tqdm import tqdm

from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer, remove_stale, sha256_file, temp_prefix
from duo_builder.paths import cache_dir

CHUNK = 1 << 16
DEFAULT_NAME = "model.bin"  # for URLs whose path has no file name, e.g. https://host/
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class DownloadError(BuildError):
    """A model could not be fetched or verified; the message says which, why, and the fix."""


def fetch_model(
    *,
    sha256: str,
    url: str | None = None,
    path: Path | None = None,
    cache: Path | None = None,
    name: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Return the path of a verified copy of the model in the cache, fetching it if needed.

    Exactly one of `url` (downloaded, resuming an earlier partial download) or `path` (a
    local file, copied) is the source; either way the result's sha256 equals `sha256`.
    """
    digest = _check_sha256(sha256)
    _check_source(url, path)
    cache = Path(cache) if cache is not None else cache_dir()
    final = cache / digest / _check_name(name or _default_name(url, path))
    try:
        remove_stale(final.parent, temp_prefix(final), _say)  # a killed copy's temp file
        if _cached(final, digest):
            return final
        if url is not None:
            partial = cache / "partial" / f"{digest}.part"
            _download(url, digest, final, partial, progress=progress, timeout=timeout)
        else:
            _copy_verified(Path(path), final, digest)
    except OSError as exc:  # disk full, permissions...: still one readable sentence
        raise DownloadError(f"Could not store {url or path} in the cache {cache}: {exc}.") from exc
    return final


# --- argument checks -------------------------------------------------------------------


def _check_sha256(sha256: str) -> str:
    digest = str(sha256).strip().lower()
    if not _SHA256.fullmatch(digest):
        raise DownloadError(
            f"Invalid sha256 {sha256!r}: expected 64 hexadecimal characters "
            "(as printed by `sha256sum FILE`)."
        )
    return digest


def _check_source(url: str | None, path: Path | None) -> None:
    if (url is None) == (path is None):
        raise DownloadError(
            "Give exactly one model source: either a URL (--url) or a file (--path)."
        )
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(
                f"Invalid URL {url!r}: expected an http:// or https:// address with a host name."
            )


def _default_name(url: str | None, path: Path | None) -> str:
    if url is not None:
        return PurePosixPath(unquote(urlsplit(url).path)).name or DEFAULT_NAME
    return Path(path).name


def _check_name(name: str) -> str:
    # The name becomes a path component: refuse anything that could escape the cache.
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DownloadError(f"Invalid file name {name!r}: it must be a plain file name.")
    return name


def _say(msg: str) -> None:
    print(f"model cache: {msg}", file=sys.stderr, flush=True)


def _cached(final: Path, digest: str) -> bool:
    """True if `final` is already a verified copy; a file that fails the check is removed."""
    if not final.is_file():
        return False
    if sha256_file(final) == digest:
        return True
    _say(f"{final} does not match its sha256 (damaged on disk): fetching it again")
    final.unlink()  # tampered with or corrupted on disk: fetch it again
    return False


# --- local files -----------------------------------------------------------------------


def _copy_verified(src: Path, dst: Path, digest: str) -> None:
    if not src.is_file():
        raise DownloadError(f"Model file {src} does not exist or is not a regular file.")
    actual = sha256_file(src)
    if actual != digest:
        raise DownloadError(f"Model file {src} has sha256 {actual}, but {digest} was expected.")
    # Hash again while copying, so a file changed between check and copy never lands.
    with atomic_writer(dst) as out, open(src, "rb") as f:
        h = hashlib.sha256()
        while block := f.read(CHUNK):
            h.update(block)
            out.write(block)
        if h.hexdigest() != digest:
            raise DownloadError(f"Model file {src} changed while being copied; try again.")


# --- downloads -------------------------------------------------------------------------


def _download(
    url: str, digest: str, final: Path, partial: Path, *, progress: bool, timeout: float
) -> None:
    partial.parent.mkdir(parents=True, exist_ok=True)
    resumed = partial.is_file() and partial.stat().st_size > 0

    def attempt() -> bool:
        return _transfer(url, partial, progress=progress, timeout=timeout, desc=final.name)

    if not attempt():
        # The server would not extend our partial (416, or a range we did not ask for).
        # It may already be complete (killed before the move); otherwise it is stale:
        # restart from byte 0, once - never loop on a confused server.
        complete = partial.is_file() and sha256_file(partial) == digest
        if not complete:
            partial.unlink(missing_ok=True)
            if not attempt():
                raise DownloadError(
                    f"Could not download {url}: the server sent a partial response (HTTP 206) "
                    "to a request for the whole file."
                )
    if resumed and sha256_file(partial) != digest:
        # the earlier part may be what is wrong (a damaged or foreign partial): once more
        # from byte 0 before blaming the URL or the hash
        _say(f"the resumed download of {url} fails its sha256: downloading it from the start")
        partial.unlink()
        if not attempt():
            raise DownloadError(
                f"Could not download {url}: the server sent a partial response (HTTP 206) "
                "to a request for the whole file."
            )
    _verify(url, partial, digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)


def _transfer(url: str, partial: Path, *, progress: bool, timeout: float, desc: str) -> bool:
    """Fetch the rest of `url` into `partial`; False if the server cannot resume from it."""
    offset = partial.stat().st_size if partial.exists() else 0
    # identity: byte offsets must count file bytes, not bytes of a gzip-encoded stream.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            if offset and resp.status_code == 416:
                return False
            _check_status(url, resp)
            start = _start_offset(resp, offset)
            if start is None:
                return False
            total = _expected_total(resp, start)
            _write_body(url, resp, partial, start, total, progress=progress, desc=desc)
    except requests.RequestException as exc:
        raise DownloadError(f"Could not download {url}: {_reason(exc, timeout)}.") from exc
    return True


def _check_status(url: str, resp: requests.Response) -> None:
    if resp.status_code in (200, 206):
        return
    hint = "; check the URL" if resp.status_code in (403, 404, 410) else ""
    status = f"HTTP {resp.status_code} {resp.reason or ''}".rstrip()
    raise DownloadError(f"Could not download {url}: the server answered {status}{hint}.")


def _start_offset(resp: requests.Response, offset: int) -> int | None:
    """Byte offset the body starts at: 0 for a full body, `offset` for a matching 206."""
    if resp.status_code == 200:
        return 0  # server ignores ranges: the body is the whole file, start over
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if not offset or match is None or int(match.group(1)) != offset:
        return None  # a 206 we cannot line up with our partial
    return offset


def _expected_total(resp: requests.Response, start: int) -> int | None:
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
    if match and match.group(2) != "*":
        return int(match.group(2))
    length = resp.headers.get("Content-Length", "")
    return start + int(length) if length.isdigit() else None


def _write_body(
    url: str,
    resp: requests.Response,
    partial: Path,
    start: int,
    total: int | None,
    *,
    progress: bool,
    desc: str,
) -> None:
    received = start
    broken = False
    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
    )
    # urllib3 would raise on a short body and drop the bytes it had buffered; instead let
    # the body end early, keep every byte for the resume, and compare against `total`.
    resp.raw.enforce_content_length = False
    with bar, open(partial, "ab" if start else "wb") as out:
        try:
            for chunk in resp.iter_content(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except requests.RequestException:
            broken = True  # connection lost mid-body: what arrived stays for a resume
        out.flush()
        os.fsync(out.fileno())
    if total is not None and received < total:
        raise DownloadError(
            f"Download of {url} was truncated at {received} of {total} bytes "
            "(the connection closed early); re-run the same command to resume it."
        )
    if broken:
        raise DownloadError(
            f"Download of {url} was interrupted after {received} bytes; "
            "re-run the same command to resume it."
        )


def _verify(url: str, partial: Path, digest: str) -> None:
    actual = sha256_file(partial)
    if actual != digest:
        partial.unlink()  # resuming a wrong file can never fix it
        raise DownloadError(
            f"Download of {url} failed verification: expected sha256 {digest} but got "
            f"{actual}; the file was discarded, so check the URL and the hash."
        )


def _reason(exc: requests.RequestException, timeout: float) -> str:
    """A short human reason, e.g. 'Connection refused', instead of urllib3's nested repr."""
    if isinstance(exc, requests.Timeout):
        return f"no response within {timeout:g} s (timed out)"
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return f"invalid URL ({exc})"
    root: BaseException | None = exc
    seen: set[int] = set()
    found: OSError | None = None
    while root is not None and id(root) not in seen:  # walk requests -> urllib3 -> socket
        seen.add(id(root))
        if isinstance(root, OSError) and root.strerror:
            found = root
        reason = getattr(root, "reason", None)
        root = reason if isinstance(reason, BaseException) else root.__cause__ or root.__context__
    return found.strerror if found is not None else str(exc)
