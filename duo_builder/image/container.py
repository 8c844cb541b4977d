"""The builder container, driven through the docker SDK (Docker, or Podman's Docker-
compatible socket via DOCKER_HOST; duo_builder.image.podman starts a private one).

- The Dockerfile's base is Debian bookworm made by mmdebstrap from Debian's mirror and
  imported (no registry; the tarball stays in build/container/: delete it to refresh); its
  two stages are built on demand, tagged by a hash of the Dockerfile, the stage and the
  base's id, so a tag that exists is reused without asking the engine to build anything.
- offline recipe (qemu-virt-64m): `run_offline_build` runs `python3 -m
  duo_builder.image.container` (pipeline.main) in the `offline` stage with the repository
  bind-mounted read-write at its own absolute path, so build/ (toolchain chroot, kernel and
  rootfs caches, engine objects) is shared with the host and a warm build stays fast; the
  output directory is mounted the same way.
  Inside, pipeline.build runs the very steps a host build runs and its manifest records the
  builder image (`built_in`).
- vendor SDK (duo-64m): `run_sdk_build` stages the payload and runs image/bases/sdk_build.py
  in the `sdk` stage, the repository mounted read-only, build/sdk-dl/ as Buildroot's
  download directory and the host's proxy variables passed in.
Every run streams its output to a log file under build/container/ and is removed after.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from duo_builder.errors import BuildError, run
from duo_builder.fsutil import atomic_writer, exclusive_lock, sha256_file
from duo_builder.image.manifest import ENV_IMAGE, source_date_epoch
from duo_builder.image.payload import Payload
from duo_builder.image.recipe import Recipe
from duo_builder.paths import BUILD, REPO, cache_dir

BASE_IMAGE = "localhost/duo-builder-base:bookworm"
DOCKERFILE = REPO / "Dockerfile"
LOGS = BUILD / "container"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Passed from the host into the offline build when set (the epoch is always passed)
PASS_ENV = ("http_proxy", "https_proxy", "no_proxy")
# git in the container reads the manifest's revision from a repository that may belong to
# another uid than the container's root: trust it (environment = command-line config)
GIT_TRUSTS_THE_MOUNT = {
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
}
# The offline build chroots into build/toolchains/ (unshare --mount, mount, chroot: see
# duo_builder.build.toolchain): CAP_SYS_ADMIN is the one capability it needs beyond the engines'
# defaults, also when debootstrap makes that chroot on a cold cache (tried with Podman 4.3:
# toolchain, kernel, rootfs and image from nothing). Not --privileged.
OFFLINE_CAPS = ["SYS_ADMIN"]
# Docker on AppArmor hosts (Ubuntu) confines containers with docker-default, which forbids
# mount even with CAP_SYS_ADMIN; without AppArmor (here) the option is accepted and moot.
OFFLINE_SECURITY = ["apparmor=unconfined"]


class ContainerError(BuildError):
    """The container engine failed; the message says how and where the log is."""


@dataclass(frozen=True)
class BuilderImage:
    tag: str
    id: str  # the engine's content-addressed image id (sha256:...)
    stage: str
    dockerfile_sha256: str
    base_id: str
    engine: str  # e.g. "Podman Engine 4.3.1"


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


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """The SDK's and the HTTP layer's exceptions, as one ContainerError sentence."""
    import docker.errors
    import requests

    try:
        yield
    except (docker.errors.DockerException, requests.RequestException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ContainerError(f"the container engine failed: {first}") from None


def _client() -> Any:  # docker.DockerClient, imported lazily
    import docker

    try:
        return docker.from_env(timeout=600)
    except Exception as e:  # DockerException and friends
        raise ContainerError(f"cannot reach the container engine: {e}") from None


def _ensure_base(client: Any) -> str:
    """The Dockerfile's base: Debian bookworm minbase made by mmdebstrap (no registry);
    returns its image id."""
    try:
        return client.images.get(BASE_IMAGE).id
    except Exception:  # docker.errors.ImageNotFound (or an engine's variant of it)
        pass
    tarball = LOGS / "bookworm-minbase.tar"
    if not tarball.exists():
        _make_base_tarball(tarball)
    with open(tarball, "rb") as f:  # streamed; the repository may carry the tag (API docs)
        client.api.import_image_from_data(f, repository=BASE_IMAGE)
    return client.images.get(BASE_IMAGE).id


def _make_base_tarball(tarball: Path) -> None:
    from duo_builder.build.hostdeps import ensure_commands

    ensure_commands({"mmdebstrap": "mmdebstrap"}, "making the builder's base image")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(f".{tarball.name}.tmp")
    print(f"container: making {BASE_IMAGE} (mmdebstrap bookworm minbase, ~30 s)", flush=True)
    try:
        run(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "bookworm", tmp,
             *MIRRORS],
            what="mmdebstrap of the builder's base image",
            error=ContainerError,
            env={"SOURCE_DATE_EPOCH": "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    except ContainerError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, tarball)


def _context() -> io.BytesIO:
    """The build context: the Dockerfile alone (it copies nothing in), not the repository."""
    data = DOCKERFILE.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def builder_image(client: Any, stage: str) -> BuilderImage:
    """The Dockerfile's `stage` ("offline" or "sdk"), built unless its tag exists already
    (one builder at a time: concurrent callers wait, then find it)."""
    with exclusive_lock(LOGS / ".lock"):
        base_id = _ensure_base(client)
        dockerfile_sha = sha256_file(DOCKERFILE)
        key = hashlib.sha256(f"{dockerfile_sha}\0{base_id}\0{stage}".encode()).hexdigest()[:12]
        tag = f"localhost/duo-storyteller-builder:{stage}-{key}"
        try:
            image = client.images.get(tag)
        except Exception:  # not built yet
            image = _build_stage(client, stage, tag)
    version = client.version()
    engine = f"{_engine_name(version)} {version.get('Version', '?')}"
    return BuilderImage(tag, image.id, stage, dockerfile_sha, base_id, engine)


def _engine_name(version: dict[str, Any]) -> str:
    names = [c.get("Name", "") for c in version.get("Components", [])]
    return next((n for n in names if "Engine" in n), "Docker Engine")


def _build_stage(client: Any, stage: str, tag: str) -> Any:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"builder-{stage}.log"
    print(f"container: building the builder image {tag} (once; log: {log})", flush=True)
    start = time.monotonic()
    error = ""
    bar = tqdm(desc=f"builder image ({stage})", unit=" lines", mininterval=1)
    with open(log, "w") as f, bar:
        stream = client.api.build(
            fileobj=_context(), custom_context=True, dockerfile="Dockerfile", tag=tag,
            target=stage, rm=True, forcerm=True, decode=True,
            buildargs={"BASE_IMAGE": BASE_IMAGE},
        )  # fmt: skip
        for chunk in stream:
            text = chunk.get("stream", "")
            if "error" in chunk:
                error = str(chunk["error"]).strip()
                text += error + "\n"
            f.write(text)
            bar.update(text.count("\n"))
    try:
        image = client.images.get(tag)
    except Exception:
        image = None
    if error or image is None:
        raise ContainerError(
            f"building the builder image ({stage} stage of {DOCKERFILE.name}) failed after "
            f"{time.monotonic() - start:.0f} s: {(error or 'no image').splitlines()[-1]}; "
            f"see {log}"
        )
    return image


def _run_logged(
    client: Any,
    image: BuilderImage,
    command: Sequence[str],
    *,
    log: Path,
    what: str,
    echo: bool,
    **run: Any,
) -> None:
    """Run `command` in the image, its output into `log` (and to stderr when echo, else a
    tqdm line count); the container is removed afterwards, whatever happens."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    container = client.containers.run(image.id, list(command), detach=True, **run)
    try:
        with open(log, "wb") as f, tqdm(desc=what, unit=" lines", disable=echo) as bar:
            for chunk in container.logs(stream=True, follow=True):
                f.write(chunk)
                if echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                bar.update(chunk.count(b"\n"))
        status = container.wait().get("StatusCode")
    finally:
        try:
            container.remove(force=True)
        except Exception as e:  # already gone, or the engine went away
            print(f"container: could not remove {container.id[:12]}: {e}", file=sys.stderr)
    if status != 0:
        errors = [
            ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("error: ")
        ]
        why = f": {errors[-1].removeprefix('error: ')}" if errors else ""
        raise ContainerError(
            f"{what} failed after {time.monotonic() - start:.0f} s (exit {status}){why}; see {log}"
        )


