"""The RISC-V toolchain: a Debian sid chroot with gcc 15 for riscv64, made by debootstrap.

Only gcc >= 15 compiles the C906's XTheadVector soundly, and Debian ships it only in sid
(`gcc-15-riscv64-linux-gnu`), built against sid's glibc, so it runs in a chroot made once
under build/toolchains/. The same chroot gives RVV 1.0 builds and builds the storyteller's
libraries from pinned sources (duo_builder.build.payload_libs): every riscv64 program we
make is static, so none needs this chroot as a sysroot to run.

Commands run in the chroot inside a private mount namespace (`unshare --mount`), with the
repository bind-mounted at its own absolute path: build outputs land in the real build/
tree, and every mount vanishes with the process, even when it fails."""

import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from duo_builder.build.hostdeps import HostDependencyError, ensure_commands
from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer, exclusive_lock, sha256_file
from duo_builder.paths import BUILD, REPO

MIRROR = "http://deb.debian.org/debian"
SUITE = "sid"
TOOLCHAINS = BUILD / "toolchains"
NAME = "sid-riscv64"
ROOT = TOOLCHAINS / NAME
MANIFEST = TOOLCHAINS / f"{NAME}.manifest.json"
LOG = TOOLCHAINS / f"{NAME}.log"
LOCK = TOOLCHAINS / f"{NAME}.lock"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
MADE_STAMP = "etc/duo-builder-made"  # in the chroot: when it was made (UTC)
# The chroot's check on every use: the sha256 of its key files, recorded when it was made.
# Hashing all 22,000 files (700 MB) would cost seconds on every build; these are what
# every riscv64 build runs or links (compiler, assembler, linker, C library, start files).
VERIFIED = TOOLCHAINS / f"{NAME}.sha256.json"
KEY_FILES = (
    "usr/bin/riscv64-linux-gnu-gcc-15",
    "usr/libexec/gcc-cross/riscv64-linux-gnu/15/cc1",
    "usr/libexec/gcc-cross/riscv64-linux-gnu/15/collect2",
    "usr/bin/riscv64-linux-gnu-as",
    "usr/bin/riscv64-linux-gnu-ld.bfd",
    "usr/riscv64-linux-gnu/lib/libc.so.6",
    "usr/riscv64-linux-gnu/lib/crt1.o",
    "usr/lib/riscv64-linux-gnu/libc.so.6",
    "usr/lib/riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1",
)
QEMU = "qemu-riscv64-static"

GCC = "riscv64-linux-gnu-gcc-15"
AR = "riscv64-linux-gnu-ar"
OBJDUMP = "riscv64-linux-gnu-objdump"
PKG_CONFIG = "riscv64-linux-gnu-pkg-config"

# Installed by debootstrap (host-architecture packages: the cross compiler and build tools)
BASE_PACKAGES = ("gcc-15-riscv64-linux-gnu", "libc6-dev-riscv64-cross", "make", "pkgconf")
# Installed with apt once riscv64 is a foreign architecture in the chroot
RISCV64_PACKAGES = (
    "pkgconf:riscv64",  # provides riscv64-linux-gnu-pkg-config (with the riscv64 search path)
)
# What building the payload's libraries from source needs (duo_builder.build.payload_libs):
# alsa-lib's configure, espeak-ng's autotools and a native gcc for its data, pocketsphinx's
# CMake. Installed with the chroot, or on first use into an older one.
PAYLOAD_BUILD_PACKAGES = (
    "gcc-15",
    # espeak-ng's configure insists on working C++ compilers, though none is used here
    "g++-15",
    "g++-15-riscv64-linux-gnu",
    "libc6-dev",
    "autoconf",
    "automake",
    "libtool",
    "cmake",
    "bzip2",
    "xz-utils",
)
# What the manifest records (dpkg-query names; the architecture is part of the name)
KEY_PACKAGES = (
    "gcc-15-riscv64-linux-gnu",
    "cpp-15-riscv64-linux-gnu",
    "binutils-riscv64-linux-gnu",
    "libc6-dev-riscv64-cross",
    "make",
    "pkgconf",
    "gcc-15",
    "cmake",
    "autoconf",
    "automake",
    "libtool",
)

APT_CONF = """\
// Written by duo_builder.build.toolchain. sid's InRelease on the mirror may be past Valid-Until.
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
Acquire::Languages "none";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
"""

# QEMU -cpu for each profile a riscv64 build may target (the C906's XTheadVector has none)
QEMU_CPUS = {
    "rv64gc": "rv64",
    "rv64gcv": "rv64,v=true,vlen=128,vext_spec=v1.0,Zfh=true",
}

