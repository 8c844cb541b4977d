"""The offline test machine `qemu-virt-64m`: kernel, root filesystem, disk image, boot.

A QEMU `virt` RISC-V machine with 64 MB of RAM, like the Duo, built entirely from Debian:
- the kernel from `linux-source-6.12` with buildroot-external/board/qemu-virt/linux.fragment
  on top of `tinyconfig` (Debian's generic kernel panics below ~112 MB);
- the userland from sid's riscv64 packages, extracted without emulation (busybox init and
  little else) plus our payload, whose static storyteller brings its own ALSA, eSpeak NG
  and PocketSphinx with their data: the very files the Duo's images get;
- an ext4 image that is byte-identical when rebuilt from the same inputs.

`boot()` runs it headless with the prompt on the kernel command line; the guest's
/etc/init.d/S99storyteller (overlay/etc/init.d/) reads these parameters from /proc/cmdline:
  storyteller.prompt64=BASE64   tell one story starting with that text (any text, UTF-8)
  storyteller.prompt="TEXT"     the same, TEXT as is (no double quotes)
  storyteller.steps=N           its length in tokens (default: steps in storyteller.conf)
  storyteller.seed=N            its random seed (default: seed in storyteller.conf)
  storyteller.results=/dev/vdb  write story.txt, story.wav, storyteller.log to that disk
  storyteller.play=1            speak through ALSA (the snd-aloop card) instead of the WAV
  storyteller.test=1            power off when done
`ssh_guest()` (`invoke qemu --ssh PORT`) boots it with S50dropbear's SSH server instead:
  storyteller.ssh=/dev/vdb      a disk holding the authorized_keys for root (S50DROPBEAR)
"""

import base64
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from duo_builder.build import toolchain
from duo_builder.build.hostdeps import ensure_commands, ensure_packages
from duo_builder.errors import BuildError, run
from duo_builder.fsutil import (
    atomic_path,
    atomic_writer,
    exclusive_lock,
    free_bytes,
    locked_tempdir,
    remove_stale,
    sha256_file,
    temp_prefix,
)
from duo_builder.image import manifest, payload
from duo_builder.image.manifest import Made
from duo_builder.image.payload import Payload
from duo_builder.image.recipe import Recipe
from duo_builder.paths import BUILD, REPO

BOARD = REPO / "buildroot-external" / "board" / "qemu-virt"
KERNEL_FRAGMENT = BOARD / "linux.fragment"
# The kernel and rootfs caches; DUO_BUILD_CACHE moves them (tests/test_faults.py damages a
# private copy rather than the cache every other build uses)
CACHE = Path(os.environ.get("DUO_BUILD_CACHE") or BUILD / "cache")
KERNEL_SOURCE_PKG = "linux-source-6.12"
KERNEL_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
CROSS = "riscv64-linux-gnu-"
# Bump when the way the kernel is built changes, so cached kernels are rebuilt.
KERNEL_RECIPE = "1"
# Reproducible kernel: no build date, user or host in the Image.
KBUILD_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "1970-01-01 00:00:00 UTC",
    "KBUILD_BUILD_USER": "duo",
    "KBUILD_BUILD_HOST": "duo-builder",
    "KBUILD_BUILD_VERSION": "1",
    "LC_ALL": "C",
}


class QemuImageError(BuildError):
    """Building or booting the QEMU image failed; the message says what and where."""


def _say(msg: str) -> None:
    print(f"qemu-virt-64m: {msg}", file=sys.stderr, flush=True)


