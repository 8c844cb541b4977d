"""`invoke image`: a recipe in, a flashable (or bootable) image and its manifest out.

The stages, in order (pi-gen's idea: each named, each in its own place):
  1. recipe    recipes/<name>.yaml, validated                      image/recipe.py
  2. payload   what every image holds: engine, model, config, ...   image/payload.py
  3. base      what the image is made of, by base.kind              image/bases/
  4. image     the base and the payload, as out/<recipe>.img        image/bases/<kind>.py
  5. manifest  out/<recipe>.manifest.json and .img.sha256           image/manifest.py
The manifest names every input with its version/URL/sha256, every file we added with its
sha256, the memory and audio settings and the builder's own git revision. The bases:
- debian (qemu-virt-64m): Debian's mirror only. Built in the Dockerfile's `offline` stage
  when a Docker (or Podman) engine answers (the whole pipeline runs there, the same
  steps), else on this host, saying so; the manifest's `built_in` says which.
- release-image (duo-64m-remaster): the pinned official image, downloaded and remastered.
- sdk (duo-64m): the vendor SDK built in the Dockerfile's container: a Docker (or Podman)
  engine and the network; without them it stops at once and says which recipe works.
"""

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from duo_builder.errors import BuildError
from duo_builder.fsutil import free_bytes, is_disk_full, sha256_file
from duo_builder.image import container, manifest, payload, recipe
from duo_builder.image.bases import BASES
from duo_builder.paths import BUILD, REPO

OUT = REPO / "out"


class ImageError(BuildError):
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
    only: the SDK always builds in its container, the remaster always on this host."""
    r = recipe.load(name)  # 1. recipe
    out = Path(out_dir)
    if r.base.kind == "debian" and _in_the_container(r, where):
        return _built_in_container(r, out)
    return build_here(r, out)


def build_here(r: recipe.Recipe, out: Path) -> Built:
    """Stages 2-5 in this process."""
    base = BASES[r.base.kind]
    base.check(r)  # what cannot work here stops now, before anything is built
    work = BUILD / "image" / r.name
    try:
        work.mkdir(parents=True, exist_ok=True)
        files = payload.gather(r, work)  # 2. payload
        for path, why in files.absent().items():
            print(f"{r.name}: {path} left out: {why}", flush=True)
        made = base.make(r, files, out, work)  # 3-4. base + payload -> image
        try:
            written = manifest.write(r, made)  # 5. manifest
        except BaseException:
            _discard(made)
            raise
        return Built(made.image, made.sha256, written, made.kernel)
    except OSError as e:
        if not is_disk_full(e):
            raise
        # every stage writes through temp files removed on error: nothing half-written stays
        where = Path(e.filename).parent if e.filename else out
        raise ImageError(
            f"{where}: no space left on the device while building {r.name} "
            f"({free_bytes(where) // (1 << 20)} MB free; the image stage needs about "
            f"{-(-_space_needed(base, r) // (1 << 20))} MB in {out}): free some or build "
            "into another directory"
        ) from None


def _discard(made: "manifest.Made") -> None:
    """An image whose manifest or .sha256 could not be written must not stay beside the
    previous build's (they would not match it): remove it and its companions."""
    image = Path(made.image)
    for path in (
        image,
        image.with_name(image.name + ".sha256"),
        image.with_name(image.name.removesuffix(".img") + ".manifest.json"),
        made.kernel,
    ):
        if path is not None:
            Path(path).unlink(missing_ok=True)


def _space_needed(base: object, r: recipe.Recipe) -> int:
    """Bytes an image of `r` needs in out/: the base's estimate, else twice the image."""
    estimate = getattr(base, "space_needed", None)
    return estimate(r.image_size_mb, None) if estimate else (r.image_size_mb << 20) * 2


def _in_the_container(r: recipe.Recipe, where: Where) -> bool:
    """Whether a debian recipe goes to the builder container (else it builds here)."""
    if where == "here" or manifest.in_container():
        if where == "here" and not manifest.in_container():
            print(f"{r.name}: building on this host, without the container", flush=True)
        return False
    problem = container.engine_problem()
    if problem is None:
        return True
    if where == "container":
        raise ImageError(
            f"building {r.name} in the container needs a Docker or Podman engine ({problem})"
        )
    print(
        f"{r.name}: no container engine ({problem}); building on this host by the same "
        "steps, without the container",
        flush=True,
    )
    return False


def _built_in_container(r: recipe.Recipe, out: Path) -> Built:
    """The same build in the Dockerfile's offline stage; the image lands in `out`."""
    path = container.run_offline_build(r, out)
    image = path.with_name(f"{r.name}.img")
    digest = sha256_file(image)
    recorded = json.loads(path.read_text())["image"]["sha256"]
    if digest != recorded:
        raise ImageError(f"{image} has sha256 {digest}, but its manifest says {recorded}")
    return Built(image, digest, path, path.with_name("Image"))


def main(argv: Sequence[str] | None = None) -> int:
    """Inside the container (`python3 -m duo_builder.image.container`): build a recipe here,
    exactly as on a host. A BuildError is one line; anything else is a bug: its traceback."""
    parser = argparse.ArgumentParser(prog="python3 -m duo_builder.image.container")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        built = build(args.recipe, out_dir=args.out, where="here")
    except Exception as e:
        if not isinstance(e, BuildError):
            traceback.print_exc()
        # the host quotes this line in its one-line error: the message's first and last line
        lines = [ln.strip() for ln in str(e).strip().splitlines()] or [type(e).__name__]
        print("error: " + " / ".join(dict.fromkeys([lines[0], lines[-1]])), file=sys.stderr)
        return 1
    print(f"{built.image} sha256 {built.sha256}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