# --- the offline recipe ---------------------------------------------------------------------


def run_offline_build(r: Recipe, out: Path) -> Path:
    """Build a `debian` recipe in the offline stage; returns the manifest it wrote in `out`."""
    with _engine_errors():
        return _run_offline_build(r, out, source_date_epoch())


def _run_offline_build(r: Recipe, out: Path, epoch: int) -> Path:
    client = _client()
    image = builder_image(client, "offline")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    downloads = cache_dir().resolve()  # the verified download cache (models by URL)
    downloads.mkdir(parents=True, exist_ok=True)
    volumes = {str(REPO): {"bind": str(REPO), "mode": "rw"}}
    for extra in (out, downloads):
        if extra != REPO and REPO not in extra.parents:
            volumes[str(extra)] = {"bind": str(extra), "mode": "rw"}
    env = {
        ENV_IMAGE: json.dumps(asdict(image), sort_keys=True),
        # the host's epoch: the image must not depend on git working inside the container
        "SOURCE_DATE_EPOCH": str(epoch),
        "DUO_CACHE": str(downloads),
        **GIT_TRUSTS_THE_MOUNT,
    }
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    print(f"{r.name}: building in the container {image.tag} ({image.engine})", flush=True)
    manifest = out / f"{r.name}.manifest.json"
    _run_logged(
        client, image,
        ["python3", "-m", "duo_builder.image.container",
         "--recipe", str(r.source), "--out", str(out)],
        log=LOGS / f"{r.name}.log", what=f"the {r.name} build in the container", echo=True,
        working_dir=str(REPO), volumes=volumes, environment=env,
        cap_add=OFFLINE_CAPS, security_opt=OFFLINE_SECURITY,
    )  # fmt: skip
    built = json.loads(manifest.read_text()).get("built_in", {}) if manifest.exists() else {}
    if built.get("image_id") != image.id:
        raise ContainerError(f"the container build did not write {manifest}; see its log")
    return manifest