def _run(
    cmd: Sequence[str | Path],
    what: str,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure QemuImageError with the output's tail."""
    return run(cmd, what=what, error=QemuImageError, env=env, timeout=timeout)


# --- kernel --------------------------------------------------------------------------------


def kernel_host_deps() -> None:
    ensure_commands(
        {
            "make": "make",
            "gcc": "gcc",
            "flex": "flex",
            "bison": "bison",
            "bc": "bc",
            "perl": "perl",
            "xz": "xz-utils",
            f"{CROSS}gcc": "gcc-riscv64-linux-gnu",
        },
        "building the qemu-virt kernel",
    )
    if not KERNEL_TARBALL.exists():
        ensure_packages([KERNEL_SOURCE_PKG], "building the qemu-virt kernel")


def _package_version(pkg: str) -> str:
    out = _run(["dpkg-query", "-W", "-f=${Version}", pkg], f"dpkg-query {pkg}").stdout
    return out.strip()


def kernel_cache_key() -> str:
    """What the Image depends on: kernel source version, fragment, cross compiler, recipe."""
    h = hashlib.sha256()
    for part in (
        KERNEL_RECIPE,
        _package_version(KERNEL_SOURCE_PKG),
        _package_version("gcc-riscv64-linux-gnu"),
        KERNEL_FRAGMENT.read_text(),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def build_kernel(out_dir: Path, *, jobs: int | None = None) -> Path:
    """A small riscv64 `Image` for the 64 MB virt machine, copied to out_dir/Image.

    Cached under build/cache/kernel/<key>/ by the hash of (kernel source version, fragment,
    cross gcc version), so a rebuild with the same inputs costs nothing. Concurrent
    callers wait for one build rather than race."""
    kernel_host_deps()
    remove_stale(CACHE / "kernel", KERNEL_WORK, _say)  # a killed compile's 1.5 GB
    cached = CACHE / "kernel" / kernel_cache_key() / "Image"
    if _kernel_verified(cached):
        _say(f"kernel: cached {cached}")
    else:
        with exclusive_lock(CACHE / "kernel" / ".lock"):
            if not _kernel_verified(cached):  # else built by another process while we waited
                _build_kernel_uncached(cached, jobs or os.cpu_count() or 1)
    out = Path(out_dir) / "Image"
    if out.resolve() != cached.resolve():
        _copy_verified(cached, out)
    return out


KERNEL_WORK = "work."  # build/cache/kernel/work.XXXXXXXX.tmp: sources and objects


def _stamp(path: Path) -> Path:
    """Where the sha256 of a cached artefact, recorded when it was made, is kept."""
    return path.with_name(path.name + ".sha256")


def _record(path: Path, digest: str | None = None) -> str:
    digest = digest or sha256_file(path)
    with atomic_writer(_stamp(path)) as f:
        f.write(f"{digest}  {path.name}\n".encode())
    return digest


def _recorded(path: Path) -> str | None:
    try:
        return _stamp(path).read_text().split()[0]
    except (OSError, IndexError):
        return None


def _kernel_verified(cached: Path) -> bool:
    """The cached Image is there and has the sha256 recorded when it was built; a mismatch
    is said in one line and the Image removed (the caller builds it again). A cache made
    before hashes were recorded has its hash recorded now."""
    if not cached.is_file():
        return False
    recorded, actual = _recorded(cached), sha256_file(cached)
    if recorded is None:
        _say(f"kernel: recording the sha256 of {cached} (cached before hashes were kept)")
        _record(cached, actual)
        return True
    if actual == recorded:
        return True
    _say(
        f"kernel: cached {cached} has sha256 {actual[:16]}…, not the {recorded[:16]}… "
        "recorded when it was built: building it again"
    )
    cached.unlink()
    return False


def _copy_verified(cached: Path, out: Path) -> None:
    """Copy the cached Image to out, hashing what is copied against the recorded sha256."""
    h = hashlib.sha256()
    with atomic_writer(out) as dst, open(cached, "rb") as src:
        while block := src.read(1 << 20):
            h.update(block)
            dst.write(block)
        if (recorded := _recorded(cached)) and h.hexdigest() != recorded:
            raise QemuImageError(f"{cached} changed while being copied to {out}; run again")


def _build_kernel_uncached(dst: Path, jobs: int) -> None:
    start = time.monotonic()
    # ~1.5 GB of sources and objects, only while building (a killed build's: remove_stale)
    with locked_tempdir(dst.parent.parent, KERNEL_WORK) as work:
        src, obj = Path(work) / "src", Path(work) / "obj"
        src.mkdir()
        obj.mkdir()
        _say(f"kernel: unpacking {KERNEL_TARBALL.name}")
        _run(["tar", "-xJf", KERNEL_TARBALL, "-C", src, "--strip-components=1"], "unpacking")
        make = ["make", "-C", src, f"O={obj}", "ARCH=riscv", f"CROSS_COMPILE={CROSS}"]
        env = {**os.environ, **KBUILD_ENV}
        _say("kernel: configuring (tinyconfig + linux.fragment)")
        _run([*make, "tinyconfig"], "kernel tinyconfig", env=env)
        config = obj / ".config"
        config.write_text(config.read_text() + "\n" + KERNEL_FRAGMENT.read_text())
        _run([*make, "olddefconfig"], "kernel olddefconfig", env=env)
        check_kernel_config(config.read_text(), KERNEL_FRAGMENT.read_text())
        _say(f"kernel: compiling with {jobs} jobs (about 3.5 min on 2 idle cores)")
        _make_with_progress([*make, f"-j{jobs}", "Image"], env, start)
        _copy_atomic(config, dst.with_name("config"))
        _copy_atomic(obj / "arch" / "riscv" / "boot" / "Image", dst)
        _record(dst)
    size = dst.stat().st_size / 1e6
    _say(f"kernel: {dst} ({size:.1f} MB) in {time.monotonic() - start:.0f} s")


def check_kernel_config(config: str, fragment: str) -> None:
    """Every setting of the fragment must be in the final .config: Kconfig silently drops
    a symbol whose dependencies are unmet, and then the guest fails in obscure ways."""
    have: dict[str, str] = {}
    for line in config.splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            have[m[1]] = m[2]
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
            have[m[1]] = "n"
    wrong = []
    for line in fragment.splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip()):
            got = have.get(m[1], "n")
            if got != m[2]:
                wrong.append(f"{m[1]}={m[2]} (got {got})")
    if wrong:
        raise QemuImageError(
            f"{KERNEL_FRAGMENT}: settings lost after olddefconfig (unmet dependencies?): "
            + ", ".join(wrong)
        )


def _make_with_progress(cmd: list[str | Path], env: dict[str, str], start: float) -> None:
    """Run the kernel's make, printing a progress line every ~20 s; raise with its tail."""
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_die_with_parent,  # a kill -9 of the build must not leave make running
    )
    assert proc.stdout is not None
    tail: list[str] = []
    compiled, last = 0, time.monotonic()
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if line.lstrip().startswith("CC "):
            compiled += 1
        if time.monotonic() - last > 20:
            last = time.monotonic()
            _say(f"kernel: {compiled} files compiled ({last - start:.0f} s)")
    if proc.wait() != 0:
        raise QemuImageError("kernel build failed:\n" + "\n".join(tail))


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the builder dies (Linux PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_writer(dst) as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out)


# --- root filesystem -------------------------------------------------------------------------

