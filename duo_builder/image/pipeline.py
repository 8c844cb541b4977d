"""`invoke image`: a recipe in, a flashable (or bootable) image and its manifest out.

out/<recipe>.img, out/<recipe>.img.sha256 and out/<recipe>.manifest.json (every input
with its version/URL/sha256, every file we added with its sha256, the memory and audio
settings, the builder's own git revision). What each base needs:
- debian (qemu-virt-64m): Debian's mirror only. Built in the Dockerfile's `offline` stage
  when a Docker (or Podman) engine answers, else on this host by the same steps without
  the container (saying so); the manifest's `built_in` says which, and which image.
- release-image (duo-64m-remaster): the pinned official image, downloaded and remastered.
- sdk (duo-64m): the vendor SDK built in the Dockerfile's container: a Docker (or Podman)
  engine and the network; without them it stops at once and says which recipe works.
"""

import json
import os
import platform
import socket
import subprocess
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from duo_builder.build import engine
from duo_builder.fsutil import atomic_writer, sha256_file
from duo_builder.image import recipe
from duo_builder.model.convert import convert
from duo_builder.model.download import fetch_model
from duo_builder.paths import BUILD, REPO

OUT = REPO / "out"
OFFLINE_RECIPE = "qemu-virt-64m"
# Where SDK builds fetch from; checked before anything starts.
SDK_HOSTS = ("github.com",)


class ImageError(Exception):
    """The image could not be built; the message says why and what to do."""


# auto: in the container when an engine answers (debian recipes, else on this host);
# container: there or fail; here: in this process (on the host, or already in the container)
Where = Literal["auto", "container", "here"]


@dataclass(frozen=True)
class Built:
    image: Path
    sha256: str
    manifest: Path
    kernel: Path | None = None  # for booting qemu-virt images


def build(name: str, *, out_dir: Path = OUT, where: Where = "auto") -> Built:
    """Build recipe `name` into out_dir; `where` matters for the offline (debian) recipes
    only: the SDK always builds in the container, the remaster always on this host."""
    r = recipe.load(name)
    if r.base.kind == "debian":
        return _build_debian(r, Path(out_dir), where)
    if r.base.kind == "release-image":
        return _build_remaster(r, Path(out_dir))
    return _build_sdk(r, Path(out_dir))


# --- inputs -----------------------------------------------------------------------------


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


def _verified_input(path: str, sha256: str, url: str, what: str) -> Path:
    """A bundled file (checked) or a download into the verified cache."""
    if url:
        return fetch_model(sha256=sha256, url=url, name=Path(path).name)
    local = REPO / path
    if not local.exists():
        raise ImageError(f"{what} {path} does not exist in the repository")
    got = sha256_file(local)
    if got != sha256:
        raise ImageError(f"{what} {path} has sha256 {got}, the recipe pins {sha256}")
    return local


def model_for_image(r: recipe.Recipe, work: Path) -> tuple[Path, Path]:
    """(model in the recipe's format, tokenizer), both verified."""
    m = r.model
    model = _verified_input(m.path, m.sha256, m.url, "model")
    tokenizer = _verified_input(m.tokenizer, m.tokenizer_sha256, "", "tokenizer")
    if m.format != "v0":  # recipes name fp32 sources; the image may carry another format
        model = convert(model, work / f"model-{m.format}.bin", m.format)
    return model, tokenizer


def storyteller_conf(r: recipe.Recipe) -> str:
    template = (REPO / "overlay" / "etc" / "storyteller.conf").read_text()
    settings = {"voice": r.voice, "speed": str(r.speed), "pitch": str(r.pitch)}
    lines = []
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key} = {settings[key]}" if "=" in line and key in settings else line)
    return "\n".join(lines) + "\n"