# --- the vendor SDK -------------------------------------------------------------------------

# Buildroot's downloads (BR2_DL_DIR), shared by every SDK recipe and kept between builds:
# outside the SDK checkout, which `git clean` resets on every run
SDK_DOWNLOADS = BUILD / "sdk-dl"
# The SDK's build fetches with git, wget and curl: each reads one case or the other
SDK_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def sdk_environment(host: Mapping[str, str]) -> dict[str, str]:
    """The SDK container's environment: the host's proxy settings, in both cases."""
    return {k: host[k] for k in SDK_PASS_ENV if host.get(k)}


def run_sdk_build(r: Recipe, files: Payload, out: Path) -> tuple[Path, BuilderImage]:
    """The vendor SDK build in the sdk stage, with `files` staged for Buildroot's post-build
    script; returns the image (in `out`) and the builder."""
    with _engine_errors():
        return _run_sdk_build(r, files, out)


def _run_sdk_build(r: Recipe, files: Payload, out: Path) -> tuple[Path, BuilderImage]:
    client = _client()
    image = builder_image(client, "sdk")
    work = BUILD / "sdk" / r.name
    SDK_DOWNLOADS.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "payload", ignore_errors=True)
    files.stage(work / "payload")
    command = [
        "python3", "/repo/duo_builder/image/bases/sdk_build.py", "--repo", r.base.repo,
        "--commit", r.base.commit, "--board", r.base.board, "--ion-mb", str(r.ion_mb),
        "--audio", r.audio, "--recipe", r.name, "--external", "/repo/buildroot-external",
        "--payload", "/work/payload", "--work", "/work", "--dl", "/dl", "--out", "/work/out",
    ]  # fmt: skip
    log = work / "build.log"
    print(f"{r.name}: SDK build in the container {image.tag}; log: {log}", flush=True)
    _run_logged(
        client, image, command, log=log, what="SDK build", echo=False,
        volumes={str(REPO): {"bind": "/repo", "mode": "ro"},
                 str(work): {"bind": "/work", "mode": "rw"},
                 str(SDK_DOWNLOADS): {"bind": "/dl", "mode": "rw"}},
        environment=sdk_environment(os.environ),
    )  # fmt: skip
    image_file = out / f"{r.name}.img"
    with open(work / "out" / f"{r.name}.img", "rb") as src, atomic_writer(image_file) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return image_file, image


if __name__ == "__main__":
    # The entry point the offline stage runs. As __main__ this file is not the library's
    # duo_builder.image.container (which pipeline imports), so this import makes no cycle.
    from duo_builder.image.pipeline import main

    sys.exit(main())