MIRROR = "http://deb.debian.org/debian"
SUITE = "sid"
TRIPLET = "riscv64-linux-gnu"
# What the guest runs: busybox as init and shell. The payload's programs are static and
# bring their libraries and data (duo_builder.build.payload_libs), as on the Duo: no
# Debian espeak-ng, pocketsphinx or alsa here. Dependencies come along.
ROOTFS_PACKAGES = (
    "busybox",
    "libc6",
    "dropbear-bin",  # SSH for `invoke qemu --ssh` (S50dropbear starts it only when asked)
)
# Bump when the base tarball's recipe changes, so cached ones are rebuilt.
ROOTFS_RECIPE = "1"
# Dropped from the packages: documentation, translations, shell completions, iconv modules,
# mmdebstrap's apt set-up, device nodes (devtmpfs provides /dev) and whatever we write
# ourselves.
TRIM = re.compile(
    r"usr/share/(doc|man|info|locale|lintian|bash-completion|fish|zsh|vim|initramfs-tools"
    r"|X11|sounds|bug|menu)(/.*)?"
    rf"|usr/lib/{TRIPLET}/(gconv|alsa-topology)(/.*)?"
    r"|usr/share/alsa/ucm2(/.*)?"
    r"|etc/(apt|dpkg|hostname|resolv\.conf|fstab|init\.d/alsa-utils)(/.*)?"
    r"|var/(cache|log|lib/apt)/.+"
    r"|dev/.+"
)


@dataclass(frozen=True)
class RootfsBase:
    """sid's riscv64 packages, extracted (not configured), as mmdebstrap's tarball."""

    tarball: Path
    packages: dict[str, str]  # name -> version


def build_rootfs(
    *,
    suite: str = SUITE,
    mirror: str = MIRROR,
    packages: Sequence[str] = ROOTFS_PACKAGES,
    refresh: bool = False,
) -> RootfsBase:
    """The guest's Debian packages as a tarball, cached under build/cache/rootfs/<key>/.

    `mmdebstrap --variant=extract` unpacks riscv64 packages without running anything from
    them, so no emulation is needed. The cache holds whatever the mirror served the first
    time (sid moves on): pass refresh=True to fetch today's packages."""
    ensure_commands({"mmdebstrap": "mmdebstrap", "gpgv": "gpgv"}, "building the qemu rootfs")
    remove_stale(CACHE / "rootfs", MMDEBSTRAP_WORK, _say)
    key = hashlib.sha256("\0".join([ROOTFS_RECIPE, suite, mirror, *packages]).encode())
    cache = CACHE / "rootfs" / key.hexdigest()[:16]
    tarball, listing = cache / "rootfs.tar", cache / "packages.txt"
    if refresh or not (_rootfs_verified(tarball) and listing.exists()):
        with exclusive_lock(cache.parent / ".lock"):
            if refresh or not (_rootfs_verified(tarball) and listing.exists()):
                _mmdebstrap(tarball, listing, suite, mirror, packages)
                _record_members(tarball)
    else:
        _say(f"rootfs: cached {tarball}")
    versions = dict(line.split(" ", 1) for line in listing.read_text().splitlines() if line)
    return RootfsBase(tarball, versions)


def _mmdebstrap(
    tarball: Path, listing: Path, suite: str, mirror: str, packages: Sequence[str]
) -> None:
    start = time.monotonic()
    _say(f"rootfs: fetching {len(packages)} {suite} riscv64 packages and their dependencies")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    # fixed names: made and used only under the rootfs lock, so any found now are stale
    tmp = tarball.with_name(f".{tarball.name}.tmp")
    tmp_listing = listing.with_name(f".{listing.name}.tmp")
    for stale in (tmp, tmp_listing, _stamp(tarball), _members(tarball)):
        stale.unlink(missing_ok=True)
    # The extract variant leaves dpkg's status empty: list the .debs while they are there
    list_debs = (
        'for deb in "$1"/var/cache/apt/archives/*.deb; do '
        "dpkg-deb -W --showformat='${Package} ${Version}\\n' \"$deb\"; "
        f"done | LC_ALL=C sort > {shlex.quote(str(tmp_listing))}"
    )
    cmd = [
        "mmdebstrap",
        "--quiet",
        "--variant=extract",
        "--architectures=riscv64",
        # sid's InRelease on the mirror can be past its Valid-Until date
        '--aptopt=Acquire::Check-Valid-Until "false"',
        '--aptopt=Acquire::Languages "none"',
        f"--include={','.join(packages)}",
        f"--extract-hook={list_debs}",
        "--format=tar",
        suite,
        str(tmp),
        mirror,
    ]
    # mmdebstrap's own work folder (~300 MB) beside the cache, not in /tmp: a killed run's
    # is found and removed by the next (remove_stale in build_rootfs)
    with locked_tempdir(tarball.parent.parent, MMDEBSTRAP_WORK) as work:
        work.chmod(0o755)  # apt's _apt user downloads into it
        env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "TMPDIR": str(work)}
        try:
            _run(cmd, f"mmdebstrap ({suite} riscv64 from {mirror})", env=env, timeout=900)
        except BaseException:
            tmp.unlink(missing_ok=True)
            tmp_listing.unlink(missing_ok=True)
            raise
    try:
        count = len(tmp_listing.read_text().splitlines())
        os.replace(tmp, tarball)
        os.replace(tmp_listing, listing)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_listing.unlink(missing_ok=True)
    _say(f"rootfs: {count} packages in {time.monotonic() - start:.0f} s")


