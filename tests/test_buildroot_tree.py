"""buildroot-external/ and overlay/ as the vendor SDK's Buildroot and kernel will see them.

The checks from our own files run everywhere. The checks against a real Buildroot
(check-package, a defconfig with the SDK's toolchain settings plus our fragment, printvars)
run when DUO_BUILDROOT names one or more Buildroot source trees (os.pathsep-separated, e.g.
2024.02.3 and 2025.02 unpacked from a clone) and skip otherwise: CI has none.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from duo_builder.build.payload_libs import ASR_MODEL_FILES

REPO = Path(__file__).resolve().parent.parent
EXTERNAL = REPO / "buildroot-external"
PACKAGES = EXTERNAL / "package"
FRAGMENT = EXTERNAL / "configs" / "duo-storyteller.fragment"
BOARD = EXTERNAL / "board" / "milkv-duo"
OVERLAY = REPO / "overlay"
POST_BUILD = BOARD / "post-build.sh"
INIT_SCRIPT = OVERLAY / "etc" / "init.d" / "S99storyteller"

# Upstream Buildroot symbols the fragment uses (checked against real trees below).
UPSTREAM_SYMBOLS = {
    "BR2_PACKAGE_ALSA_LIB",
    "BR2_PACKAGE_ALSA_UTILS",
    "BR2_PACKAGE_ALSA_UTILS_APLAY",
    "BR2_PACKAGE_ALSA_UTILS_AMIXER",
}
# The audio routes an SDK image supports; i2s-max98357a has no card on the Duo.
DUO_ROUTES = ("usb", "none")
# What PocketSphinx's `hmm` setting needs: the one list, which the payload ships too
ACOUSTIC_MODEL_FILES = set(ASR_MODEL_FILES)
# The SDK's toolchain settings (duo-buildroot-sdk-v2, buildroot-2024.02/configs/
# milkv-duo-musl-riscv64-sd_defconfig), with a path that need not exist for configuring.
SDK_TOOLCHAIN = """\
BR2_riscv=y
BR2_RISCV_64=y
BR2_TOOLCHAIN_EXTERNAL=y
BR2_TOOLCHAIN_EXTERNAL_CUSTOM=y
BR2_TOOLCHAIN_EXTERNAL_PATH="/nonexistent/riscv64-linux-musl-x86_64"
BR2_TOOLCHAIN_EXTERNAL_CUSTOM_PREFIX="riscv64-unknown-linux-musl"
BR2_TOOLCHAIN_EXTERNAL_GCC_10=y
BR2_TOOLCHAIN_EXTERNAL_HEADERS_5_10=y
BR2_TOOLCHAIN_EXTERNAL_CUSTOM_MUSL=y
BR2_TOOLCHAIN_EXTERNAL_CXX=y
BR2_TARGET_LDFLAGS="-march=rv64imafdcv0p7xthead -mcpu=c906fdv -mabi=lp64d -mcmodel=medany"
"""


def mk(pkg: str) -> str:
    return (PACKAGES / pkg / f"{pkg}.mk").read_text()


def mk_value(pkg: str, var: str) -> str:
    """A one-line (or backslash-continued) variable of a package's .mk, joined."""
    m = re.search(rf"^{var} [+:]?= ((?:.*\\\n)*.*)$", mk(pkg), re.M)
    assert m, f"{pkg}.mk sets no {var}"
    return " ".join(m.group(1).replace("\\\n", " ").split())


def fragment_lines() -> list[str]:
    return [ln for ln in FRAGMENT.read_text().splitlines() if ln.startswith("BR2_")]


def our_symbols() -> set[str]:
    return {
        m.group(1)
        for f in EXTERNAL.rglob("Config.in")
        for m in re.finditer(r"^config (BR2_\w+)$", f.read_text(), re.M)
    }


# --- from our own files ---------------------------------------------------------------------


def test_every_fragment_symbol_is_ours_or_a_known_upstream_one():
    ours = our_symbols()
    for line in fragment_lines():
        symbol = line.split("=", 1)[0]
        assert symbol in ours | UPSTREAM_SYMBOLS, f"{symbol} is defined nowhere we know"
    text = FRAGMENT.read_text()
    # arecord comes with aplay; Buildroot's espeak 1.48 installs nothing to staging
    assert "BR2_PACKAGE_ALSA_UTILS_ARECORD=" not in text
    assert "BR2_PACKAGE_ESPEAK=" not in text


