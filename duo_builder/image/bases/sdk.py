"""The sdk base (duo-64m): the vendor SDK's Buildroot, built in the Dockerfile's `sdk` stage.

The payload is staged as a directory laid out like the target; Buildroot's post-build
script (buildroot-external/board/milkv-duo/post-build.sh) copies it over the target, so
our static llama2 and storyteller (gcc 15's XTheadVector kernels, with their own alsa-lib,
espeak-ng and pocketsphinx and data under /usr/share/storyteller) replace the Buildroot
packages' builds, whose vendor gcc knows no __riscv_ vector intrinsics: the robot runs the
fast kernels. A declared file the payload lacks stays the Buildroot package's build.
"""

import os
import socket
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from duo_builder.build import toolchain
from duo_builder.errors import BuildError
from duo_builder.fsutil import sha256_file
from duo_builder.image import container
from duo_builder.image.manifest import Made
from duo_builder.image.payload import Payload
from duo_builder.image.recipe import Recipe

OFFLINE_RECIPE = "qemu-virt-64m"
# Where SDK builds fetch from; checked before anything starts.
SDK_HOSTS = ("github.com",)


class SdkError(BuildError):
    """An SDK build cannot start here; the message says what is missing."""


def missing_for_sdk() -> list[str]:
    """What an SDK build lacks here: a container engine, network access (through the proxy
    when one is set), and the sid chroot that compiles the c906 llama2 (or what makes it)."""
    missing = []
    problem = container.engine_problem()
    if problem:
        missing.append(f"a Docker or Podman engine ({problem})")
    proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    if proxy:  # the host reaches GitHub through it: check that it answers
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        targets = [(f"the proxy {proxy}", parts.hostname or "", parts.port or 80)]
    else:
        targets = [(host, host, 443) for host in SDK_HOSTS]
    for what, host, port in targets:
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as e:
            missing.append(f"network access to {what} ({e.strerror or e})")
    missing += missing_for_chroot()
    return missing


def missing_for_chroot() -> list[str]:
    """The payload's c906 llama2 is compiled in the sid toolchain chroot: made already, or
    makeable here (root and debootstrap)."""
    if toolchain.ROOT.is_dir():
        return []
    lacking = [what for ok, what in ((os.geteuid() == 0, "root"),
               (Path(toolchain.DEBOOTSTRAP).exists(), "debootstrap")) if not ok]  # fmt: skip
    if not lacking:
        return []
    return [f"the sid toolchain chroot for the c906 llama2 ({toolchain.ROOT} is not made yet "
            f"and making it needs {' and '.join(lacking)})"]  # fmt: skip


def check(r: Recipe) -> None:
    """Refuse at once (before the payload is built) when the SDK cannot be built here."""
    missing = missing_for_sdk()
    if missing:
        raise SdkError(
            f"the {r.name} recipe builds the vendor SDK ({r.base.repo} at {r.base.commit[:12]}) "
            f"in a container and needs {' and '.join(missing)}; "
            f"the {OFFLINE_RECIPE} recipe builds offline: invoke image --recipe {OFFLINE_RECIPE}"
        )


def make(r: Recipe, files: Payload, out: Path, work: Path) -> Made:
    image, builder = container.run_sdk_build(r, files, out)
    extra = {"files": files.manifest()}
    if files.absent():
        extra["payload_left_out"] = files.absent()
    return Made(image, sha256_file(image), extra, builder=asdict(builder))