MMDEBSTRAP_WORK = ".mmdebstrap."  # build/cache/rootfs/.mmdebstrap.XXXXXXXX.tmp


def _members(tarball: Path) -> Path:
    return tarball.with_name(tarball.name + ".members")


def tar_members(tarball: Path) -> list[str]:
    """The tarball's member names in order, read to its end: Python's tarfile stops
    silently at a damaged header, so whatever follows the last member must be zeros."""
    with open(tarball, "rb") as f, tarfile.open(fileobj=f) as tar:
        names = [m.name for m in tar]
        end = tar.offset
        f.seek(end)
        while block := f.read(1 << 16):
            if block.count(0) != len(block):
                raise QemuImageError(
                    f"{tarball}: damaged tar header after member {len(names)} "
                    f"({names[-1] if names else 'none'}, byte {end})"
                )
    return names


def _record_members(tarball: Path) -> None:
    """Record the new tarball's sha256 and member list (checked on every later use)."""
    names = tar_members(tarball)
    with atomic_writer(_members(tarball)) as f:
        f.write(("\n".join(names) + "\n").encode())
    _record(tarball)


def _rootfs_verified(tarball: Path) -> bool:
    """The cached tarball has the sha256 recorded when it was made (its member list is
    checked again while extracting); a mismatch is said in one line and the tarball
    removed (the caller fetches it again). A cache made before hashes were recorded is
    read to its end once and recorded."""
    if not tarball.is_file():
        return False
    recorded = _recorded(tarball)
    if recorded is None or not _members(tarball).is_file():
        try:
            _say(f"rootfs: recording the sha256 and members of {tarball} (cached before)")
            _record_members(tarball)
            return True
        except (QemuImageError, tarfile.TarError) as e:
            _say(f"rootfs: cached {tarball} is damaged ({e}): fetching it again")
            tarball.unlink()
            return False
    actual = sha256_file(tarball)
    if actual == recorded:
        return True
    _say(
        f"rootfs: cached {tarball} has sha256 {actual[:16]}…, not the {recorded[:16]}… "
        "recorded when it was made: fetching it again"
    )
    tarball.unlink()
    return False


# --- the disk image --------------------------------------------------------------------------

# Fixed, so the same inputs give the same bytes (root= uses /dev/vda, not the UUID).
ROOTFS_UUID = "5b0c1d2e-6f3a-4b5c-9d7e-8f9012345678"
# Our own mke2fs.conf: the host's /etc/mke2fs.conf (its default features differ between
# Debian releases) must not change the image.
MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 0
[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
"""

# The base system around busybox: init runs rcS, which mounts the kernel's filesystems and
# starts /etc/init.d/S??* in order (like Buildroot's, so S99storyteller is the same file on
# the Duo); a shell on the console for whoever is watching.
INITTAB = """\
::sysinit:/etc/init.d/rcS
console::askfirst:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""
RCS = """\
#!/bin/sh
# Mount what fstab lists, then start every /etc/init.d/S??* script in order.
PATH=/usr/bin:/usr/sbin:/bin:/sbin
export PATH
mount -a
mkdir -p /run/lock
hostname -F /etc/hostname
for script in /etc/init.d/S??*; do
    [ -x "$script" ] && "$script" start
done
"""
FSTAB = """\
# <device> <mount point> <type> <options> <dump> <pass>
proc    /proc   proc    defaults            0 0
sysfs   /sys    sysfs   defaults            0 0
tmpfs   /tmp    tmpfs   mode=1777,size=8m   0 0
tmpfs   /run    tmpfs   mode=0755,size=2m   0 0
"""
PROFILE = """\
# Interactive shells (init scripts set their own paths: they do not read this)
export PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin
export LD_LIBRARY_PATH=/usr/local/lib:/usr/lib/riscv64-linux-gnu:/usr/lib
PS1='\\h:\\w\\$ '
"""
# SSH for `invoke qemu --ssh` (deploy and bench over SSH, as on a board): started only
# when the kernel command line names a disk holding the host's authorized_keys
# (storyteller.ssh=/dev/vdX); root logs in with that key only (-s: no passwords). The host
# key is made at first boot (never baked into the image) and its public half printed on the
# console, from which the host writes its known_hosts entry.
S50DROPBEAR = """\
#!/bin/sh
# S50dropbear: SSH server of the QEMU test machine, only with storyteller.ssh=/dev/vdX.
PATH=/usr/bin:/usr/sbin:/bin:/sbin
case "$1" in start | "") ;; *) exit 0 ;; esac
dev=$(sed -n 's/.*storyteller[.]ssh=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
[ -n "$dev" ] || exit 0
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2
mkdir -p /mnt/ssh /root/.ssh /etc/dropbear
if mount -o ro -t ext4 "$dev" /mnt/ssh; then
    cp /mnt/ssh/authorized_keys /root/.ssh/authorized_keys
    umount /mnt/ssh
fi
chmod 700 /root /root/.ssh
chmod 600 /root/.ssh/authorized_keys
key=/etc/dropbear/dropbear_ed25519_host_key
[ -s $key ] || dropbearkey -t ed25519 -f $key >/dev/null 2>&1
echo "ssh: host key $(dropbearkey -y -f $key | grep '^ssh-')"
dropbear -r $key -s -p 22 -P /var/run/dropbear.pid && echo "ssh: ready"
"""
BASE_FILES = {
    "etc/init.d/S50dropbear": (S50DROPBEAR, 0o755),
    "etc/shells": ("/bin/sh\n", 0o644),
    "etc/inittab": (INITTAB, 0o644),
    "etc/init.d/rcS": (RCS, 0o755),
    "etc/fstab": (FSTAB, 0o644),
    "etc/profile": (PROFILE, 0o644),
    "etc/hostname": ("storyteller\n", 0o644),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
    "etc/group": ("root:x:0:\naudio:x:29:root\n", 0o644),
    "etc/shadow": ("root::0:0:99999:7:::\n", 0o600),
}
BASE_DIRS = {
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "tmp": 0o1777,
    "run": 0o755,
    "root": 0o700,
    "mnt/results": 0o755,
    "var/log": 0o755,
    "var/tmp": 0o1777,
}
# merged /usr, as sid's base-files would make it: /lib/ld-linux-riscv64-lp64d.so.1 is the
# interpreter every riscv64 program names
BASE_SYMLINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "var/run": "../run"}


