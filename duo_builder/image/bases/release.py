"""The release-image base (duo-64m-remaster): the pinned official image, downloaded and
remastered (bases/remaster.py): the payload into its rootfs, the ION reservation into
boot.sd's device tree. No SDK build, no container.
"""

import zipfile
from pathlib import Path

from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer
from duo_builder.image import manifest
from duo_builder.image.manifest import Made
from duo_builder.image.payload import Payload
from duo_builder.image.recipe import Recipe
from duo_builder.model.download import fetch_model


class ReleaseImageError(BuildError):
    """The release image cannot be used as the recipe says; the message says how to fix it."""


def check(r: Recipe) -> None:
    """Refuse an unpinned base before anything is built or downloaded."""
    if not r.base.sha256:
        raise ReleaseImageError(
            f"recipes/{r.name}.yaml: base: sha256 is not pinned, so the release image cannot "
            f"be verified: download {r.base.url} once, check it, and set base.sha256 to its "
            "sha256sum"
        )


def make(r: Recipe, files: Payload, out: Path, work: Path) -> Made:
    # here, not at the top: only this base needs the FDT/FIT tools remaster.py uses
    from duo_builder.image.bases.remaster import remaster

    archive = fetch_model(sha256=r.base.sha256, url=r.base.url)
    base_img = _unpacked_image(archive, work)
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
