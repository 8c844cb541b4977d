"""Caches checked on every use and leftovers cleaned (issue 14, B3/B4, M1/M2): the real
functions on real files, real killed processes and a real HTTP server on 127.0.0.1. The
whole-build cases (a corrupted kernel Image or rootfs tarball in build/cache/, kills at
each stage) are in tests/test_faults.py."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import test_download
from test_download import PAYLOAD, SHA

from duo_builder import fsutil
from duo_builder.build import toolchain
from duo_builder.image.bases import debian
from duo_builder.model.download import fetch_model
from duo_builder.paths import REPO

# --- temporary files: locked while their maker lives, removed after it is killed ----------

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from duo_builder import fsutil
    kind, where = sys.argv[1], Path(sys.argv[2])
    if kind == "file":
        with fsutil.atomic_writer(where) as f:
            f.write(b"x" * 100_000); f.flush(); print("ready", flush=True); time.sleep(600)
    else:
        with fsutil.locked_tempdir(where, ".work.") as d:
            (d / "obj.o").write_bytes(b"y" * 100_000); print("ready", flush=True)
            time.sleep(600)
    """
)


def holder(kind: str, where: Path) -> subprocess.Popen:
    """A real process in the middle of writing a temp file (or folder) under `where`."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, kind, str(where)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(fsutil.TMP_SUFFIX))


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_killed_writers_temp_is_removed_a_live_ones_kept(tmp_path, kind):
    dst = tmp_path / "model.bin"
    prefix = fsutil.temp_prefix(dst) if kind == "file" else ".work."
    live, killed = holder(kind, dst if kind == "file" else tmp_path), None
    try:
        killed = holder(kind, dst if kind == "file" else tmp_path)
        assert len(leftovers(tmp_path)) == 2
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        said: list[str] = []
        freed = fsutil.remove_stale(tmp_path, prefix, said.append)
        assert freed >= 100_000 and len(said) == 1 and "1 leftover(s)" in said[0]
        assert len(leftovers(tmp_path)) == 1, "the live writer's temp must stay"
    finally:
        live.kill()
        live.wait()
    fsutil.remove_stale(tmp_path, prefix)
    assert leftovers(tmp_path) == []


def test_temp_files_are_removed_on_every_error_path(tmp_path):
    with pytest.raises(OSError), fsutil.atomic_path(tmp_path / "a.img") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyboardInterrupt), fsutil.locked_tempdir(tmp_path, ".s.") as d:
        (d / "f").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# --- model cache (M1, M2) ------------------------------------------------------------------


server = test_download.server  # the same loopback model server fixture


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_killed_local_model_copy_leaves_nothing_after_the_next_run(tmp_path, capfd):
    src = tmp_path / "model.bin"
    src.write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    final = cache / SHA / "model.bin"
    killed = holder("file", final)  # a copy into the cache, killed half-way (M1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert leftovers(final.parent)
    got = fetch_model(sha256=SHA, path=src, cache=cache, progress=False)
    assert got.read_bytes() == PAYLOAD and leftovers(final.parent) == []
    assert "removed 1 leftover(s) of an interrupted run" in capfd.readouterr().err


def test_corrupt_partial_download_is_retried_from_scratch(server, tmp_path, capfd):
    # M2: the partial's first bytes are wrong; resuming gives a file that fails the hash,
    # although URL and hash are right: discard it and download once more from byte 0
    partial = tmp_path / "partial" / f"{SHA}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(bytes(b ^ 0x55 for b in PAYLOAD[:120_000]))
    got = fetch_model(sha256=SHA, url=server.url(), cache=tmp_path, progress=False)
    assert got.read_bytes() == PAYLOAD and not partial.exists()
    assert [r.get("Range") for r in server.requests] == ["bytes=120000-", None]
    assert "downloading it from the start" in capfd.readouterr().err


def test_a_wrong_hash_still_says_check_the_url_and_the_hash(server, tmp_path):
    partial = tmp_path / "partial" / f"{'0' * 64}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(PAYLOAD[:1000])
    with pytest.raises(Exception, match="check the URL and the hash"):
        fetch_model(sha256="0" * 64, url=server.url(), cache=tmp_path, progress=False)
    assert not partial.exists() and len(server.requests) == 2  # resumed, then once afresh


def test_damaged_model_cache_is_fetched_again(tmp_path, capfd):
    src = tmp_path / "model.bin"
    src.write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    got = fetch_model(sha256=SHA, path=src, cache=cache, progress=False)
    data = bytearray(got.read_bytes())
    data[1234] ^= 0x01
    got.write_bytes(bytes(data))
    again = fetch_model(sha256=SHA, path=src, cache=cache, progress=False)
    assert again.read_bytes() == PAYLOAD
    assert (
        "does not match its sha256 (damaged on disk): fetching it again" in capfd.readouterr().err
    )


# --- rootfs tarball: sha256 and member list ------------------------------------------------


def small_tar(path: Path, n: int = 50) -> list[str]:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"./usr/share/f{i:03}")
            data = os.urandom(700)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [f"./usr/share/f{i:03}" for i in range(n)]


def flip_header_bit(path: Path, member: int) -> None:
    """Flip one bit in the name field of the member'th tar header."""
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[member].offset
    with open(path, "r+b") as f:
        f.seek(offset + 10)
        byte = f.read(1)[0]
        f.seek(offset + 10)
        f.write(bytes([byte ^ 0x02]))