@dataclass(frozen=True)
class ImageFile:
    """One file we put into the image (for the manifest)."""

    path: str  # in the image, absolute
    sha256: str
    size: int
    mode: int


@dataclass(frozen=True)
class ImageResult:
    path: Path
    sha256: str
    size: int  # bytes of the raw disk image
    files: list[ImageFile]  # our payload
    packages: dict[str, str] = field(default_factory=dict)  # Debian name -> version
    content_bytes: int = 0  # bytes of file data in the root filesystem

    def manifest(self) -> dict:
        return {
            "image": self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "content_bytes": self.content_bytes,
            "files": [vars(f) for f in self.files],
            "packages": self.packages,
        }


def image_host_deps() -> None:
    ensure_commands(
        {"mke2fs": "e2fsprogs", "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs"},
        "building the qemu image",
    )


def make(r: Recipe, files: Payload, out: Path, work: Path) -> Made:
    """The debian base: kernel, the suite's packages and the payload, as out/<recipe>.img."""
    check_space(out, r.image_size_mb, None)  # before anything lands in out/
    had_kernel = (out / "Image").exists()
    kernel = build_kernel(out)
    try:
        result = build_image(
            payload=files,
            out=out / f"{r.name}.img",
            source_date_epoch=manifest.source_date_epoch(),
            size_mb=r.image_size_mb,
            base=build_rootfs(suite=r.base.suite),
        )
    except BaseException:
        if not had_kernel:  # a failed build leaves out/ as it found it
            kernel.unlink(missing_ok=True)
        raise
    extra = {
        "kernel": {"file": kernel.name, "sha256": sha256_file(kernel), "source": KERNEL_SOURCE_PKG},
        "toolchain": toolchain.manifest(),
        "packages": result.packages,
        "files": [vars(f) for f in result.files],
    }
    return Made(result.path, result.sha256, extra, kernel=kernel)


def build_image(
    *,
    payload: Payload,
    out: Path,
    source_date_epoch: int,
    size_mb: int,
    base: RootfsBase | None = None,
) -> ImageResult:
    """A raw disk image (one ext4 filesystem, no partition table) for qemu-virt-64m.

    Same inputs (payload, base packages, epoch, size) -> same bytes: files are added in
    sorted order, every time is source_date_epoch, owners come from the packages (ours are
    root), and the UUID, hash seed and mke2fs settings are fixed. `out` appears only when
    complete. `base` defaults to build_rootfs()'s (cached) packages."""
    image_host_deps()
    start = time.monotonic()
    base = base or build_rootfs()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # what a killed run left here: its staging folder and its temporary image
    remove_stale(out.parent, STAGING, _say)
    remove_stale(out.parent, temp_prefix(out), _say)
    check_space(out.parent, size_mb, base.tarball)
    with locked_tempdir(out.parent, STAGING) as tmp:
        staging = Path(tmp) / "root"
        _say(f"image: unpacking the base packages into {tmp}")
        owners = _extract_base(base.tarball, staging)
        _add_base_system(staging)
        files = _add_payload(staging, payload)
        content = _normalise_times(staging, source_date_epoch)
        with atomic_path(out) as dst:
            _say(f"image: making the ext4 file system in {dst}")
            _make_ext4(staging, dst, size_mb, source_date_epoch, owners, Path(tmp))
    digest = sha256_file(out)
    _say(
        f"image: {out} ({size_mb} MB, {content / 1e6:.1f} MB of files) sha256 {digest[:16]}… "
        f"in {time.monotonic() - start:.1f} s"
    )
    return ImageResult(out, digest, out.stat().st_size, files, base.packages, content)


STAGING = ".qemu-image."  # out/.qemu-image.XXXXXXXX.tmp: the root filesystem's files


class DiskFullError(QemuImageError):
    """Not enough free space for the image; says where and how much."""


def space_needed(size_mb: int, tarball: Path | None) -> int:
    """Bytes the image stage needs beside the image: the staging folder (about the size of
    the packages' tarball) and the image's written blocks (at most size_mb)."""
    # the staging folder holds about half the tarball (TRIM drops the rest)
    staging = tarball.stat().st_size // 2 if tarball and tarball.is_file() else 64 << 20
    return staging + min(size_mb << 20, staging + (16 << 20))


def check_space(where: Path, size_mb: int, tarball: Path | None) -> None:
    need, free = space_needed(size_mb, tarball), free_bytes(where)
    if free < need:
        raise DiskFullError(
            f"{where}: not enough free space for the image: it needs about "
            f"{-(-need // (1 << 20))} MB, {free // (1 << 20)} MB are free; free some or "
            "build into another directory"
        )