# Runs as `unshare --mount --propagation private -- sh -c SCRIPT sh ROOT REPO CWD ARGV...`:
# everything mounted here belongs to the new namespace and is gone when the command ends.
_ENTER = r"""
set -e
root=$1 repo=$2 cwd=$3
shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mkdir -p "$root$repo"
mount --bind "$repo" "$root$repo"
exec chroot "$root" /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
"""

_CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "SOURCE_DATE_EPOCH", "TERM")


class ToolchainError(BuildError):
    """The RISC-V toolchain could not be made or used; the message says why and where to look."""


def ensure_sid_chroot(progress: bool = True) -> Path:
    """The sid riscv64 toolchain chroot (build/toolchains/sid-riscv64/), made on first use.

    Made in a temporary directory and renamed into place only when complete, under a lock
    so concurrent callers wait for one another; returns the chroot's root. Its key files
    are checked against the sha256 recorded when it was made (once a process): a mismatch
    says so in one line and makes it again."""
    if ROOT.is_dir() and _verified(ROOT):
        if not MANIFEST.exists():
            _write_manifest(ROOT)
        return ROOT
    TOOLCHAINS.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(LOCK):
        if ROOT.is_dir() and not _verified(ROOT):
            _discard(ROOT)
        if ROOT.is_dir():  # made by another process while we waited
            if not MANIFEST.exists():
                _write_manifest(ROOT)
            return ROOT
        _make_chroot(progress)
    return ROOT


def sysroot() -> Path:
    """The chroot's root: a riscv64 sysroot (`qemu-riscv64-static -L`) for dynamic programs
    (glibc's own, e.g. a test of a dynamically linked program; ours are all static)."""
    return ensure_sid_chroot()


