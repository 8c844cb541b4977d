"""The last stage: out/<recipe>.manifest.json and out/<recipe>.img.sha256.

The manifest names every input (recipe, model, base, engine target), the builder's own
git revision, where the build ran (`built_in`: this host, or which builder container) and
whatever the base adds (kernel, packages, the payload's files with their sha256).
"""

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duo_builder.build import payload_libs
from duo_builder.fsutil import atomic_writer, sha256_file
from duo_builder.image import recipe
from duo_builder.paths import REPO

# Set inside the builder container: its image's identity, as JSON (container.py sets it)
ENV_IMAGE = "DUO_BUILDER_CONTAINER"


@dataclass(frozen=True)
class Made:
    """What a base made of the payload: the image and the manifest entries it adds."""

    image: Path
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)
    kernel: Path | None = None  # for booting qemu-virt images
    builder: dict[str, Any] | None = None  # the container it was built in, if not ours


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH, else the builder's last commit time: the same tree, the same image."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    r = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True
    )
    return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else 0


def builder_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def in_container() -> dict[str, Any] | None:
    """The builder image we run in (set by container.run_offline_build), or None on the host."""
    raw = os.environ.get(ENV_IMAGE)
    return json.loads(raw) if raw else None


def built_in(builder: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where the build ran: this host, or a builder container (its image, for the manifest).
    `builder` is container.BuilderImage's fields; default: the container we are in, if any."""
    builder = builder or in_container()
    if not builder:
        return {"kind": "host", "os": _os_release(), "machine": platform.machine()}
    return {  # the base image (Debian bookworm, see container.py) says the OS
        "kind": "container",
        "engine": builder["engine"],
        "image": builder["tag"],
        "image_id": builder["id"],
        "stage": builder["stage"],
        "dockerfile_sha256": builder["dockerfile_sha256"],
        "base_image_id": builder["base_id"],
    }


def _os_release() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        return ""


def write(r: recipe.Recipe, made: Made) -> Path:
    """out/<recipe>.manifest.json beside the image, and the image's .sha256 line."""
    image = made.image
    data = {
        "recipe": r.name,
        "board": r.board,  # `invoke flash` refuses an image made for another board
        "recipe_sha256": sha256_file(r.source),
        "builder": builder_revision(),
        "built_in": built_in(made.builder),
        "source_date_epoch": source_date_epoch(),
        "image": {"file": image.name, "sha256": made.sha256, "size": image.stat().st_size},
        "memory": {"ion_mb": r.ion_mb},
        "audio": r.audio,
        "voice": {"name": r.voice, "speed": r.speed, "pitch": r.pitch},
        "engine": {"target": r.engine_target, "cflags": r.engine_cflags},
        "model": vars(r.model),
        "base": vars(r.base),
        "payload_sources": payload_libs.recorded(),
        **made.extra,
    }
    path = image.with_name(f"{r.name}.manifest.json")
    with atomic_writer(path) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    with atomic_writer(image.with_name(image.name + ".sha256")) as f:
        f.write(f"{made.sha256}  {image.name}\n".encode())
    return path