def test_storyteller_links_only_libraries_installed_to_staging():
    deps = mk_value("duo-storyteller", "DUO_STORYTELLER_DEPENDENCIES").split()
    assert {"espeak-ng", "pocketsphinx", "alsa-lib"} <= set(deps)
    for dep in deps:
        if (PACKAGES / dep).is_dir():
            var = dep.upper().replace("-", "_")
            assert mk_value(dep, f"{var}_INSTALL_STAGING") == "YES", dep
    assert "TTS=espeak-ng" in mk("duo-storyteller")
    config = (PACKAGES / "duo-storyteller" / "Config.in").read_text()
    for symbol in ("BR2_PACKAGE_ESPEAK_NG", "BR2_PACKAGE_POCKETSPHINX", "BR2_PACKAGE_ALSA_LIB"):
        assert f"select {symbol}\n" in config


def test_compiler_flags_are_ones_the_vendor_gcc_knows():
    """The SDK's Xuantie GCC 10.2 knows -mcpu=c906fdv and rv64...v0p7xthead (its own
    BR2_TARGET_LDFLAGS), not gcc 15's -mtune=thead-c906 or xtheadvector."""
    for f in EXTERNAL.rglob("*"):
        if f.is_file():
            code = [ln for ln in f.read_text().splitlines() if not ln.lstrip().startswith("#")]
            for line in code:
                assert "thead-c906" not in line and "xtheadvector" not in line, f
    config = (PACKAGES / "duo-storyteller" / "Config.in").read_text()
    gcc10 = re.search(r'default "([^"]*)" if .*BR2_TOOLCHAIN_EXTERNAL_GCC_10', config)
    assert gcc10 and "-mcpu=c906fdv" in gcc10.group(1)


def test_pocketsphinx_installs_the_acoustic_model_only():
    # Buildroot passes -DBUILD_SHARED_LIBS itself, as the configuration says
    assert "BUILD_SHARED_LIBS" not in mk_value("pocketsphinx", "POCKETSPHINX_CONF_OPTS")
    config = (PACKAGES / "pocketsphinx" / "Config.in").read_text()
    assert "select BR2_HOST_CMAKE_AT_LEAST_3_25" in config  # cmake_minimum_required(3.25)
    files = set(mk_value("pocketsphinx", "POCKETSPHINX_MODEL_FILES").split())
    assert files == ACOUSTIC_MODEL_FILES
    assert "rm -rf $(TARGET_DIR)/usr/share/pocketsphinx/model" in mk("pocketsphinx")
    conf = (OVERLAY / "etc" / "storyteller.conf").read_text()
    assert re.search(r"^asr_model = /usr/share/pocketsphinx/model/en-us/en-us$", conf, re.M)


def test_pocketsphinx_comes_from_pypis_hashed_sdist_url():
    site = mk_value("pocketsphinx", "POCKETSPHINX_SITE")
    # PyPI's stable file URL: /packages/ + the file's blake2b-256 as 2/2/60 hex digits
    assert re.fullmatch(
        r"https://files\.pythonhosted\.org/packages/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}", site
    )
    hashes = (PACKAGES / "pocketsphinx" / "pocketsphinx.hash").read_text()
    version = mk_value("pocketsphinx", "POCKETSPHINX_VERSION")
    assert re.search(rf"^sha256  [0-9a-f]{{64}}  pocketsphinx-{version}\.tar\.gz$", hashes, re.M)
    assert re.search(r"^sha256  [0-9a-f]{64}  LICENSE$", hashes, re.M)


def test_espeak_ng_builds_its_data_with_a_host_package():
    text = mk("espeak-ng")
    assert "$(eval $(autotools-package))" in text
    assert "$(eval $(host-autotools-package))" in text
    assert "host-espeak-ng" in mk_value("espeak-ng", "ESPEAK_NG_DEPENDENCIES").split()
    assert {"phontab", "phondata", "phonindex", "intonations", "en_dict"} == set(
        mk_value("espeak-ng", "ESPEAK_NG_DATA_FILES").split()
    )
    # the target build names its targets: `make all` would run the target binary
    build = re.search(r"define ESPEAK_NG_BUILD_CMDS\n(.*?)\nendef", text, re.S).group(1)
    assert "src/libespeak-ng.la" in build and " all" not in build
    source = mk_value("espeak-ng", "ESPEAK_NG_SOURCE").replace(
        "$(ESPEAK_NG_VERSION)", mk_value("espeak-ng", "ESPEAK_NG_VERSION")
    )
    hashes = (PACKAGES / "espeak-ng" / "espeak-ng.hash").read_text()
    assert re.search(rf"^sha256  [0-9a-f]{{64}}  {re.escape(source)}$", hashes, re.M)