def run_in_chroot(
    argv: Sequence[str],
    *,
    cwd_in_repo: Path | None = None,
    env: Mapping[str, str] | None = None,
    capture_output: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run `argv` inside the chroot, the repository bind-mounted at its own absolute path and
    the working directory `cwd_in_repo` (a path in the repository, default its top).
    Output is captured as text unless capture_output is False; the exit code is not checked."""
    root = ensure_sid_chroot()
    cwd = Path(cwd_in_repo).resolve() if cwd_in_repo is not None else REPO
    if cwd != REPO and REPO not in cwd.parents:
        raise ToolchainError(f"run_in_chroot: {cwd} is not inside the repository {REPO}")
    return _run_in(root, argv, cwd=cwd, env=env, capture_output=capture_output, timeout=timeout)


def ensure_chroot_packages(packages: Sequence[str]) -> None:
    """Install those of `packages` the chroot lacks (a chroot made before they were needed)."""
    root = ensure_sid_chroot()
    fmt = "${Package}\t${db:Status-Abbrev}\n"
    listing = _run_in(root, ["dpkg-query", "-W", "-f", fmt, *packages], cwd=None).stdout
    have = {
        n for n, _, s in (line.partition("\t") for line in listing.splitlines()) if s[:2] == "ii"
    }
    missing = [p for p in packages if p.split(":")[0] not in have]
    if not missing:
        return
    with exclusive_lock(LOCK):
        print(f"toolchain: installing {' '.join(missing)} into {root}", file=sys.stderr)
        for what, argv in (
            ("apt-get update", ["apt-get", "-q", "update"]),
            ("apt-get install", ["apt-get", "-q", "-y", "install", *missing]),
            ("apt-get clean", ["apt-get", "clean"]),
        ):
            _logged_in(root, what, argv)
    _write_manifest(root)


def qemu_command(target: str, *, dynamic: bool = False) -> list[str]:
    """The command prefix that runs a riscv64 program built for `target` ("rv64gc" or
    "rv64gcv") under the host's qemu-riscv64-static; with dynamic, the chroot is the sysroot
    (-L) its loader and libraries come from. Static programs need no -L: with one, QEMU
    would look up every absolute path the program opens in the sysroot first."""
    if target not in QEMU_CPUS:
        raise ToolchainError(
            f"no QEMU CPU model for riscv64 target {target!r}; known: {', '.join(QEMU_CPUS)}"
        )
    try:
        ensure_commands({QEMU: "qemu-user-static"}, "running riscv64 programs")
    except HostDependencyError as e:
        raise ToolchainError(str(e)) from None
    cmd = [shutil.which(QEMU) or QEMU, "-cpu", QEMU_CPUS[target]]
    if dynamic:
        cmd += ["-L", str(sysroot())]
    return cmd


def manifest() -> dict:
    """The chroot's manifest (key package versions, when made), making the chroot if needed."""
    ensure_sid_chroot()
    return json.loads(MANIFEST.read_text())


# --- checking the chroot -------------------------------------------------------------------

_checked: dict[str, bool] = {}  # stamp text -> verdict, so a process hashes the files once


def key_file_hashes(root: Path) -> dict[str, str]:
    """sha256 of each of KEY_FILES present in `root` (by path in the chroot)."""
    return {rel: sha256_file(root / rel) for rel in KEY_FILES if (root / rel).is_file()}


def record_hashes(root: Path = ROOT) -> None:
    """Record the chroot's key-file hashes (when made; call again after changing it)."""
    with atomic_writer(VERIFIED) as f:
        f.write((json.dumps(key_file_hashes(root), indent=2) + "\n").encode())
    _checked.clear()


def _verified(root: Path) -> bool:
    """Whether the chroot's key files still have the hashes recorded when it was made; a
    chroot made before hashes were kept has them recorded now."""
    try:
        stamp = VERIFIED.read_text()
    except FileNotFoundError:
        print(f"toolchain: recording the sha256 of {root}'s key files", file=sys.stderr)
        record_hashes(root)
        return True
    if stamp in _checked:
        return _checked[stamp]
    try:
        recorded = json.loads(stamp)
    except ValueError:
        recorded = {}
    actual = key_file_hashes(root)
    changed = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
    if not recorded:
        changed = [VERIFIED.name]
    if changed:
        print(
            f"toolchain: {root}/{changed[0]} does not match the sha256 recorded when the "
            f"chroot was made ({len(changed)} file(s) differ): making it again",
            file=sys.stderr,
            flush=True,
        )
    _checked[stamp] = not changed
    return not changed


def _discard(root: Path) -> None:
    """Move a damaged chroot aside under a temporary name (removed by the next make)."""
    aside = Path(tempfile.mkdtemp(prefix=f".{NAME}.", suffix=".tmp", dir=TOOLCHAINS))
    os.rename(root, aside / "root")
    VERIFIED.unlink(missing_ok=True)
    MANIFEST.unlink(missing_ok=True)
    shutil.rmtree(aside, ignore_errors=True)
    _checked.clear()


# --- making the chroot --------------------------------------------------------------------


def _make_chroot(progress: bool) -> None:
    def say(msg: str) -> None:
        if progress:
            print(f"toolchain: {msg}", file=sys.stderr, flush=True)

    if os.geteuid() != 0:
        raise ToolchainError(
            "making the riscv64 toolchain chroot needs root (debootstrap, unshare --mount, "
            "chroot): run as root, as CI does"
        )
    try:
        ensure_commands(
            {DEBOOTSTRAP: "debootstrap", "unshare": "util-linux", "chroot": "coreutils"},
            "making the riscv64 toolchain chroot",
        )
    except HostDependencyError as e:
        raise ToolchainError(str(e)) from None
    for stale in TOOLCHAINS.glob(f".{NAME}.*.tmp"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    LOG.write_text(f"# making {ROOT} from {MIRROR} {SUITE}, {_now()}\n")
    _check_mirror()
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", suffix=".tmp", dir=TOOLCHAINS))
    tmp.chmod(0o755)  # the chroot's "/": apt's _apt user and qemu -L users must traverse it
    started = time.monotonic()
    try:
        say(f"debootstrap {SUITE} into {ROOT} (once, ~1 min; log: {LOG})")
        # debootstrap mounts /proc and /sys in the target: keep them in a private namespace
        _logged(
            "debootstrap",
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                DEBOOTSTRAP,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(tmp),
                MIRROR,
            ],
        )
        (tmp / "etc/apt/apt.conf.d/99duo-builder").write_text(APT_CONF)
        with contextlib.suppress(OSError):
            shutil.copyfile("/etc/resolv.conf", tmp / "etc/resolv.conf")
        say("riscv64 pkg-config and the payload libraries' build tools")
        _logged_in(tmp, "dpkg --add-architecture", ["dpkg", "--add-architecture", "riscv64"])
        _logged_in(tmp, "apt-get update", ["apt-get", "-q", "update"])
        install = ["apt-get", "-q", "-y", "install", *RISCV64_PACKAGES, *PAYLOAD_BUILD_PACKAGES]
        _logged_in(tmp, "apt-get install", install)
        _logged_in(tmp, "apt-get clean", ["apt-get", "clean"])
        _ensure_cross_pkg_config(tmp)
        for what, argv in (
            ("compiler check", [GCC, "--version"]),
            ("archiver check", [AR, "--version"]),
            ("pkg-config check", [PKG_CONFIG, "--version"]),
        ):
            _logged_in(tmp, what, argv)
        (tmp / MADE_STAMP).write_text(_now() + "\n")
        _write_manifest(tmp)
        record_hashes(tmp)
        os.rename(tmp, ROOT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"toolchain ready in {time.monotonic() - started:.0f} s: {ROOT}")


def _check_mirror() -> None:
    url = f"{MIRROR}/dists/{SUITE}/InRelease"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30):
            pass
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        _log(f"mirror check: {url}: {reason}\n")
        raise ToolchainError(
            f"cannot reach the Debian mirror {MIRROR} ({reason}), which the riscv64 toolchain "
            f"chroot is made from; log: {LOG}"
        ) from None


