"""U-Boot FIT images (the Duo's boot.sd): a device tree whose /images nodes carry `data`
and hash nodes, and whose /configurations name the images that boot together.

Read and edited with pylibfdt (fdt.py). New data is rehashed by U-Boot's own `mkimage -F`,
which recomputes every hash node and keeps the timestamp and the node layout; `verify`
recomputes them here, independently of mkimage (Debian's u-boot-tools has no
fit_check_sign, and that one would need a key anyway).
"""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from duo_builder.build.hostdeps import ensure_commands
from duo_builder.errors import run
from duo_builder.image import fdt
from duo_builder.image.fdt import FdtError

if TYPE_CHECKING:
    import libfdt

# as U-Boot stores each `value` (crc32: 4 bytes big-endian)
HASHES: dict[str, Callable[[bytes], bytes]] = {
    "crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
    "md5": lambda d: hashlib.md5(d).digest(),
    "sha1": lambda d: hashlib.sha1(d).digest(),
    "sha256": lambda d: hashlib.sha256(d).digest(),
    "sha384": lambda d: hashlib.sha384(d).digest(),
    "sha512": lambda d: hashlib.sha512(d).digest(),
}


def load(blob: bytes, what: str = "boot.sd") -> libfdt.Fdt:
    fit = fdt.load(blob, what)
    if not fdt.exists(fit, "/images"):
        raise FdtError(f"{what} is not a FIT image (no /images node)")
    return fit


def images(fit: libfdt.Fdt) -> list[str]:
    return fdt.children(fit, "/images")


def configurations(fit: libfdt.Fdt) -> list[str]:
    return fdt.children(fit, "/configurations") if fdt.exists(fit, "/configurations") else []


def image_type(fit: libfdt.Fdt, image: str) -> str | None:
    return (fdt.strings(fdt.prop(fit, f"/images/{image}", "type")) or [None])[0]


def hash_nodes(fit: libfdt.Fdt, image: str) -> list[str]:
    path = f"/images/{image}"
    return [f"{path}/{n}" for n in fdt.children(fit, path) if n.startswith("hash")]


def embedded_data(fit: libfdt.Fdt, image: str) -> bytes:
    """The image's data, refused when it lives outside the tree or is compressed."""
    data = fdt.prop(fit, f"/images/{image}", "data")
    if data is None:
        raise FdtError(
            f"FIT image {image} keeps its data outside the tree (mkimage -E); unsupported"
        )
    compression = fdt.strings(fdt.prop(fit, f"/images/{image}", "compression"))[:1]
    if compression not in ([], ["none"]):
        raise FdtError(f"FIT image {image} is {compression[0]}-compressed; unsupported")
    return data


def refuse_signed(fit: libfdt.Fdt, image: str, what: str = "boot.sd") -> None:
    """Changing a signed image (or any configuration, which signs what it names) would
    need the private key."""
    nodes = [f"/images/{image}"] + [f"/configurations/{c}" for c in configurations(fit)]
    if any(c.startswith("signature") for n in nodes for c in fdt.children(fit, n)):
        raise FdtError(f"{what} is a signed FIT; re-signing needs the private key")


def replace_data(
    fit: libfdt.Fdt, data: Mapping[str, bytes], min_size: int, what: str = "boot.sd"
) -> bytes:
    """The FIT with each named image's data replaced and every hash recomputed by mkimage,
    padded up to `min_size` (the original total size, so the file keeps its size)."""
    for image, new in data.items():
        fdt.setprop(fit, f"/images/{image}", "data", new)
    ensure_commands({"mkimage": "u-boot-tools"}, f"rehashing {what}")
    with tempfile.TemporaryDirectory(prefix="fit.") as tmp:
        path = Path(tmp) / "fit"
        path.write_bytes(fdt.dump(fit))
        # -F: hash the FIT in place; no -t, so the timestamp stays; mkimage packs the tree
        run(["mkimage", "-F", path], what=f"rehashing {what} (mkimage -F)", error=FdtError)
        return fdt.dump(fdt.load(path.read_bytes(), what), min_size)


def verify(blob: bytes, what: str = "boot.sd") -> list[str]:
    """Problems found recomputing every hash and resolving every configuration; [] = good."""
    fit = load(blob, what)
    names = images(fit)
    problems = []
    for image in names:
        data = fdt.prop(fit, f"/images/{image}", "data")
        for node in hash_nodes(fit, image):
            algo = (fdt.strings(fdt.prop(fit, node, "algo")) or ["?"])[0]
            shown = node.removeprefix("/images/")
            if data is None or algo not in HASHES:
                problems.append(f"{shown}: cannot check {algo}")
            elif HASHES[algo](data) != fdt.prop(fit, node, "value"):
                problems.append(f"{shown}: {algo} mismatch")
    for config in configurations(fit):
        for key in ("kernel", "fdt", "ramdisk"):
            for ref in fdt.strings(fdt.prop(fit, f"/configurations/{config}", key)):
                if ref not in names:
                    problems.append(f"{config}: {key} {ref} is not an image")
    return problems