def test_tarfile_alone_stops_silently_at_a_damaged_header(tmp_path):
    # B4's cause: what the cache check has to catch
    tar = tmp_path / "rootfs.tar"
    names = small_tar(tar)
    flip_header_bit(tar, 20)
    with tarfile.open(tar) as t:
        assert len(t.getnames()) == 20 < len(names)
    with pytest.raises(debian.QemuImageError, match="damaged tar header after member 20"):
        debian.tar_members(tar)


def test_rootfs_tarball_is_checked_against_its_record(tmp_path, capfd):
    tar = tmp_path / "rootfs.tar"
    names = small_tar(tar)
    debian._record_members(tar)
    assert debian._members(tar).read_text().splitlines() == names
    assert debian._rootfs_verified(tar)
    flip_header_bit(tar, 20)
    assert not debian._rootfs_verified(tar) and not tar.exists()  # rebuilt by the caller
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recorded when it was made: fetching it again" in err[0]


def test_extracting_checks_the_member_list(tmp_path):
    tar = tmp_path / "rootfs.tar"
    small_tar(tar)
    debian._record_members(tar)
    flip_header_bit(tar, 20)
    with pytest.raises(debian.QemuImageError, match="20 members, but 50 were recorded"):
        debian._extract_base(tar, tmp_path / "staging")


def test_kernel_image_is_checked_against_its_record(tmp_path, capfd):
    image = tmp_path / "Image"
    image.write_bytes(os.urandom(4096))
    debian._record(image)
    assert debian._kernel_verified(image)
    data = bytearray(image.read_bytes())
    data[100] ^= 0xFF
    image.write_bytes(bytes(data))
    assert not debian._kernel_verified(image) and not image.exists()
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recorded when it was built: building it again" in err[0]


# --- toolchain chroot: key files' hashes ---------------------------------------------------


def test_toolchain_key_files_are_checked(tmp_path, monkeypatch, capfd):
    root = tmp_path / "sid-riscv64"
    for rel in toolchain.KEY_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode() * 100)
    monkeypatch.setattr(toolchain, "VERIFIED", tmp_path / "sid-riscv64.sha256.json")
    toolchain.record_hashes(root)
    assert set(json.loads(toolchain.VERIFIED.read_text())) == set(toolchain.KEY_FILES)
    assert toolchain._verified(root)
    cc1 = root / "usr/libexec/gcc-cross/riscv64-linux-gnu/15/cc1"
    cc1.write_bytes(b"\x7fELF damaged")
    toolchain._checked.clear()  # a new process would not know
    assert not toolchain._verified(root)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "15/cc1 does not match the sha256 recorded" in err[0]