def test_config_in_help_text_fits_check_package_width():
    """check-package: help lines are a tab, two spaces and at most 62 characters."""
    for f in EXTERNAL.rglob("Config.in"):
        in_help = False
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip() == "help":
                in_help = True
            elif in_help and line and not line.startswith("\t  "):
                in_help = False
            elif in_help and line:
                assert len(line) - 3 <= 62 or line.strip().startswith("http"), f"{f}:{n}"


def test_kernel_fragment_per_duo_audio_route():
    for route in DUO_ROUTES:
        fragment = BOARD / f"linux-audio-{route}.fragment"
        lines = [ln for ln in fragment.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines, fragment
        for line in lines:
            assert re.fullmatch(r"CONFIG_[A-Z0-9_]+=(y|m|n|\d+|\".*\")", line), line
        assert "CONFIG_SND_PROC_FS=y" in lines
    usb = (BOARD / "linux-audio-usb.fragment").read_text().splitlines()
    assert {"CONFIG_SND_USB_AUDIO=y", "CONFIG_USB_DWC2_DUAL_ROLE=y"} <= set(usb)
    assert not (BOARD / "linux-audio-i2s-max98357a.fragment").exists()


def test_every_asound_conf_names_its_route():
    for conf in (OVERLAY / "etc").glob("asound.conf.*"):
        route = conf.name.removeprefix("asound.conf.")
        assert f"\n# audio route: {route}\n" in conf.read_text()


def run_post_build(tmp_path: Path, route: str) -> tuple[subprocess.CompletedProcess, Path]:
    target = tmp_path / "target"
    shutil.copytree(OVERLAY, target, symlinks=True)
    (target / "mnt" / "system" / "usb-ncm.sh").write_text("#!/bin/sh\n")
    (target / "mnt" / "system" / "usb.sh").symlink_to("usb-ncm.sh")
    payload = tmp_path / "payload"
    (payload / "etc").mkdir(parents=True)
    variant = OVERLAY / "etc" / f"asound.conf.{route}"
    if variant.exists():
        shutil.copy(variant, payload / "etc" / "asound.conf")
    else:  # a route we ship no configuration for (i2s-max98357a was removed)
        (payload / "etc" / "asound.conf").write_text(f"# audio route: {route}\n")
    r = subprocess.run(
        ["sh", str(POST_BUILD), str(target)],
        env={**os.environ, "DUO_PAYLOAD": str(payload)},
        capture_output=True,
        text=True,
    )
    return r, target


def test_post_build_switches_usb_to_host_mode_for_a_usb_sound_card(tmp_path):
    r, target = run_post_build(tmp_path, "usb")
    assert r.returncode == 0, r.stderr
    assert os.readlink(target / "mnt" / "system" / "usb.sh") == "usb-host-audio.sh"
    assert os.access(target / "mnt" / "system" / "usb-host-audio.sh", os.X_OK)
    assert (target / "etc" / "asound.conf").is_file()
    assert not list((target / "etc").glob("asound.conf.*"))


def test_post_build_keeps_the_usb_network_without_a_sound_card(tmp_path):
    r, target = run_post_build(tmp_path, "none")
    assert r.returncode == 0, r.stderr
    assert os.readlink(target / "mnt" / "system" / "usb.sh") == "usb-ncm.sh"
    assert not (target / "mnt" / "system" / "usb-host-audio.sh").exists()
    assert not list((target / "etc").glob("asound.conf.*"))


def test_post_build_refuses_a_route_without_a_card_on_the_duo(tmp_path):
    r, _ = run_post_build(tmp_path, "i2s-max98357a")
    assert r.returncode != 0
    assert "audio route 'i2s-max98357a' has no sound card on the Milk-V Duo" in r.stderr


def pick_device(sound_class: Path) -> str:
    """Runs S99storyteller's pick_device on a sysfs-like tree; returns 'ARGS|CARD'."""
    text = INIT_SCRIPT.read_text()
    start = text.index("SOUND_CLASS=")
    end = text.index("\n}\n", text.index("pick_device() {")) + 3
    script = text[start:end] + f"SOUND_CLASS={sound_class}\n"
    script += 'pick_device\necho "$DEVICE_ARGS|${STORYTELLER_CARD-}"\n'
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_sound_cards_are_found_in_sysfs(tmp_path):
    sound = tmp_path / "class" / "sound"
    sound.mkdir(parents=True)
    assert pick_device(sound) == "--device null|"
    loopback = tmp_path / "devices" / "platform" / "snd_aloop.0"
    usb = tmp_path / "devices" / "platform" / "4340000.usb" / "usb1" / "1-1" / "1-1:1.0"
    for i, device in enumerate((loopback, usb)):
        device.mkdir(parents=True)
        (sound / f"card{i}").mkdir()
        (sound / f"card{i}" / "device").symlink_to(device)
        (sound / f"pcmC{i}D0p").mkdir()
    (sound / "timer").mkdir()
    assert pick_device(sound) == "|1"  # the USB card, not the loopback
    shutil.rmtree(sound / "card1")
    assert pick_device(sound) == "|"  # a card, just not a USB one


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck")
def test_shell_scripts_pass_shellcheck():
    scripts = [POST_BUILD, INIT_SCRIPT, OVERLAY / "mnt" / "system" / "usb-host-audio.sh"]
    r = subprocess.run(["shellcheck", "-s", "sh", *map(str, scripts)], capture_output=True)
    assert r.returncode == 0, r.stdout.decode()


# --- against real Buildroot trees (DUO_BUILDROOT) -------------------------------------------

BUILDROOTS = [Path(p) for p in os.environ.get("DUO_BUILDROOT", "").split(os.pathsep) if p]


@pytest.fixture(params=BUILDROOTS or [None], ids=lambda p: p.name if p else "none")
def buildroot(request) -> Path:
    if request.param is None:
        pytest.skip("DUO_BUILDROOT names no Buildroot source tree")
    return request.param


def br_make(buildroot: Path, out: Path, *args: str) -> str:
    r = subprocess.run(
        ["make", "-s", f"O={out}", *args], cwd=buildroot, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


@pytest.fixture
def configured(buildroot: Path, tmp_path: Path) -> Path:
    """An output directory configured with the SDK's toolchain settings plus our fragment."""
    out = tmp_path / "out"
    out.mkdir()
    defconfig = out / "defconfig.in"
    defconfig.write_text(SDK_TOOLCHAIN + FRAGMENT.read_text())
    br_make(buildroot, out, f"BR2_EXTERNAL={EXTERNAL}", f"BR2_DEFCONFIG={defconfig}", "defconfig")
    br_make(buildroot, out, "olddefconfig")
    return out


def test_every_fragment_line_survives_olddefconfig(configured):
    config = set((configured / ".config").read_text().splitlines())
    lost = [line for line in fragment_lines() if line not in config]
    assert not lost, f"olddefconfig dropped {lost}"
    assert "BR2_HOST_CMAKE_AT_LEAST_3_25=y" in config


def test_every_library_the_storyteller_links_is_staged(buildroot, configured):
    names = ("ESPEAK_NG", "POCKETSPHINX", "ALSA_LIB")
    out = br_make(
        buildroot,
        configured,
        "printvars",
        "VARS=" + " ".join(f"{n}_INSTALL_STAGING" for n in names),
    )
    for name in names:
        assert f"{name}_INSTALL_STAGING=YES" in out.splitlines(), out


def test_check_package_is_clean(buildroot):
    pytest.importorskip("magic", reason="check-package needs python-magic")
    pytest.importorskip("flake8", reason="check-package needs flake8")
    files = [str(f) for f in EXTERNAL.rglob("*") if f.is_file()]
    r = subprocess.run(
        [sys.executable, "utils/check-package", "--br2-external", "-b", *files],
        cwd=buildroot,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "0 warnings generated" in r.stderr + r.stdout, r.stdout + r.stderr