def _extract_base(tarball: Path, staging: Path) -> dict[str, tuple[int, int]]:
    """Unpack the packages minus TRIM into staging; returns their owners by path. The
    members must be those recorded when the tarball was made (see _record_members)."""
    owners: dict[str, tuple[int, int]] = {}
    staging.mkdir()
    expected = _members(tarball).read_text().splitlines() if _members(tarball).is_file() else None
    with tarfile.open(tarball) as tar:
        keep = []
        seen = []
        for member in tar:
            seen.append(member.name)
            name = member.name.removeprefix("./").rstrip("/")
            if not name or TRIM.fullmatch(name) or member.ischr() or member.isblk():
                continue
            if member.islnk() and TRIM.fullmatch(member.linkname.removeprefix("./")):
                continue
            owners[name] = (member.uid, member.gid)
            keep.append(member)
        if expected is not None and seen != expected:
            raise QemuImageError(
                f"{tarball}: {len(seen)} members, but {len(expected)} were recorded when it "
                f"was made (damaged?): delete {tarball.parent} and build again"
            )
        # fully_trusted is what extractall did before filters (Python < 3.11.4, e.g. the
        # builder container's Debian 3.11.2, which has no `filter` argument)
        trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tar.extractall(staging, members=keep, numeric_owner=True, **trusted)
    return owners


def _add_base_system(root: Path) -> None:
    for name, mode in BASE_DIRS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(root / name, mode)
    for name, target in BASE_SYMLINKS.items():
        if not (root / name).is_symlink() and not (root / name).exists():
            (root / name).symlink_to(target)
    for name, (text, mode) in BASE_FILES.items():
        _write(root / name, text.encode(), mode)
    _install_busybox_links(root)


def busybox_applets(binary: Path) -> list[str]:
    """The applet names compiled into a busybox binary: its sorted, NUL-separated name
    table starts with "[" and "[[" (read from the file, so no riscv64 emulation)."""
    data = binary.read_bytes()
    at = data.find(b"[\0[[\0")
    if at < 0:
        raise QemuImageError(f"{binary}: no busybox applet table found")
    names = []
    for raw in data[at:].split(b"\0"):
        if not raw:
            break
        names.append(raw.decode("ascii"))
    return names


def _install_busybox_links(root: Path) -> None:
    """/usr/bin/<applet> -> busybox for every applet no package provides, and /sbin/init."""
    busybox = root / "usr" / "bin" / "busybox"
    applets = [a for a in busybox_applets(busybox) if a not in ("[", "[[", "linuxrc")]
    for applet in [*applets, "[", "[["]:
        for where in ("usr/bin", "usr/sbin"):
            if (root / where / applet).exists() or (root / where / applet).is_symlink():
                break
        else:
            (root / "usr" / "bin" / applet).symlink_to("busybox")
    init = root / "usr" / "sbin" / "init"
    if not init.exists():
        init.symlink_to("../bin/busybox")


def _add_payload(root: Path, files: Payload) -> list[ImageFile]:
    added = []
    for f in files.present():
        data = payload.read(f)
        _write(root / f.path.lstrip("/"), data, f.mode)
        added.append(ImageFile(f.path, hashlib.sha256(data).hexdigest(), len(data), f.mode))
    return added


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)
    os.chmod(path, mode)