def _ensure_cross_pkg_config(root: Path) -> None:
    """`riscv64-linux-gnu-pkg-config` must find the riscv64 multiarch .pc files. Debian's
    pkgconf provides it as a link to its cross wrapper; should a sid upgrade drop that,
    make the link ourselves."""
    link = root / "usr/bin" / PKG_CONFIG
    if not (link.exists() or link.is_symlink()):
        link.symlink_to("pkgconf")
        _log(f"# made {link} -> pkgconf\n")


def _write_manifest(root: Path) -> None:
    fmt = "${Package}:${Architecture}\t${Version}\t${db:Status-Abbrev}\n"
    listing = _run_in(root, ["dpkg-query", "-W", "-f", fmt], cwd=None).stdout
    installed = {}
    for line in listing.splitlines():
        name, version, status = (line.split("\t") + ["", ""])[:3]
        if status.startswith("ii"):
            installed[name] = version
    host_arch = _run_in(root, ["dpkg", "--print-architecture"], cwd=None).stdout.strip()

    def version(pkg: str) -> str | None:
        return installed.get(pkg if ":" in pkg else f"{pkg}:{host_arch}") or installed.get(
            f"{pkg}:all"
        )

    gcc = _run_in(root, [GCC, "--version"], cwd=None).stdout.splitlines()
    made = root / MADE_STAMP
    if not made.exists():
        made.write_text(_now() + "\n")
    data = {
        "name": NAME,
        "made": made.read_text().strip(),
        "mirror": MIRROR,
        "suite": SUITE,
        "suite_date": _suite_date(root),
        "host_architecture": host_arch,
        "foreign_architectures": ["riscv64"],
        "compiler": gcc[0] if gcc else None,
        "packages": {pkg: version(pkg) for pkg in KEY_PACKAGES},
        "installed": dict(sorted(installed.items())),
    }
    with atomic_writer(MANIFEST) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())


def _suite_date(root: Path) -> str | None:
    """The Date: of the suite's InRelease apt used (which snapshot of sid this is)."""
    for inrelease in sorted((root / "var/lib/apt/lists").glob("*_dists_sid_InRelease")):
        for line in inrelease.read_text(errors="replace").splitlines():
            if line.startswith("Date:"):
                return line.split(":", 1)[1].strip()
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


# --- running commands ----------------------------------------------------------------------


def _run_in(
    root: Path,
    argv: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str] | None = None,
    capture_output: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        raise ToolchainError(
            "the riscv64 toolchain chroot needs root (debootstrap, unshare --mount, chroot): "
            "run as root, as CI does"
        )
    cwd = cwd or REPO
    full_env = {**_CHROOT_ENV, **{k: os.environ[k] for k in _PASS_ENV if k in os.environ}}
    full_env.update(env or {})
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _ENTER, "sh"]
    cmd += [str(root), str(REPO), str(cwd), *map(str, argv)]
    return subprocess.run(
        cmd, env=full_env, capture_output=capture_output, text=True, timeout=timeout
    )


def _log(text: str) -> None:
    with open(LOG, "a") as f:
        f.write(text)


def _logged(what: str, cmd: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    _log(f"\n$ {' '.join(cmd)}\n")
    with open(LOG, "a") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        _fail(what, result.returncode)


def _logged_in(root: Path, what: str, argv: list[str]) -> None:
    _log(f"\n# in the chroot\n$ {' '.join(argv)}\n")
    result = _run_in(root, argv, cwd=None, capture_output=True)
    _log(result.stdout + result.stderr)
    if result.returncode != 0:
        _fail(what, result.returncode)


def _fail(what: str, code: int) -> None:
    tail = LOG.read_text(errors="replace").strip().splitlines()[-1:] if LOG.exists() else []
    last = f' (last line: "{tail[0].strip()[:160]}")' if tail else ""
    raise ToolchainError(
        f"making the riscv64 toolchain chroot failed at {what} (exit {code}){last}; "
        f"see the log {LOG}"
    )
