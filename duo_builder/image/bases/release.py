"""The release-image base (duo-64m-remaster): the official image, remastered
(bases/remaster.py): the payload into its rootfs, the ION reservation into boot.sd's device
tree. No SDK build, no container.

Where the official image comes from: the file the user downloaded, given with
`invoke image --recipe duo-64m-remaster --base-image PATH` (.img or .img.zip), or else the
recipe's URL, downloaded into the verified cache. The recipe's base.sha256 pins it; an
empty (null) pin means "pin what was given": the given file's sha256 goes into the manifest
and is printed. A given file that contradicts a pin is refused. No tracked file is edited.
"""

import dataclasses
import zipfile
from pathlib import Path

from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer, sha256_file
from duo_builder.image import manifest
from duo_builder.image.manifest import Made
from duo_builder.image.payload import Payload
from duo_builder.image.recipe import Recipe
from duo_builder.model.download import fetch_model


class ReleaseImageError(BuildError):
    """The release image cannot be used as the recipe says; the message says how to fix it."""


def with_base_image(r: Recipe, given: Path) -> Recipe:
    """The recipe with the official image taken from `given` (.img or .img.zip), checked
    against the recipe's pin, or pinned to what was given when the pin is empty."""
    if r.base.kind != "release-image":
        raise ReleaseImageError(
            f"--base-image is for release-image recipes; {r.name} is built from "
            f"base kind '{r.base.kind}'"
        )
    given = Path(given).expanduser().resolve()
    if not given.is_file():
        raise ReleaseImageError(f"--base-image {given}: no such file")
    if not (zipfile.is_zipfile(given) or given.suffix == ".img"):
        raise ReleaseImageError(
            f"--base-image {given}: expected the official .img or .img.zip "
            f"({Path(r.base.url).name})"
        )
    digest = sha256_file(given)
    pin = r.base.sha256
    if pin and digest != pin and _inner_img_sha256(given) != pin:
        raise ReleaseImageError(
            f"--base-image {given}: sha256 {digest} contradicts the pin {pin} in "
            f"{_recipe_file(r)} (base.sha256, of {Path(r.base.url).name}): give that file"
        )
    how = "matches the recipe's pin" if pin else "pinned by what was given"
    print(f"{r.name}: base image {given} sha256 {digest} ({how})", flush=True)
    base = dataclasses.replace(r.base, sha256=pin or digest, image=str(given))
    return dataclasses.replace(r, base=base)


def _inner_img_sha256(path: Path) -> str:
    """sha256 of the one .img inside a .zip (a pin may name the unpacked image)."""
    if not zipfile.is_zipfile(path):
        return ""
    import hashlib

    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".img")]
        if len(names) != 1:
            return ""
        h = hashlib.sha256()
        with z.open(names[0]) as src:
            while chunk := src.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _recipe_file(r: Recipe) -> str:
    try:
        return str(r.source.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(r.source)


def check(r: Recipe) -> None:
    """Refuse an unpinned base, unless given, before anything is built or downloaded."""
    if not r.base.sha256 and not r.base.image:
        raise ReleaseImageError(
            f"{_recipe_file(r)}: base: sha256 is empty, so the official image must be given: "
            f"download {r.base.url} and run `invoke image --recipe {r.name} --base-image "
            "PATH` (.img or .img.zip; its sha256 is then recorded in the manifest)"
        )


def make(r: Recipe, files: Payload, out: Path, work: Path) -> Made:
    # here, not at the top: only this base needs the FDT/FIT tools remaster.py uses
    from duo_builder.image.bases.remaster import remaster

    if r.base.image:  # given and checked by with_base_image
        archive = Path(r.base.image)
    else:
        archive = fetch_model(sha256=r.base.sha256, url=r.base.url)
    base_img = _unpacked_image(archive, work / f"base-{r.base.sha256[:16]}")
    image = out / f"{r.name}.img"
    installed = files.present()
    report = remaster(
        base_img,
        image,
        {f.path: f.source for f in installed if f.source is not None},
        modes={f.path: f.mode for f in installed},
        ion_size=r.ion_mb << 20,
        source_date_epoch=manifest.source_date_epoch(),
    )
    extra = {"remaster": report.summary(), "files": files.manifest()}
    if files.absent():
        extra["payload_left_out"] = files.absent()
    return Made(image, report.sha256, extra)


def _unpacked_image(archive: Path, work: Path) -> Path:
    if not zipfile.is_zipfile(archive):
        return archive
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(".img")]
        if len(names) != 1:
            raise ReleaseImageError(
                f"{archive}: expected one .img in the release archive, got {names}"
            )
        target = work / Path(names[0]).name
        if not target.exists():
            work.mkdir(parents=True, exist_ok=True)
            with z.open(names[0]) as src, atomic_writer(target) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return target