def _normalise_times(root: Path, epoch: int) -> int:
    """Every mtime/atime = epoch (mke2fs -d copies them); returns bytes of file data."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            os.utime(p, (epoch, epoch), follow_symlinks=False)
            if name in filenames and not os.path.islink(p):
                total += os.path.getsize(p)
    os.utime(root, (epoch, epoch))
    return total


def _make_ext4(
    staging: Path,
    image: Path,
    size_mb: int,
    epoch: int,
    owners: dict[str, tuple[int, int]],
    tmp: Path,
) -> None:
    conf = tmp / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    # E2FSPROGS_FAKE_TIME: the superblock's times; SOURCE_DATE_EPOCH for e2fsprogs >= 1.47.1
    env = {
        **os.environ,
        "MKE2FS_CONFIG": str(conf),
        "E2FSPROGS_FAKE_TIME": str(epoch),
        "SOURCE_DATE_EPOCH": str(epoch),
    }
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    try:
        _run(
            [
                "mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs",
                "-U", ROOTFS_UUID,
                "-E", f"hash_seed={ROOTFS_UUID},lazy_itable_init=0,lazy_journal_init=0,"
                "root_owner=0:0",
                "-d", staging, image,
            ],
            f"mke2fs -d (root filesystem of {size_mb} MB; too small?)",
            env=env,
        )  # fmt: skip
    except QemuImageError:
        if free_bytes(image.parent) < (4 << 20):  # the disk filled up, not the image
            raise DiskFullError(
                f"{image.parent}: no space left on the device while writing the image "
                f"(it needs about {-(-space_needed(size_mb, None) // (1 << 20))} MB there)"
            ) from None
        raise
    # mke2fs 1.47.0 copies ctime and atime from the staging files (the time we wrote
    # them) and their owners (whoever ran the build): set both explicitly
    script = tmp / "debugfs.cmds"
    script.write_text(_debugfs_fixups(staging, epoch, owners))
    _run(["debugfs", "-w", "-f", script, image], "debugfs (fixing times and owners)", env=env)
    _run(["e2fsck", "-fn", image], "e2fsck of the new root filesystem", env=env)


def _debugfs_fixups(staging: Path, epoch: int, owners: dict[str, tuple[int, int]]) -> str:
    lines = []
    paths = ["", "lost+found"]
    for dirpath, dirnames, filenames in os.walk(staging):
        rel = os.path.relpath(dirpath, staging)
        for name in dirnames + filenames:
            paths.append(name if rel == "." else f"{rel}/{name}")
    for rel in sorted(paths):
        if '"' in rel or "\n" in rel:
            raise QemuImageError(f"cannot put /{rel!r} into the image (quote or newline)")
        uid, gid = owners.get(rel, (0, 0))
        target = f'"/{rel}"'
        for fld in ("atime", "ctime", "mtime", "crtime"):
            lines.append(f"sif {target} {fld} @{epoch}")
        lines.append(f"sif {target} uid {uid}")
        lines.append(f"sif {target} gid {gid}")
    return "\n".join(lines) + "\n"


# --- booting ---------------------------------------------------------------------------------

QEMU = "qemu-system-riscv64"
MEMORY = "64M"
CPU = "rv64,v=true,vlen=128,vext_spec=v1.0,Zfh=true"
RESULTS_MB = 32
# riscv's COMMAND_LINE_SIZE is 1024; leave room for the fixed parameters
MAX_PROMPT = 512


@dataclass(frozen=True)
class BootResult:
    console: str  # everything the guest printed on ttyS0
    seconds: float  # from starting qemu to its exit
    mem_total_kb: int | None
    mem_available_before_kb: int | None
    mem_available_during_kb: list[int]  # sampled every ~0.5 s while the story was told
    files: dict[str, Path]  # name -> host copy of what the guest left on the results disk
    exit_status: int | None  # of the storyteller (or llama2) in the guest

    @property
    def story(self) -> str | None:
        path = self.files.get("story.txt")
        return path.read_text(errors="replace") if path else None

    @property
    def mem_available_min_kb(self) -> int | None:
        samples = self.mem_available_during_kb
        return min(samples) if samples else None


def boot_host_deps() -> None:
    # -bios default: the OpenSBI firmware that qemu-system-data ships
    ensure_commands(
        {QEMU: "qemu-system-misc", "mke2fs": "e2fsprogs", "debugfs": "e2fsprogs"},
        "booting the qemu image",
    )


def kernel_command_line(
    prompt: str | None, *, steps: int | None = None, seed: int | None = None, play: bool = False
) -> str:
    """console on ttyS0, root on the first disk, results on the second, test mode (power
    off when done) and the story's parameters for S99storyteller; panic=-1 reboots at
    once, which -no-reboot turns into qemu exiting instead of hanging."""
    args = ["console=ttyS0", "root=/dev/vda", "rw", "rootwait", "panic=-1", "quiet"]
    args += ["storyteller.test=1", "storyteller.results=/dev/vdb"]
    if steps is not None:
        args.append(f"storyteller.steps={int(steps)}")
    if seed is not None:
        args.append(f"storyteller.seed={int(seed)}")
    if play:
        args.append("storyteller.play=1")
    if prompt is not None:
        # base64: quotes, spaces and any other text travel intact (S99storyteller decodes)
        if len(prompt.encode()) > MAX_PROMPT:
            raise QemuImageError(
                f"prompt for the kernel command line: at most {MAX_PROMPT} bytes, "
                f"got {len(prompt.encode())}"
            )
        args.append(f"storyteller.prompt64={base64.b64encode(prompt.encode()).decode()}")
    return " ".join(args)


def qemu_command(kernel: Path, disk: Path, results: Path, append: str) -> list[str]:
    return [
        QEMU,
        "-M", "virt",
        "-m", MEMORY,
        "-smp", "1",
        "-cpu", CPU,
        "-nographic",
        "-no-reboot",
        "-bios", "default",
        "-kernel", str(kernel),
        "-append", append,
        "-drive", f"file={disk},format=raw,if=none,id=root",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"file={results},format=raw,if=none,id=results",
        "-device", "virtio-blk-pci,drive=results",
        "-nic", "none",
    ]  # fmt: skip


def boot(
    image: Path,
    kernel: Path,
    *,
    prompt: str | None,
    timeout: float,
    steps: int | None = None,
    seed: int | None = None,
    play: bool = False,
    results_dir: Path | None = None,
) -> BootResult:
    """Boot the image in a 64 MB qemu virt machine and collect what the guest did.

    The guest boots a copy of `image`; a second, empty ext4 disk (/dev/vdb) receives
    story.txt, story.wav and storyteller.log, copied afterwards into results_dir (a new
    temporary directory if None) together with console.log. The guest powers itself off;
    after `timeout` seconds qemu is killed and QemuImageError carries the console's tail.
    With play, the guest speaks through ALSA (the snd-aloop card) instead of into the WAV."""
    boot_host_deps()
    out = Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="qemu-boot-"))
    out.mkdir(parents=True, exist_ok=True)
    append = kernel_command_line(prompt, steps=steps, seed=seed, play=play)
    with tempfile.TemporaryDirectory(prefix="qemu-run-") as tmp:
        disk, results = Path(tmp) / "root.img", Path(tmp) / "results.img"
        shutil.copyfile(image, disk)  # the guest writes to its root: keep the built image
        with open(results, "wb") as f:
            f.truncate(RESULTS_MB << 20)
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "results", results], "mke2fs results")
        console_log = out / "console.log"
        seconds = _run_qemu(qemu_command(Path(kernel), disk, results, append), console_log, timeout)
        files = _copy_results(results, out)
    console = console_log.read_text(errors="replace")
    _say(f"boot: guest powered off after {seconds:.1f} s; results in {out}")
    return _parse_console(console, seconds, files)


@dataclass(frozen=True)
class SshGuest:
    """A running guest with SSH forwarded to 127.0.0.1:port (see ssh_guest)."""

    port: int
    host_key: str  # the guest's public host key line, "ssh-ed25519 AAAA..."
    console_log: Path
    process: subprocess.Popen


@contextlib.contextmanager
def ssh_guest(
    image: Path,
    kernel: Path,
    *,
    port: int,
    authorized_keys: bytes,
    console_log: Path,
    timeout: float = 300,
    extra_disks: Sequence[Path] = (),
    extra_append: str = "",
) -> Iterator[SshGuest]:
    """Boot the image with user networking forwarding 127.0.0.1:`port` (loopback only;
    `restrict=on`: the guest reaches nothing outside) to the guest's dropbear, and yield
    once it answers; the machine is stopped when the block ends. The guest boots a copy of
    `image`; a small ext4 disk carries `authorized_keys` in (S50DROPBEAR); the robot is off
    (storyteller.mode=off) so the CPU is free for deploy and bench. `extra_disks` are
    attached read-only after it (/dev/vdc, ...), `extra_append` ends the kernel command
    line (e.g. mem=...)."""
    boot_host_deps()
    console_log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qemu-ssh-") as tmp:
        disk, keys = Path(tmp) / "root.img", Path(tmp) / "keys.img"
        shutil.copyfile(image, disk)
        seed = Path(tmp) / "seed"
        seed.mkdir()
        (seed / "authorized_keys").write_bytes(authorized_keys)
        with open(keys, "wb") as f:
            f.truncate(1 << 20)
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", seed, keys], "mke2fs (the key disk)")
        append = (
            "console=ttyS0 root=/dev/vda rw rootwait panic=-1 quiet "
            "storyteller.mode=off storyteller.ssh=/dev/vdb"
        ) + (f" {extra_append}" if extra_append else "")
        cmd = qemu_command(Path(kernel), disk, keys, append)
        for i, extra in enumerate(extra_disks):
            cmd[cmd.index("-nic") : cmd.index("-nic")] = [
                "-drive", f"file={extra},format=raw,if=none,id=extra{i},readonly=on",
                "-device", f"virtio-blk-pci,drive=extra{i}",
            ]  # fmt: skip
        cmd[cmd.index("-nic") : cmd.index("-nic") + 2] = [
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=net0,romfile=",  # romfile=: no option ROM needed
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
        with open(console_log, "wb") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            yield SshGuest(port, _wait_for_ssh(proc, console_log, timeout), console_log, proc)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_for_ssh(proc: subprocess.Popen, console_log: Path, timeout: float) -> str:
    """The guest's host key line, once its console says `ssh: ready`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        console = console_log.read_text(errors="replace")
        key = re.search(r"^ssh: host key (ssh-\S+ \S+)", console, re.M)
        if key and re.search(r"^ssh: ready", console, re.M):
            return key[1]
        if proc.poll() is not None:
            raise QemuImageError(
                f"qemu exited with {proc.returncode} before SSH was up:\n{_tail(console_log)}"
            )
        time.sleep(0.5)
    raise QemuImageError(
        f"the guest's SSH server did not start within {timeout:.0f} s (an image built before "
        f"dropbear was added? rebuild it); console tail:\n{_tail(console_log)}"
    )


