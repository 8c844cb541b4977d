"""Flattened device trees (a DTB, or a U-Boot FIT, which is one too), read and edited with
pylibfdt: the Python binding of libfdt, the library dtc, U-Boot and Linux use.

Nodes are named by path, not by libfdt offset, because every write moves the offsets
after it. A tree keeps its total size (the free space U-Boot may grow it into) unless an
edit needs more room.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from duo_builder.errors import BuildError

try:
    import libfdt
except ImportError:  # only the remaster (on the host) needs it, not the build container
    libfdt = None

_MAGIC = bytes.fromhex("d00dfeed")  # FDT_MAGIC, big-endian
_GROW = 1024  # bytes added to a tree when a write needs more room


class FdtError(BuildError):
    """A blob is not a flattened device tree, or a value does not fit its cells."""


def load(blob: bytes, what: str) -> libfdt.Fdt:
    """`blob` as an editable tree, structure checked throughout before any use."""
    if libfdt is None:
        raise FdtError(
            f"reading {what} needs pylibfdt: `python3 -m pip install -r requirements.txt`"
        )
    if blob[:4] != _MAGIC:
        raise FdtError(f"{what} is not a flattened device tree (bad magic)")
    buf = bytearray(blob)
    err = libfdt.fdt_check_full(buf, len(buf))
    if err:
        raise FdtError(f"{what} is corrupt: {libfdt.strerror(err)}")
    return libfdt.Fdt(buf)


def dump(fdt: libfdt.Fdt, min_size: int = 0) -> bytes:
    """The tree as bytes: packed, then zero-padded up to a total size of `min_size` (like
    `dtc -p`), so an edited tree keeps the free space the original had."""
    fdt.pack()
    if fdt.totalsize() < min_size:
        fdt.resize(min_size)
    return bytes(fdt.as_bytearray())


def totalsize(blob: bytes) -> int:
    return struct.unpack_from(">I", blob, 4)[0]


def exists(fdt: libfdt.Fdt, path: str) -> bool:
    return fdt.path_offset(path, libfdt.QUIET_NOTFOUND) >= 0


def prop(fdt: libfdt.Fdt, path: str, name: str) -> bytes | None:
    """The raw value of property `name` of node `path`, or None if it has none."""
    value = fdt.getprop(fdt.path_offset(path), name, libfdt.QUIET_NOTFOUND)
    return None if isinstance(value, int) else bytes(value)


def children(fdt: libfdt.Fdt, path: str) -> list[str]:
    """The names of the subnodes of `path`, in tree order."""
    names = []
    child = fdt.first_subnode(fdt.path_offset(path), libfdt.QUIET_NOTFOUND)
    while child >= 0:
        names.append(fdt.get_name(child))
        child = fdt.next_subnode(child, libfdt.QUIET_NOTFOUND)
    return names


def walk(fdt: libfdt.Fdt) -> Iterator[str]:
    """The path of every node, depth first in tree order; don't write while walking."""
    offset, depth = 0, 0
    while offset >= 0 and depth >= 0:  # past the root's end: depth -1
        yield fdt.get_path(offset)
        offset, depth = fdt.next_node(offset, depth, libfdt.QUIET_NOTFOUND)


def join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def setprop(fdt: libfdt.Fdt, path: str, name: str, value: bytes) -> None:
    """Set (or add) a property, growing the tree when it has no room left."""
    while fdt.setprop(fdt.path_offset(path), name, value, libfdt.QUIET_NOSPACE):
        fdt.resize(fdt.totalsize() + max(_GROW, len(value)))


def delete(fdt: libfdt.Fdt, path: str) -> None:
    fdt.del_node(fdt.path_offset(path))


# Property values. Kept ours: pylibfdt reads and writes only 1- and 2-cell numbers, and its
# Property.as_uint32_list raises on a value that is not whole cells, where these read leniently.


def strings(value: bytes | None) -> list[str]:
    """A string-list property (`compatible`, `status`) as its strings."""
    return [s.decode("latin-1") for s in (value or b"").split(b"\0") if s]


def cells(value: bytes | None) -> list[int]:
    value = value or b""
    return list(struct.unpack(f">{len(value) // 4}I", value[: len(value) // 4 * 4]))


def number(cells: list[int]) -> int:
    """Cells as one number, most significant first (a 2-cell address or size)."""
    n = 0
    for c in cells:
        n = (n << 32) | c
    return n


def encode_number(value: int, ncells: int) -> bytes:
    if not 0 <= value < 1 << (32 * ncells):
        raise FdtError(f"{value:#x} does not fit in {ncells} device-tree cell(s)")
    return value.to_bytes(4 * ncells, "big")