def autostart_defaults(r: recipe.Recipe) -> bytes:
    """/etc/default/storyteller: the recipe's boot behaviour, read by S99storyteller."""
    prompt = r.prompt.replace("'", "")  # a shell fragment: single-quoted, so no quotes inside
    return f"STORYTELLER_MODE={r.autostart}\nSTORYTELLER_PROMPT='{prompt}'\n".encode()


def built_in(builder: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where the build ran: this host, or a builder container (its image, for the manifest).
    `builder` is container.BuilderImage's fields; default: the container we are in, if any."""
    from duo_builder.image.container import in_container

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


def _manifest(
    r: recipe.Recipe,
    image: Path,
    digest: str,
    extra: dict[str, Any],
    builder: dict[str, Any] | None = None,
) -> Path:
    data = {
        "recipe": r.name,
        "recipe_sha256": sha256_file(r.source),
        "builder": builder_revision(),
        "built_in": built_in(builder),
        "source_date_epoch": source_date_epoch(),
        "image": {"file": image.name, "sha256": digest, "size": image.stat().st_size},
        "memory": {"ion_mb": r.ion_mb},
        "audio": r.audio,
        "voice": {"name": r.voice, "speed": r.speed, "pitch": r.pitch},
        "engine": {"target": r.engine_target, "cflags": r.engine_cflags},
        "model": vars(r.model),
        "base": vars(r.base),
        **extra,
    }
    path = image.with_name(f"{r.name}.manifest.json")
    with atomic_writer(path) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    with atomic_writer(image.with_name(image.name + ".sha256")) as f:
        f.write(f"{digest}  {image.name}\n".encode())
    return path


# --- debian: the offline qemu machine ---------------------------------------------------


def _build_debian(r: recipe.Recipe, out: Path, where: Where) -> Built:
    from duo_builder.image.container import engine_problem, in_container

    if where == "here" or in_container():
        if where == "here" and not in_container():
            print(f"{r.name}: building on this host, without the container", flush=True)
        return _build_debian_here(r, out)
    problem = engine_problem()
    if problem is None:
        return _build_debian_in_container(r, out)
    if where == "container":
        raise ImageError(
            f"building {r.name} in the container needs a Docker or Podman engine ({problem})"
        )
    print(
        f"{r.name}: no container engine ({problem}); building on this host by the same "
        "steps, without the container",
        flush=True,
    )
    return _build_debian_here(r, out)


def _build_debian_in_container(r: recipe.Recipe, out: Path) -> Built:
    """The same build in the Dockerfile's offline stage; the image lands in `out`."""
    from duo_builder.image.container import run_offline_build

    manifest = run_offline_build(r, out)
    image = manifest.with_name(f"{r.name}.img")
    digest = sha256_file(image)
    recorded = json.loads(manifest.read_text())["image"]["sha256"]
    if digest != recorded:
        raise ImageError(f"{image} has sha256 {digest}, but its manifest says {recorded}")
    return Built(image, digest, manifest, manifest.with_name("Image"))


def _build_debian_here(r: recipe.Recipe, out: Path) -> Built:
    from duo_builder.build import toolchain
    from duo_builder.image.bases import debian as qemu_image

    llama2 = engine.build(r.engine_target)
    storyteller = engine.binary(r.engine_target, "storyteller")
    work = BUILD / "image" / r.name
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = model_for_image(r, work)
    kernel = qemu_image.build_kernel(out)
    result = qemu_image.build_image(
        llama2=llama2,
        storyteller=storyteller if storyteller.exists() else None,
        model=model,
        tokenizer=tokenizer,
        story_dict=REPO / "engine" / "storyteller" / "story.dict",
        config_text=storyteller_conf(r),
        init_script=REPO / "overlay" / "etc" / "init.d" / "S99storyteller",
        asound_conf=qemu_image.asound_conf(r.audio),
        out=out / f"{r.name}.img",
        source_date_epoch=source_date_epoch(),
        size_mb=r.image_size_mb,
        extra_files={"/etc/default/storyteller": autostart_defaults(r)},
    )
    manifest = _manifest(
        r,
        result.path,
        result.sha256,
        {
            "kernel": {
                "file": kernel.name,
                "sha256": sha256_file(kernel),
                "source": qemu_image.KERNEL_SOURCE_PKG,
            },
            "toolchain": toolchain.manifest(),
            "packages": result.packages,
            "files": [vars(f) for f in result.files],
        },
    )
    return Built(result.path, result.sha256, manifest, kernel)


# --- release-image: the official image, remastered ---------------------------------------


def _build_remaster(r: recipe.Recipe, out: Path) -> Built:
    from duo_builder.image.bases.remaster import remaster

    where = f"recipes/{r.name}.yaml"
    if not r.base.sha256:
        raise ImageError(
            f"{where}: base: sha256 is not pinned, so the release image cannot be verified: "
            f"download {r.base.url} once, check it, and set base.sha256 to its sha256sum"
        )
    archive = fetch_model(sha256=r.base.sha256, url=r.base.url)
    work = BUILD / "image" / r.name
    work.mkdir(parents=True, exist_ok=True)
    base_img = _unpacked_image(archive, work)
    llama2 = engine.build(r.engine_target)
    model, tokenizer = model_for_image(r, work)
    etc = REPO / "overlay" / "etc"
    payload: dict[str, Path | bytes] = {
        "/usr/bin/llama2": llama2,
        "/usr/share/storyteller/model.bin": model,
        "/usr/share/storyteller/tokenizer.bin": tokenizer,
        "/usr/share/storyteller/story.dict": REPO / "engine" / "storyteller" / "story.dict",
        "/etc/storyteller.conf": storyteller_conf(r).encode(),
        "/etc/asound.conf": etc / f"asound.conf.{r.audio}",
        "/etc/init.d/S99storyteller": etc / "init.d" / "S99storyteller",
        "/etc/default/storyteller": autostart_defaults(r),
    }
    image = out / f"{r.name}.img"
    report = remaster(
        base_img, image, payload, ion_size=r.ion_mb << 20, source_date_epoch=source_date_epoch()
    )
    manifest = _manifest(r, image, report.sha256, {"remaster": report.summary()})
    return Built(image, report.sha256, manifest)


def _unpacked_image(archive: Path, work: Path) -> Path:
    if not zipfile.is_zipfile(archive):
        return archive
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(".img")]
        if len(names) != 1:
            raise ImageError(f"{archive}: expected one .img in the release archive, got {names}")
        target = work / Path(names[0]).name
        if not target.exists():
            with z.open(names[0]) as src, atomic_writer(target) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return target


