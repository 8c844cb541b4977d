"""The builder container, driven through the docker SDK (Docker, or Podman's Docker-
compatible socket via DOCKER_HOST): build the Dockerfile's image, run the vendor SDK build
in it with the repository mounted read-only, stream its log to a file, copy the image out.
"""

import hashlib
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from .fsutil import atomic_writer
from .paths import BUILD, REPO
from .recipe import Recipe

BASE_IMAGE = "localhost/duo-builder-base:bookworm"


class ContainerError(Exception):
    """The container engine failed; the message says how and where the log is."""


def engine_problem() -> str | None:
    """None when a Docker-compatible engine answers within 3 s, else why not."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # the SDK raises many kinds; any means "no usable engine"
        host = os.environ.get("DOCKER_HOST")
        if host:
            return f"none answers at DOCKER_HOST={host}"
        return "none answers at /var/run/docker.sock; set DOCKER_HOST to a Podman socket"
    return None


def _ensure_base(client: "object") -> None:
    """The Dockerfile's base: Debian bookworm minbase made by mmdebstrap (no registry)."""
    import subprocess

    from .hostdeps import ensure_commands

    try:
        client.images.get(BASE_IMAGE)  # type: ignore[attr-defined]
        return
    except Exception:
        pass
    ensure_commands({"mmdebstrap": "mmdebstrap"}, "making the builder's base image")
    tarball = BUILD / "container" / "bookworm-minbase.tar"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "bookworm",
            str(tarball),
            "http://deb.debian.org/debian",
        ],
        check=True,
        env={"SOURCE_DATE_EPOCH": "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    with open(tarball, "rb") as f:
        client.api.import_image_from_data(f.read(), repository=BASE_IMAGE)  # type: ignore[attr-defined]


def run_sdk_build(r: Recipe, *, model: Path, tokenizer: Path, config_text: str, out: Path) -> Path:
    import docker

    client = docker.from_env()
    _ensure_base(client)
    tag = (
        "duo-storyteller-builder:"
        + hashlib.sha256((REPO / "Dockerfile").read_bytes()).hexdigest()[:12]
    )
    print(f"{r.name}: building the builder image {tag}", flush=True)
    client.images.build(
        path=str(REPO),
        dockerfile="Dockerfile",
        tag=tag,
        rm=True,
        buildargs={"BASE_IMAGE": BASE_IMAGE},
    )
    work = BUILD / "sdk" / r.name
    payload = work / "payload"
    shutil.rmtree(payload, ignore_errors=True)
    files = {
        "usr/share/storyteller/model.bin": model.read_bytes(),
        "usr/share/storyteller/tokenizer.bin": tokenizer.read_bytes(),
        "etc/storyteller.conf": config_text.encode(),
        "etc/asound.conf": (REPO / "overlay" / "etc" / f"asound.conf.{r.audio}").read_bytes(),
    }
    for rel, data in files.items():
        with atomic_writer(payload / rel) as f:
            f.write(data)
    command = [
        "python3", "/repo/duo_builder/sdk_build.py", "--repo", r.base.repo,
        "--commit", r.base.commit, "--board", r.base.board, "--ion-mb", str(r.ion_mb),
        "--recipe", r.name, "--external", "/repo/buildroot-external",
        "--payload", "/work/payload", "--work", "/work", "--out", "/work/out",
    ]  # fmt: skip
    log = work / "build.log"
    print(f"{r.name}: SDK build in the container; log: {log}", flush=True)
    container = client.containers.run(
        tag, command, detach=True,
        volumes={str(REPO): {"bind": "/repo", "mode": "ro"},
                 str(work): {"bind": "/work", "mode": "rw"}},
    )  # fmt: skip
    start = time.monotonic()
    with open(log, "wb") as f, tqdm(desc="SDK build", unit=" lines") as bar:
        for chunk in container.logs(stream=True, follow=True):
            f.write(chunk)
            bar.update(chunk.count(b"\n"))
    status = container.wait()
    container.remove()
    if status.get("StatusCode") != 0:
        raise ContainerError(
            f"the SDK build failed after {time.monotonic() - start:.0f} s "
            f"(exit {status.get('StatusCode')}); see {log}"
        )
    image = out / f"{r.name}.img"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "out" / f"{r.name}.img", image)
    return image
