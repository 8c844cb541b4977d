"""Files that are either complete or absent: write to a temp file, then rename.

Temporary files and folders are made beside their destination with a recognisable name
(`.NAME.XXXXXXXX.tmp`, or a caller's prefix) and hold an flock for as long as their maker
lives: a kill -9 releases it, so remove_stale() at the next start removes exactly what
killed runs left and never what a concurrent build is still writing. The directory's own
flock makes "create and lock" and "check and remove" atomic with respect to each other.
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_writer(dst: Path) -> Iterator[BinaryIO]:
    """Yield a binary file beside `dst`; it becomes `dst` only if the block succeeds."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_mkstemp(dst)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive flock on `path` (created if needed): one builder at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def temp_prefix(dst: Path) -> str:
    """The prefix of every temporary file made for `dst` (see remove_stale)."""
    return f".{Path(dst).name}."


@contextlib.contextmanager
def _directory_guard(parent: Path) -> Iterator[None]:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _locked_mkstemp(dst: Path) -> tuple[int, str]:
    """mkstemp beside dst, flocked before anyone can see it unlocked."""
    with _directory_guard(dst.parent):
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dst), suffix=TMP_SUFFIX, dir=dst.parent)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, tmp


@contextlib.contextmanager
def atomic_path(dst: Path, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside dst (for a tool to write) that becomes dst only if the block
    succeeds; locked while we live, removed on every error path."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_mkstemp(dst)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_tempdir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder `parent/PREFIXXXXXXXXX.tmp`, flocked while in use and removed
    afterwards (also on errors); remove_stale(parent, prefix) removes a killed run's."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    with _directory_guard(parent):
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=TMP_SUFFIX, dir=parent))
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield tmp
    finally:
        try:
            _remove(tmp)
        finally:
            os.close(fd)


def remove_stale(parent: Path, prefix: str, say: Callable[[str], None] | None = None) -> int:
    """Remove `parent/PREFIX*.tmp` left by killed runs (nobody holds their flock); those
    a running build holds stay. Returns the bytes freed; `say` gets one line if any."""
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    freed, names = 0, []
    with _directory_guard(parent):
        for entry in os.scandir(parent):
            if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX)):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # a symlink or gone: not ours
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # in use by a running build
            try:
                size = _size(Path(entry.path))
                if _remove(Path(entry.path)):
                    freed += size
                    names.append(entry.name)
                elif say:
                    say(f"left {entry.path}: a file system is still mounted inside it")
            finally:
                os.close(fd)
    if names and say:
        say(
            f"removed {len(names)} leftover(s) of an interrupted run from {parent} "
            f"({freed / 1e6:.1f} MB): {', '.join(sorted(names)[:3])}"
            + (" ..." if len(names) > 3 else "")
        )
    return freed


def _size(path: Path) -> int:
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_blocks * 512
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _remove(path: Path) -> bool:
    """Remove a file or a tree; False (and nothing removed) if a mount point is inside."""
    if path.is_dir() and not path.is_symlink():
        # a killed tool's mounts (proc in a chroot) stay mounted: never descend into one
        for dirpath, dirnames, _files in os.walk(path):
            if any(os.path.ismount(os.path.join(dirpath, d)) for d in dirnames):
                return False
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return True


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that means the file system is full (ENOSPC) or over quota (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding `path` (or the
    nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