# --- sdk: the vendor SDK in a container ---------------------------------------------------


def missing_for_sdk() -> list[str]:
    """What an SDK build lacks here: a container engine, network access."""
    from duo_builder.image.container import engine_problem

    missing = []
    problem = engine_problem()
    if problem:
        missing.append(f"a Docker or Podman engine ({problem})")
    for host in SDK_HOSTS:
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError as e:
            missing.append(f"network access to {host} ({e.strerror or e})")
    return missing


def _build_sdk(r: recipe.Recipe, out: Path) -> Built:
    missing = missing_for_sdk()
    if missing:
        raise ImageError(
            f"the {r.name} recipe builds the vendor SDK ({r.base.repo} at {r.base.commit[:12]}) "
            f"in a container and needs {' and '.join(missing)}; "
            f"the {OFFLINE_RECIPE} recipe builds offline: invoke image --recipe {OFFLINE_RECIPE}"
        )
    from duo_builder.image.container import run_sdk_build

    with tempfile.TemporaryDirectory(prefix="payload-", dir=BUILD) as tmp:
        model, tokenizer = model_for_image(r, Path(tmp))
        image, builder = run_sdk_build(
            r, model=model, tokenizer=tokenizer, config_text=storyteller_conf(r), out=out
        )
    digest = sha256_file(image)
    return Built(image, digest, _manifest(r, image, digest, {}, asdict(builder)))
