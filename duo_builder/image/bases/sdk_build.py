"""The vendor SDK build, run INSIDE the builder container (stdlib only; see container.py).

Clones duo-buildroot-sdk-v2 at the pinned commit, sets the ION reservation, merges our
Buildroot fragment into the board's Buildroot defconfig (appending our overlay and post-build
script to the SDK's own values) and the audio route's kernel fragment into the board's kernel
defconfig, points Buildroot at our external tree through BR2_EXTERNAL (the SDK does not pass
it) and at a download directory outside the checkout (BR2_DL_DIR, kept between builds), runs
a pre-flight (seconds, not the hour the build takes), then `./build.sh BOARD`. The SDK's
board directories are never written for good: `git clean` resets them on every run. The
image lands in OUT/<recipe>.img.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The commit our recipes pin (Buildroot 2024.02.3 in buildroot-2024.02.3/); 2b33ae9 and later
# keep Buildroot 2025.02 in buildroot/, which is found too.
SUPPORTED_COMMIT = "0b980b25818a265338016584652aaaad1db25ba0"
# build.sh clones this when host-tools/ is absent; so do we, before the pre-flight needs it
HOST_TOOLS_REPO = "https://github.com/milkv-duo/host-tools.git"
# The c906 (musl) cross compiler the SDK builds the kernel and Buildroot's target with
C906_GCC = "host-tools/gcc/riscv64-linux-musl-x86_64/bin/riscv64-unknown-linux-musl-gcc"
# Host commands the SDK's build.sh, Buildroot and genimage call, and the Debian package that
# has each (the Dockerfile's sdk stage installs them)
HOST_COMMANDS = {
    "mkdosfs": "dosfstools",
    "genext2fs": "genext2fs",
    "fakeroot": "fakeroot",
    "genimage": "genimage",
    "make": "make",
    "git": "git",
}
# The libraries the storyteller compiles and links against: each must install to staging
STAGED_PACKAGES = ("espeak-ng", "pocketsphinx", "alsa-lib")
# Free disk a Duo build needs, our estimate (the SDK documents no figure): the depth-1
# checkout ~3 GB, host-tools ~3 GB unpacked (it carries several toolchains), the kernel,
# u-boot and middleware objects ~3 GB, Buildroot's output with its host tools ~6 GB, the
# downloads ~1 GB (outside the checkout), images ~1 GB: ~17 GB, with margin 20 GB.
DISK_NEEDED_GB = 20
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
PREFLIGHT_TIMEOUT_S = 100  # each make call; the whole pre-flight stays under two minutes


class SdkBuildError(Exception):
    """The SDK checkout is not what this script can build; the message says why."""


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def checkout(repo: str, commit: str, dst: Path) -> None:
    if not (dst / ".git").exists():
        run(["git", "init", "-q", str(dst)])
        run(["git", "-C", str(dst), "remote", "add", "origin", repo])
    run(["git", "-C", str(dst), "fetch", "--depth", "1", "origin", commit])
    run(["git", "-C", str(dst), "checkout", "-q", "--force", "FETCH_HEAD"])
    # host-tools is a separate clone (build.sh makes it); downloads live outside the checkout
    run(["git", "-C", str(dst), "clean", "-qfdx", "-e", "/host-tools"])


# --- the SDK's layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    sdk: Path
    board: str  # e.g. milkv-duo-musl-riscv64-sd (device/<board>, ./build.sh <board>)
    link: str  # e.g. cv1800b_milkv_duo_musl_riscv64_sd (build/boards/<chip>/<link>)
    buildroot: Path
    kernel: Path  # the kernel's source tree

    @property
    def board_dir(self) -> Path:
        chip = self.link.split("_")[0][:5] + "x"  # cv1800b -> cv180x
        return self.sdk / "build" / "boards" / chip / self.link

    @property
    def buildroot_defconfig(self) -> Path:
        return self.buildroot / "configs" / f"{self.board}_defconfig"

    @property
    def kernel_defconfigs(self) -> list[Path]:
        """The board's kernel defconfigs: build/Makefile uses cvitek_<link>_defconfig when
        CONFIG_BUILD_FOR_DEBUG=y (the Duo's case) and cvitek_<link>_rls_defconfig otherwise."""
        linux = self.board_dir / "linux"
        names = (f"cvitek_{self.link}_defconfig", f"cvitek_{self.link}_rls_defconfig")
        return [linux / n for n in names if (linux / n).exists()]

    @property
    def kernel_config(self) -> Path:
        """The .config the SDK's kernel-build target configures (KERNEL_OUTPUT_FOLDER)."""
        return self.kernel / "build" / self.link / ".config"

    @property
    def c906_gcc(self) -> Path:
        return self.sdk / C906_GCC


def _refuse(message: str) -> SdkBuildError:
    return SdkBuildError(f"{message}; supported: SDK commit {SUPPORTED_COMMIT[:12]} (Buildroot "
                         "2024.02.3 in buildroot-2024.02.3/) and 2b33ae9 (buildroot/)")  # fmt: skip


def find_layout(sdk: Path, board: str) -> Layout:
    """Where this checkout keeps Buildroot, the kernel and the board's files; refuses in one
    line when it is neither the pinned layout nor the newer one."""
    boardconfig = sdk / "device" / board / "boardconfig.sh"
    if not boardconfig.exists():
        raise _refuse(f"{boardconfig} does not exist: no board {board} in this SDK")
    found = re.search(r"MV_BOARD_LINK=(\S+)", boardconfig.read_text())
    if not found:
        raise _refuse(f"{boardconfig} sets no MV_BOARD_LINK")
    link = found.group(1)
    buildroots = [p for p in sorted(sdk.glob("buildroot-*")) if p.is_dir()]
    if (sdk / "buildroot").is_dir():
        buildroots.append(sdk / "buildroot")
    if len(buildroots) != 1:
        names = ", ".join(p.name for p in buildroots) or "none"
        raise _refuse(f"expected one Buildroot folder (buildroot-* or buildroot/) in {sdk}, "
                      f"found {names}")  # fmt: skip
    kernels = [p for p in sorted(sdk.glob("linux_*")) if (p / "Kconfig").exists()]
    if len(kernels) != 1:
        names = ", ".join(p.name for p in kernels) or "none"
        raise _refuse(f"expected one kernel tree (linux_*/Kconfig) in {sdk}, found {names}")
    layout = Layout(sdk, board, link, buildroots[0], kernels[0])
    if not layout.buildroot_defconfig.exists():
        raise _refuse(f"{layout.buildroot_defconfig} does not exist")
    if not layout.kernel_defconfigs:
        raise _refuse(f"no cvitek_{link}_defconfig in {layout.board_dir / 'linux'}")
    return layout


def ensure_host_tools(sdk: Path) -> None:
    """The SDK's toolchains, cloned as build.sh would (once: `git clean` keeps them)."""
    if not (sdk / "host-tools").is_dir():
        run(["git", "clone", "--depth", "1", HOST_TOOLS_REPO, str(sdk / "host-tools")])


# --- edits to the SDK's files ---------------------------------------------------------------


def set_ion(memmap: Path, ion_mb: int) -> None:
    text = memmap.read_text()
    new, n = re.subn(
        r"^(\s*ION_SIZE\s*=\s*)\d+(\s*\*\s*SIZE_1M)", rf"\g<1>{ion_mb}\g<2>", text, flags=re.M
    )
    if n != 1:
        raise SdkBuildError(f"{memmap}: expected one `ION_SIZE = N * SIZE_1M` line, found {n}")
    memmap.write_text(new)


def config_key(line: str) -> str | None:
    """The symbol a Kconfig line sets: `KEY=value` or `# KEY is not set`; else None."""
    m = re.fullmatch(r"([A-Z0-9_]+)=.*|# ([A-Z0-9_]+) is not set", line.strip())
    return (m.group(1) or m.group(2)) if m else None


def settings(fragment: Path) -> list[str]:
    """A fragment's setting lines (comments and blank lines dropped)."""
    return [ln.strip() for ln in fragment.read_text().splitlines() if config_key(ln)]


def merge_settings(config: str, ours: list[str]) -> str:
    """`config` with every symbol `ours` sets replaced by our line (appended at the end)."""
    keys = {config_key(ln) for ln in ours}
    kept = [ln for ln in config.splitlines() if config_key(ln) not in keys]
    return "\n".join(kept + ours) + "\n"


def buildroot_settings(
    defconfig: Path, fragment: Path, overlay: Path, post_build: Path
) -> list[str]:
    """Our Buildroot lines for `defconfig`: the fragment's, and the SDK's overlay and
    post-build values with ours appended (list-valued: a fragment line would replace them)."""
    values = dict(ln.split("=", 1) for ln in defconfig.read_text().splitlines()
                  if ln.startswith("BR2_") and "=" in ln)  # fmt: skip

    def appended(key: str, extra: Path) -> str:
        old = values.get(key, '""').strip('"')
        return f'{key}="{(old + " " + str(extra)).strip()}"'

    return settings(fragment) + [
        appended("BR2_ROOTFS_OVERLAY", overlay),
        appended("BR2_ROOTFS_POST_BUILD_SCRIPT", post_build),
    ]


def merge_defconfig(defconfig: Path, ours: list[str]) -> None:
    defconfig.write_text(merge_settings(defconfig.read_text(), ours))


def unsatisfied(expected: list[str], config: str) -> list[str]:
    """The lines of `expected` that `config` (a configured .config) does not honour: a
    `KEY=value` line must be there as is; `# KEY is not set` means no `KEY=` line but `=n`."""
    lines = {ln.strip() for ln in config.splitlines()}
    set_keys = {config_key(ln) for ln in lines if "=" in ln and not ln.endswith("=n")}
    missing = []
    for line in expected:
        if line.startswith("#"):
            if config_key(line) in set_keys:
                missing.append(line)
        elif line not in lines:
            missing.append(line)
    return missing


# --- the pre-flight -------------------------------------------------------------------------


def staging_variable(package: str) -> str:
    return package.upper().replace("-", "_") + "_INSTALL_STAGING"


def _make(args: list[str], what: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run make; returns (stdout, "") or ("", one line saying how it failed)."""
    try:
        r = subprocess.run(["make", *args], capture_output=True, text=True, env=env,
                           timeout=PREFLIGHT_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "", f"{what} took over {PREFLIGHT_TIMEOUT_S} s"
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
        return "", f"{what} failed (exit {r.returncode}): {last}"
    return r.stdout, ""


def check_host_commands(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    return [
        f"{cmd} is missing: the Dockerfile's sdk stage must install {pkg} "
        "(then the builder image is rebuilt: its tag follows the Dockerfile)"
        for cmd, pkg in HOST_COMMANDS.items()
        if which(cmd) is None
    ]


def check_disk(where: Path, needed_gb: float = DISK_NEEDED_GB) -> list[str]:
    free_gb = shutil.disk_usage(where).free / 1e9
    if free_gb >= needed_gb:
        return []
    return [f"only {free_gb:.1f} GB free under {where} (build/sdk/ on the host); a Duo build "
            f"needs about {needed_gb} GB: free some space there"]  # fmt: skip


def check_toolchain(layout: Layout) -> list[str]:
    gcc = layout.c906_gcc
    fix = f"delete {layout.sdk / 'host-tools'} so that it is cloned again from {HOST_TOOLS_REPO}"
    if not os.access(gcc, os.X_OK):
        return [f"the c906 toolchain {gcc.relative_to(layout.sdk)} is missing: {fix}"]
    try:
        subprocess.run([str(gcc), "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"the c906 toolchain {gcc.relative_to(layout.sdk)} does not run ({e}): {fix}"]
    return []


def check_proxies(env: dict[str, str], timeout: float = 5) -> list[str]:
    problems = []
    for var in PROXY_VARIABLES:
        url = env.get(var, "")
        if not url:
            continue
        parts = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
        except (OSError, ValueError) as e:
            problems.append(f"{var}={url} does not answer ({e}): fix it or unset it on the host")
    return problems


def check_buildroot(layout: Layout, ours: list[str], external: Path, scratch: Path) -> list[str]:
    """The merged defconfig through Buildroot's olddefconfig (our tree as BR2_EXTERNAL) in a
    scratch O= directory: every line of ours survives; the storyteller's libraries stage."""
    out = scratch / "buildroot"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(layout.buildroot_defconfig, out / ".config")
    base = ["-C", str(layout.buildroot), f"O={out}", f"BR2_EXTERNAL={external}"]
    _, failed = _make([*base, "olddefconfig"], "Buildroot's olddefconfig")
    if failed:
        return [f"{failed}: fix {layout.buildroot_defconfig.name} or our fragment"]
    problems = [
        f"{line} does not survive Buildroot's olddefconfig of {layout.buildroot_defconfig.name}: "
        "a dependency is off; fix buildroot-external/configs/duo-storyteller.fragment"
        for line in unsatisfied(ours, (out / ".config").read_text())
    ]
    wanted = [staging_variable(p) for p in STAGED_PACKAGES]
    printed, failed = _make([*base, "-s", "printvars", f"VARS={' '.join(wanted)}"],
                            "Buildroot's printvars")  # fmt: skip
    if failed:
        return [*problems, failed]
    values = dict(ln.split("=", 1) for ln in printed.splitlines() if "=" in ln)
    for package, var in zip(STAGED_PACKAGES, wanted, strict=True):
        if values.get(var, "").strip() != "YES":
            problems.append(
                f"{package} does not install to staging ({var}={values.get(var, 'unset')}): "
                f"the storyteller cannot link it; set {var} = YES in its .mk"
            )
    return problems


def check_kernel(layout: Layout, ours: list[str], route: str, scratch: Path) -> list[str]:
    """The merged kernel defconfig through the kernel's olddefconfig, as the SDK's
    kernel-build target runs it (cp defconfig .config; make O=... olddefconfig), in a
    scratch directory: every line of the route's fragment survives."""
    out = scratch / "linux"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    problems = []
    for defconfig in layout.kernel_defconfigs:
        shutil.copyfile(defconfig, out / ".config")
        cross = str(layout.c906_gcc)[: -len("gcc")]
        args = ["-C", str(layout.kernel), f"O={out}", "ARCH=riscv", f"CROSS_COMPILE={cross}",
                "olddefconfig"]  # fmt: skip
        _, failed = _make(args, f"the kernel's olddefconfig of {defconfig.name}")
        if failed:
            problems.append(failed)
            continue
        problems += [
            f"{line} (audio: {route}) does not survive the kernel's olddefconfig of "
            f"{defconfig.name}: a dependency is off; fix "
            f"buildroot-external/board/milkv-duo/linux-audio-{route}.fragment"
            for line in unsatisfied(ours, (out / ".config").read_text())
        ]
    return problems


def preflight(
    layout: Layout,
    *,
    buildroot_lines: list[str],
    kernel_lines: list[str],
    route: str,
    external: Path,
    scratch: Path,
    env: dict[str, str],
) -> list[str]:
    """Every reason the long build would fail or make a silent robot, one line each."""
    problems = check_host_commands() + check_disk(scratch) + check_proxies(env)
    toolchain = check_toolchain(layout)
    problems += toolchain
    if shutil.which("make"):
        problems += check_buildroot(layout, buildroot_lines, external, scratch)
        if not toolchain:  # the kernel's Kconfig asks the compiler for its version
            problems += check_kernel(layout, kernel_lines, route, scratch)
    return problems


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--board", required=True, help="e.g. milkv-duo-musl-riscv64-sd")
    ap.add_argument("--ion-mb", type=int, required=True)
    ap.add_argument("--audio", required=True, help="the recipe's audio route (usb, none)")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--external", type=Path, required=True, help="our buildroot-external")
    ap.add_argument("--payload", type=Path, required=True, help="files for the rootfs")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--dl", type=Path, required=True, help="BR2_DL_DIR, kept between builds")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    try:
        return build(a)
    except SdkBuildError as e:
        print(f"error: {e}", flush=True)  # container.py quotes the last `error: ` line
        return 1


def build(a: argparse.Namespace) -> int:
    sdk = a.work / "duo-buildroot-sdk-v2"
    checkout(a.repo, a.commit, sdk)
    ensure_host_tools(sdk)
    layout = find_layout(sdk, a.board)
    set_ion(layout.board_dir / "memmap.py", a.ion_mb)
    board_files = a.external / "board" / "milkv-duo"
    buildroot_lines = buildroot_settings(
        layout.buildroot_defconfig,
        a.external / "configs" / "duo-storyteller.fragment",
        a.external.parent / "overlay",
        board_files / "post-build.sh",
    )
    merge_defconfig(layout.buildroot_defconfig, buildroot_lines)
    kernel_fragment = board_files / f"linux-audio-{a.audio}.fragment"
    if not kernel_fragment.exists():
        raise SdkBuildError(f"no kernel fragment {kernel_fragment} for audio: {a.audio}")
    kernel_lines = settings(kernel_fragment)
    for defconfig in layout.kernel_defconfigs:
        merge_defconfig(defconfig, kernel_lines)

    start = time.monotonic()
    print("sdk_build: pre-flight", flush=True)
    problems = preflight(
        layout, buildroot_lines=buildroot_lines, kernel_lines=kernel_lines, route=a.audio,
        external=a.external, scratch=a.work / "preflight", env=dict(os.environ),
    )  # fmt: skip
    for problem in problems:
        print(f"error: {problem}", flush=True)
    if len(problems) > 1:  # container.py quotes the last `error: ` line: let it carry all
        print(f"error: pre-flight: {'; '.join(problems)}", flush=True)
    if problems:
        return 1
    print(f"sdk_build: pre-flight passed in {time.monotonic() - start:.0f} s", flush=True)

    a.dl.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "BR2_EXTERNAL": str(a.external),
        "BR2_DL_DIR": str(a.dl),  # overrides the defconfig's (Buildroot manual, 8.13.4)
        "DUO_PAYLOAD": str(a.payload),
        "FORCE_UNSAFE_CONFIGURE": "1",
    }
    run(["./build.sh", a.board], cwd=sdk, env=env)
    if layout.kernel_config.exists():
        dropped = unsatisfied(kernel_lines, layout.kernel_config.read_text())
        if dropped:
            raise SdkBuildError(f"the built kernel's .config lacks {', '.join(dropped)} "
                                f"(audio: {a.audio}): see {kernel_fragment.name}")  # fmt: skip
    else:
        print(f"sdk_build: warning: no {layout.kernel_config} to check", flush=True)
    images = sorted((sdk / "out").glob(f"{a.board}_*.img"))
    if not images:
        raise SdkBuildError(f"the SDK made no {a.board}_*.img in {sdk / 'out'}")
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(images[-1], a.out / f"{a.recipe}.img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
