"""The bases an image is built on, by recipe `base.kind`: each refuses at once what cannot
work here (`check`, before the payload is built) and makes the image from the payload
(`make`, returning what the manifest records)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from duo_builder.image.bases import debian, release, sdk
from duo_builder.image.manifest import Made
from duo_builder.image.payload import Payload
from duo_builder.image.recipe import Recipe


def _nothing_to_check(r: Recipe) -> None:
    pass


@dataclass(frozen=True)
class Base:
    check: Callable[[Recipe], None]
    make: Callable[[Recipe, Payload, Path, Path], Made]  # (recipe, payload, out, work)


BASES: dict[str, Base] = {
    "debian": Base(_nothing_to_check, debian.make),  # qemu-virt-64m: Debian only, offline
    "release-image": Base(release.check, release.make),  # duo-64m-remaster
    "sdk": Base(sdk.check, sdk.make),  # duo-64m: the vendor SDK in a container
}