def _run_qemu(cmd: list[str], console_log: Path, timeout: float) -> float:
    """Run qemu with its console going to console_log; kill it at the deadline."""
    start = time.monotonic()
    with open(console_log, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise QemuImageError(
                f"the guest did not power off within {timeout:.0f} s; console tail:\n"
                + _tail(console_log)
            ) from None
        except BaseException:  # Ctrl-C and friends: never leave qemu behind
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise QemuImageError(f"qemu exited with {proc.returncode}:\n{_tail(console_log)}")
    return time.monotonic() - start


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _copy_results(results: Path, out: Path) -> dict[str, Path]:
    """Every regular file in the results disk's root, copied out with debugfs (no mount)."""
    listing = _run(["debugfs", "-R", "ls -p /", results], "debugfs ls of the results disk")
    files = {}
    for line in listing.stdout.splitlines():
        # /inode/mode/uid/gid/name/size/
        parts = line.strip().strip("/").split("/")
        if len(parts) < 6 or not parts[1].startswith("100"):
            continue
        name = parts[4]
        if not re.fullmatch(r"[\w.-]+", name):
            continue
        dst = out / name
        _run(["debugfs", "-R", f"dump /{name} {dst}", results], f"debugfs dump /{name}")
        files[name] = dst
    return files


def _kb(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m[1]) if m else None


def _parse_console(console: str, seconds: float, files: dict[str, Path]) -> BootResult:
    during = [
        int(x) for x in re.findall(r"storyteller: memory during: MemAvailable (\d+) kB", console)
    ]
    return BootResult(
        console=console,
        seconds=seconds,
        mem_total_kb=_kb(r"storyteller: memory before: MemTotal (\d+) kB", console),
        mem_available_before_kb=_kb(r"memory before: MemTotal \d+ kB, MemAvailable (\d+)", console),
        mem_available_during_kb=during,
        files=files,
        exit_status=_kb(r"storyteller: exit status (\d+)", console),
    )
