"""Remaster an official Milk-V Duo SD-card image without root.

The release image is an MBR disk: a FAT `boot` partition (fip.bin, boot.sd), an ext4
`rootfs` and maybe swap. `remaster` copies it, adds payload files to the rootfs (debugfs),
shrinks or removes the ION reservation in the device tree inside boot.sd (a U-Boot FIT),
and writes the result atomically. Everything outside the two partitions is copied byte
for byte, and the same inputs give the same bytes (fixed times, no random UUIDs).

ION size 0 *deletes* the `/reserved-memory` ion node, it does not zero `reg`: Linux 5.10
(`drivers/of/of_reserved_mem.c`) skips a zero-size `reg` entry but then, seeing size 0,
allocates the region dynamically from the `size` property, so the vendor node (which
has `size`) would still take its 16 MiB. A deleted node reserves nothing. Nodes whose
`memory-region` points at it (the cvitek ION heap) are set `status = "disabled"`, like
the vendor DTS, which leaves out `cvitek-ion` when ION_SIZE is 0; the camera/video
stack then has no ION heap, which is the point. A DTB without an ion node is "nothing
to give back" when ion_size is 0 (so remastering a remastered image works) and an
error otherwise. `ion_size=None` leaves boot.sd alone.

The FIT is edited with pylibfdt (image/fdt.py, image/fit.py): the DTB image's `data` is
swapped and U-Boot's `mkimage -F` recomputes the hash nodes; every other node, the
configuration names and the FIT timestamp stay as they were. Signed FITs are refused (no
key here).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Protocol

from duo_builder.build.hostdeps import HostDependencyError, ensure_commands
from duo_builder.errors import BuildError
from duo_builder.fsutil import atomic_writer, sha256_file
from duo_builder.image import fdt, fit
from duo_builder.image.fdt import FdtError

if TYPE_CHECKING:
    import libfdt  # fdt.py imports it, and says how to install it when missing

SECTOR = 512
CHUNK = 4 << 20
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
LINUX_TYPE = 0x83
SWAP_TYPE = 0x82
EXT_MAGIC_OFFSET = 1024 + 56
TOOLS = {"debugfs": "e2fsprogs", "dumpe2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "mcopy": "mtools"}
_SBIN = ("/usr/sbin", "/sbin")  # e2fsprogs lives here, often off a normal user's PATH
_SAFE_GUEST = re.compile(r"^/[A-Za-z0-9._+@%=,:~!/-]+$")  # no quoting needed inside debugfs


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...


class RemasterError(BuildError):
    """The image cannot be remastered as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Partition:
    index: int  # 1-based, as Linux numbers them
    type_id: int
    start: int  # bytes
    size: int  # bytes
    bootable: bool = False

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def kind(self) -> str:
        if self.type_id in FAT_TYPES:
            return "fat"
        return {LINUX_TYPE: "linux", SWAP_TYPE: "swap"}.get(self.type_id, f"0x{self.type_id:02x}")


@dataclass(frozen=True)
class FileChange:
    path: str
    size: int
    sha256: str
    mode: int
    replaced: bool  # an existing file was overwritten


@dataclass(frozen=True)
class IonChange:
    fit_image: str  # the FIT image node holding the DTB
    node: str  # DT path of the ion node
    before: int  # bytes reserved
    after: int | None  # None: node deleted
    disabled: tuple[str, ...] = ()  # consumers switched off with it


@dataclass
class RemasterReport:
    base_img: Path
    out_img: Path
    sha256: str
    partitions: list[Partition]
    rootfs_free_before: int
    rootfs_free_after: int
    files: list[FileChange] = field(default_factory=list)
    ion: list[IonChange] = field(default_factory=list)
    fit_configurations: list[str] = field(default_factory=list)
    boot_sd_changed: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.out_img}  sha256 {self.sha256}"]
        for p in self.partitions:
            lines.append(f"  p{p.index} {p.kind:<5} start {p.start:>12}  size {_mib(p.size)}")
        lines.append(
            f"  rootfs free {_mib(self.rootfs_free_before)} -> {_mib(self.rootfs_free_after)}"
        )
        for f in self.files:
            verb = "replaced" if f.replaced else "added"
            lines.append(f"  {verb} {f.path} ({f.size} B, {f.mode:04o}) sha256 {f.sha256}")
        for c in self.ion:
            after = "removed" if c.after is None else _mib(c.after)
            off = f"; disabled {', '.join(c.disabled)}" if c.disabled else ""
            lines.append(f"  ion {c.fit_image}:{c.node} {_mib(c.before)} -> {after}{off}")
        lines.append(f"  FIT configurations kept: {', '.join(self.fit_configurations) or '-'}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


# --------------------------------------------------------------------------- MBR


def read_mbr(image: Path) -> list[Partition]:
    """The primary partitions of an MBR disk image (empty slots skipped)."""
    with open(image, "rb") as f:
        mbr = f.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise RemasterError(f"{image} is not an MBR disk image (no 55AA boot signature)")
    parts = []
    for i in range(4):
        entry = mbr[446 + 16 * i : 462 + 16 * i]
        status, type_id = entry[0], entry[4]
        lba, count = struct.unpack_from("<II", entry, 8)
        if status not in (0x00, 0x80):  # a FAT boot sector also ends in 55AA
            raise RemasterError(f"{image} is not an MBR disk image (bad partition entry {i + 1})")
        if type_id == 0xEE:
            raise RemasterError(f"{image} has a GPT partition table; only MBR images are supported")
        if type_id and count:
            parts.append(Partition(i + 1, type_id, lba * SECTOR, count * SECTOR, status == 0x80))
    if not parts:  # e.g. a bare FAT filesystem, whose boot sector has zeros there
        raise RemasterError(f"{image} is not an MBR disk image (empty partition table)")
    return parts


def _pick_partitions(image: Path, parts: list[Partition]) -> tuple[Partition, Partition]:
    """The FAT boot partition and the ext4 rootfs, checked to lie inside the file."""
    fat = next((p for p in parts if p.kind == "fat"), None)
    root = next((p for p in parts if p.kind == "linux"), None)
    if fat is None or root is None:
        have = ", ".join(f"p{p.index}={p.kind}" for p in parts) or "none"
        raise RemasterError(
            f"{image} needs a FAT boot partition and a Linux (0x83) rootfs; partitions: {have}"
        )
    size = image.stat().st_size
    for p in (fat, root):
        if p.end > size:
            raise RemasterError(
                f"{image} is truncated: partition {p.index} ends at {p.end} but the file has "
                f"{size} bytes"
            )
    with open(image, "rb") as f:
        f.seek(root.start + EXT_MAGIC_OFFSET)
        if f.read(2) != b"\x53\xef":
            raise RemasterError(f"partition {root.index} of {image} is not an ext2/3/4 filesystem")
    return fat, root


# --------------------------------------------------------------------------- ION
# The device tree is read and edited with pylibfdt (image/fdt.py), boot.sd through
# image/fit.py; what is decided here is only which node is ION and what changes with it.

_RESMEM = "/reserved-memory"
_DISABLED = b"disabled\0"


@contextmanager
def _as_remaster_error() -> Iterator[None]:
    try:
        yield
    except FdtError as e:  # the DTB or FIT cannot be read or changed as asked
        raise RemasterError(str(e)) from e


def _cell_counts(dt: libfdt.Fdt) -> tuple[int, int]:
    """(#address-cells, #size-cells) governing /reserved-memory children."""

    def get(name: str, default: int) -> int:
        for path in (_RESMEM, "/"):
            if value := fdt.cells(fdt.prop(dt, path, name)):
                return value[0]
        return default

    return get("#address-cells", 2), get("#size-cells", 1)


def _is_ion(dt: libfdt.Fdt, path: str) -> bool:
    name = path.rsplit("/", 1)[1]
    return "ion-region" in fdt.strings(fdt.prop(dt, path, "compatible")) or (
        name.split("@")[0] == "ion"
    )


def _ion_size(dt: libfdt.Fdt, path: str, acells: int, scells: int) -> int:
    if (size := fdt.prop(dt, path, "size")) is not None:
        return fdt.number(fdt.cells(size))
    reg = fdt.cells(fdt.prop(dt, path, "reg"))
    step = acells + scells
    return sum(fdt.number(reg[i + acells : i + step]) for i in range(0, len(reg) - step + 1, step))


def set_ion_size(dtb: bytes, ion_size: int, what: str = "DTB") -> tuple[bytes, list[IonChange]]:
    """Return (new DTB, changes); the DTB comes back unchanged when nothing differs."""
    with _as_remaster_error():
        dt = fdt.load(dtb, what)
        nodes = fdt.children(dt, _RESMEM) if fdt.exists(dt, _RESMEM) else []
        ions = [p for n in nodes if _is_ion(dt, p := fdt.join(_RESMEM, n))]
        if not ions:
            if ion_size:
                raise RemasterError(
                    f"{what} has no /reserved-memory ion node, so its size cannot be set to "
                    f"{ion_size:#x}; use ion_size=0 (nothing to free) or ion_size=None"
                )
            return dtb, []
        acells, scells = _cell_counts(dt)
        changes = []
        for path in ions:
            before = _ion_size(dt, path, acells, scells)
            if ion_size == 0:
                phandle = dt.get_phandle(dt.path_offset(path))  # 0: nothing refers to it
                fdt.delete(dt, path)
                disabled = _disable_consumers(dt, phandle) if phandle else []
                changes.append(IonChange(what, path, before, None, tuple(disabled)))
            elif ion_size != before:
                _resize_ion(dt, path, ion_size, acells, scells)
                changes.append(IonChange(what, path, before, ion_size))
        # keep the original free space: U-Boot edits /chosen in place when fdt_high is ~0
        return (fdt.dump(dt, fdt.totalsize(dtb)) if changes else dtb), changes


def _resize_ion(dt: libfdt.Fdt, path: str, ion_size: int, acells: int, scells: int) -> None:
    if fdt.prop(dt, path, "size") is not None:
        fdt.setprop(dt, path, "size", fdt.encode_number(ion_size, scells))
    if (reg := fdt.prop(dt, path, "reg")) is not None:
        cells = fdt.cells(reg)
        if len(cells) != acells + scells:
            raise RemasterError(f"{path} has {len(cells)} reg cells; expected one <base size> pair")
        base = fdt.number(cells[:acells])
        fdt.setprop(
            dt, path, "reg", fdt.encode_number(base, acells) + fdt.encode_number(ion_size, scells)
        )


def _disable_consumers(dt: libfdt.Fdt, phandle: int) -> list[str]:
    """Disable nodes whose memory-region is the deleted region; also their cvitek-ion parent
    once it has no enabled heap left (its driver fails to probe with zero heaps)."""
    consumers = [p for p in fdt.walk(dt) if phandle in fdt.cells(fdt.prop(dt, p, "memory-region"))]
    disabled = []
    for path in consumers:
        fdt.setprop(dt, path, "status", _DISABLED)
        disabled.append(path)
        parent = path.rsplit("/", 1)[0] or "/"
        if "cvitek,cvitek-ion" in fdt.strings(fdt.prop(dt, parent, "compatible")):
            heaps = [fdt.join(parent, c) for c in fdt.children(dt, parent)]
            if all(fdt.prop(dt, h, "status") == _DISABLED for h in heaps):
                fdt.setprop(dt, parent, "status", _DISABLED)
                disabled.append(parent)
    return disabled


# --------------------------------------------------------------------------- FIT


def edit_fit(blob: bytes, ion_size: int) -> tuple[bytes | None, list[IonChange], list[str]]:
    """(new FIT or None if unchanged, ion changes, configuration names)."""
    with _as_remaster_error():
        boot = fit.load(blob, "boot.sd")
        dtbs = [i for i in fit.images(boot) if fit.image_type(boot, i) == "flat_dt"]
        if not dtbs:
            raise RemasterError("boot.sd holds no flat_dt (device tree) image")
        new_data: dict[str, bytes] = {}
        changes: list[IonChange] = []
        for image in dtbs:
            new, found = set_ion_size(fit.embedded_data(boot, image), ion_size, image)
            if found:
                fit.refuse_signed(boot, image)
                new_data[image] = new
                changes.extend(found)
        configs = fit.configurations(boot)
        if not changes:
            return None, changes, configs
        return fit.replace_data(boot, new_data, fdt.totalsize(blob)), changes, configs


# --------------------------------------------------------------------------- host tools


def _tool(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=path) or name


def _ensure_tools() -> None:
    try:
        ensure_commands({_tool(cmd): pkg for cmd, pkg in TOOLS.items()}, "remastering an image")
    except HostDependencyError as e:
        raise RemasterError(str(e)) from e


def _run(args: list[str], env: Mapping[str, str] | None = None) -> str:
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    result = subprocess.run(args, capture_output=True, text=True, env=full_env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RemasterError(f"`{' '.join(args[:2])} ...` failed: {' / '.join(tail)}")
    return result.stdout


# --------------------------------------------------------------------------- ext4


@dataclass(frozen=True)
class _Ext4Stats:
    block_size: int
    free_blocks: int
    free_inodes: int


@dataclass(frozen=True)
class _Item:
    guest: PurePosixPath
    source: Path  # a file debugfs can read (symlink to the host file, or bytes written out)
    mode: int
    size: int
    sha256: str


def _ext4_stats(image: Path) -> _Ext4Stats:
    out = _run([_tool("dumpe2fs"), "-h", str(image)])
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = {k.strip(): v.strip() for k, v in fields.items()}
    if "needs_recovery" in get.get("Filesystem features", ""):
        raise RemasterError("the rootfs journal needs recovery; run e2fsck on the image first")
    return _Ext4Stats(int(get["Block size"]), int(get["Free blocks"]), int(get["Free inodes"]))


def _debugfs(
    image: Path, script: str, epoch: int, *, write: bool = False, cwd: Path | None = None
) -> tuple[str, list[str]]:
    """Run a debugfs command script; returns (stdout, error lines)."""
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", dir=cwd) as f:
        f.write(script)
        f.flush()
        args = [_tool("debugfs"), *(["-w"] if write else []), "-f", f.name, str(image)]
        # E2FSPROGS_FAKE_TIME pins the superblock write time (1.47.0 has no SOURCE_DATE_EPOCH)
        env = {**os.environ, "LC_ALL": "C", "PAGER": "__none__", "DEBUGFS_PAGER": "__none__",
               "E2FSPROGS_FAKE_TIME": str(epoch)}  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd)
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not re.match(r"debugfs \d", line)
    ]
    if result.returncode != 0 and not errors:
        errors = [f"debugfs exited with {result.returncode}"]
    return result.stdout, errors


_LS_LINE = re.compile(r"^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$")


def _list_dirs(image: Path, dirs: list[str], epoch: int) -> dict[str, dict[str, tuple[int, int]]]:
    """{dir: {name: (mode, size)}} for the dirs that exist (others are absent)."""
    out, errors = _debugfs(image, "".join(f"ls -p {d}\n" for d in dirs), epoch)
    # absent paths and files are expected here; _plan decides what they mean
    unexpected = [e for e in errors if not re.search("File not found|not a directory", e)]
    if unexpected:
        raise RemasterError(f"reading the rootfs failed: {' / '.join(unexpected[:3])}")
    listing: dict[str, dict[str, tuple[int, int]]] = {}
    current: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():  # debugfs echoes each command before its output
        if line.startswith("debugfs: ls -p "):
            current = listing.setdefault(line[len("debugfs: ls -p ") :], {})
        elif m := _LS_LINE.match(line):
            current[m.group(5)] = (int(m.group(2), 8), int(m.group(6) or 0))
    return {d: entries for d, entries in listing.items() if entries}  # "." is always listed


def _ancestors(path: PurePosixPath) -> list[str]:
    return [str(p) for p in reversed(path.parents)]


@dataclass
class _Plan:
    new_dirs: list[str] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)
    freed_blocks: int = 0


def _plan(items: list[_Item], listing: dict[str, dict[str, tuple[int, int]]], bs: int) -> _Plan:
    plan = _Plan()
    for item in items:
        for d in _ancestors(item.guest)[1:]:
            parent, name = str(PurePosixPath(d).parent), PurePosixPath(d).name
            entry = listing.get(parent, {}).get(name)
            if entry is None:
                if d not in plan.new_dirs:
                    plan.new_dirs.append(d)
            elif stat.S_ISLNK(entry[0]):
                raise RemasterError(
                    f"{d} is a symlink on the rootfs; use the real path for {item.guest}"
                )
            elif not stat.S_ISDIR(entry[0]):
                raise RemasterError(
                    f"{d} is a file on the rootfs, so {item.guest} cannot be created"
                )
        entry = listing.get(str(item.guest.parent), {}).get(item.guest.name)
        if entry is not None:
            if stat.S_ISDIR(entry[0]):
                raise RemasterError(f"{item.guest} is a directory on the rootfs")
            plan.replaced.add(str(item.guest))
            plan.freed_blocks += -(-entry[1] // bs) if stat.S_ISREG(entry[0]) else 0
    return plan


def _check_space(items: list[_Item], plan: _Plan, stats: _Ext4Stats) -> None:
    """Refuse early: debugfs would write a truncated file and only print a warning."""
    bs = stats.block_size
    data = sum(-(-i.size // bs) + 1 for i in items)  # +1: an extent/index block, to be safe
    need = data + 2 * len(plan.new_dirs) - plan.freed_blocks  # new dir block + parent growth
    if need > stats.free_blocks:
        missing = (need - stats.free_blocks) * bs
        raise RemasterError(
            f"payload does not fit the rootfs: needs about {_mib(need * bs)}, "
            f"{_mib(stats.free_blocks * bs)} free, {_mib(missing)} ({missing} bytes) missing; "
            "shrink the payload or enlarge the rootfs partition"
        )
    inodes = len(items) + len(plan.new_dirs) - len(plan.replaced)
    if inodes > stats.free_inodes:
        raise RemasterError(
            f"payload needs {inodes} inodes but the rootfs has {stats.free_inodes} free"
        )


def _set_fields(path: str, mode: int, epoch: int) -> str:
    fields = [("mode", f"0{mode:o}"), ("uid", "0"), ("gid", "0")]
    fields += [(t, f"@{epoch}") for t in ("atime", "mtime", "ctime", "crtime")]
    return "".join(f"set_inode_field {path} {k} {v}\n" for k, v in fields)


def _write_script(items: list[_Item], plan: _Plan, epoch: int) -> str:
    lines = []
    for d in plan.new_dirs:
        lines.append(f"mkdir {d}\n" + _set_fields(d, stat.S_IFDIR | 0o755, epoch))
    for item in items:
        # cd + basename: older debugfs `write` took the whole target as one name
        lines.append(f"cd {item.guest.parent}\n")
        if str(item.guest) in plan.replaced:
            lines.append(f"rm {item.guest.name}\n")
        lines.append(f"write {item.source.name} {item.guest.name}\n")
        lines.append(_set_fields(str(item.guest), stat.S_IFREG | item.mode, epoch))
    return "".join(lines)


def _update_rootfs(
    rootfs: Path, items: list[_Item], workdir: Path, epoch: int
) -> tuple[list[FileChange], int, int]:
    stats = _ext4_stats(rootfs)
    dirs = sorted({d for i in items for d in _ancestors(i.guest)})
    plan = _plan(items, _list_dirs(rootfs, dirs, epoch), stats.block_size)
    _check_space(items, plan, stats)
    if items:
        script = _write_script(items, plan, epoch)
        _, errors = _debugfs(rootfs, script, epoch, write=True, cwd=workdir)
        if errors:
            raise RemasterError(f"writing the payload failed: {' / '.join(errors[:3])}")
        _verify_rootfs(rootfs, items, epoch)
    after = _ext4_stats(rootfs)
    changes = [
        FileChange(str(i.guest), i.size, i.sha256, i.mode, str(i.guest) in plan.replaced)
        for i in items
    ]
    return changes, stats.free_blocks * stats.block_size, after.free_blocks * after.block_size


def _verify_rootfs(rootfs: Path, items: list[_Item], epoch: int) -> None:
    """Read every payload file back, then let e2fsck check the whole filesystem."""
    listing = _list_dirs(rootfs, sorted({str(i.guest.parent) for i in items}), epoch)
    for item in items:
        mode, size = listing.get(str(item.guest.parent), {}).get(item.guest.name, (0, -1))
        if mode != stat.S_IFREG | item.mode or size != item.size:
            raise RemasterError(f"{item.guest} reads back as mode {mode:o} size {size}")
        if _cat_sha256(rootfs, str(item.guest)) != item.sha256:
            raise RemasterError(f"{item.guest} reads back with different content")
    result = subprocess.run([_tool("e2fsck"), "-fn", str(rootfs)], capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stdout.strip().splitlines()[-3:]
        raise RemasterError(f"e2fsck finds the remastered rootfs damaged: {' / '.join(tail)}")


def _cat_sha256(image: Path, path: str) -> str:
    h = hashlib.sha256()
    with subprocess.Popen(
        [_tool("debugfs"), "-R", f"cat {path}", str(image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        while block := proc.stdout.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- payload


def _stage_payload(
    payload: Mapping[str, Path | bytes], modes: Mapping[str, int] | None, stage: Path
) -> list[_Item]:
    """Validate the payload and give each file a plain name debugfs can `write` from."""
    modes = dict(modes or {})
    items: dict[str, _Item] = {}
    for n, (guest, source) in enumerate(sorted(payload.items())):
        path = _guest_path(guest)
        if str(path) in items:
            raise RemasterError(f"payload names {path} twice")
        staged = stage / str(n)
        if isinstance(source, bytes | bytearray):
            staged.write_bytes(source)
            default = 0o644
        else:
            host = Path(source)
            if not host.is_file():
                raise RemasterError(f"payload file {host} (for {guest}) does not exist")
            staged.symlink_to(host.resolve())
            default = 0o755 if os.stat(host).st_mode & 0o111 else 0o644
        mode = modes.pop(guest, default)
        if not 0 <= mode <= 0o7777:
            raise RemasterError(f"mode {mode:o} for {guest} is not a permission value")
        items[str(path)] = _Item(path, staged, mode, staged.stat().st_size, sha256_file(staged))
    if modes:
        raise RemasterError(f"modes given for paths not in the payload: {sorted(modes)}")
    _refuse_nesting(list(items))
    return list(items.values())


def _guest_path(guest: str) -> PurePosixPath:
    path = PurePosixPath(guest)
    if not _SAFE_GUEST.match(guest) or ".." in path.parts or str(path) in ("/", "."):
        raise RemasterError(
            f"payload path {guest!r} must be absolute, without '..', spaces or quotes"
        )
    return path


def _refuse_nesting(paths: list[str]) -> None:
    for p in paths:
        for q in paths:
            if q.startswith(p + "/"):
                raise RemasterError(f"payload uses {p} both as a file and as a directory")


# --------------------------------------------------------------------------- FAT

_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "TZ": "UTC"}


def _fat_get(fat: Path, name: str, dst: Path) -> None:
    try:
        _run([_tool("mcopy"), "-n", "-i", str(fat), f"::{name}", str(dst)], _MTOOLS_ENV)
    except RemasterError as e:
        raise RemasterError(f"no {name} on the FAT boot partition ({e})") from e


def _fat_put(fat: Path, src: Path, name: str, epoch: int) -> None:
    os.utime(src, (epoch, epoch))  # mcopy -m stores this time: reproducible directory entry
    _run([_tool("mcopy"), "-o", "-m", "-i", str(fat), str(src), f"::{name}"], _MTOOLS_ENV)


def _update_boot(
    fat: Path, workdir: Path, ion_size: int, epoch: int
) -> tuple[bool, list[IonChange], list[str]]:
    boot_sd = workdir / "boot.sd"
    _fat_get(fat, "boot.sd", boot_sd)
    new, changes, configs = edit_fit(boot_sd.read_bytes(), ion_size)
    if new is None:
        return False, changes, configs
    problems = fit.verify(new)
    if problems:  # a bug here, never the input's fault
        raise RemasterError(f"rebuilt boot.sd does not verify: {'; '.join(problems)}")
    boot_sd.write_bytes(new)
    _fat_put(fat, boot_sd, "boot.sd", epoch)
    return True, changes, configs


# --------------------------------------------------------------------------- image


def _extract(image: Path, part: Partition, dst: Path) -> None:
    with open(image, "rb", buffering=0) as src, open(dst, "wb") as out:
        src.seek(part.start)
        _copy(src, out, part.size)
        out.truncate(part.size)  # a trailing hole was seeked over, not written


def _copy(src: BinaryIO, dst: BinaryIO, length: int, h: _Hash | None = None) -> None:
    """Copy `length` bytes from src's position (unbuffered), feeding `h`. Holes in src are
    not even read and all-zero chunks are seeked over, so sparse stays sparse and fast."""
    zero = bytes(CHUNK)
    pos, end = src.tell(), src.tell() + length
    while pos < end:
        data = _next_data(src, pos, end)
        if data > pos:
            dst.seek(data - pos, os.SEEK_CUR)
            _hash_zeros(h, data - pos, zero)
            pos = src.seek(data)
            continue
        block = src.read(min(CHUNK, end - pos))
        if not block:
            raise RemasterError("image ended early while copying")
        if block == zero[: len(block)]:
            dst.seek(len(block), os.SEEK_CUR)
        else:
            dst.write(block)
        if h is not None:
            h.update(block)
        pos += len(block)


def _hash_zeros(h: _Hash | None, n: int, zero: bytes) -> None:
    while h is not None and n > 0:
        h.update(zero[: min(n, len(zero))])
        n -= len(zero)


def _next_data(src: BinaryIO, pos: int, end: int) -> int:
    """The first offset >= pos holding data (end if only a hole is left before it)."""
    try:
        return min(os.lseek(src.fileno(), pos, os.SEEK_DATA), end)
    except OSError as e:  # ENXIO: hole up to EOF; anything else: no SEEK_DATA here
        return end if e.errno == errno.ENXIO else pos
    finally:
        os.lseek(src.fileno(), pos, os.SEEK_SET)


def _assemble(base: Path, out: Path, replacements: list[tuple[Partition, Path]]) -> str:
    """Write out = base with each partition's bytes taken from its file; return the sha256."""
    size = base.stat().st_size
    h = hashlib.sha256()
    with open(base, "rb", buffering=0) as src, atomic_writer(out) as dst:
        pos = 0
        for part, path in sorted(replacements, key=lambda r: r[0].start):
            if path.stat().st_size != part.size:  # a tool grew or shrank it: never shift data
                raise RemasterError(f"partition {part.index} changed size while remastering")
            src.seek(pos)
            _copy(src, dst, part.start - pos, h)
            with open(path, "rb", buffering=0) as new:
                _copy(new, dst, part.size, h)
            pos = part.end
        src.seek(pos)
        _copy(src, dst, size - pos, h)
        dst.truncate(size)
    return h.hexdigest()


def remaster(
    base_img: Path,
    out_img: Path,
    payload: Mapping[str, Path | bytes],
    *,
    ion_size: int | None = 0,
    modes: Mapping[str, int] | None = None,
    source_date_epoch: int,
) -> RemasterReport:
    """Write `out_img`: `base_img` with `payload` (guest absolute path -> host file or bytes)
    in its rootfs and the ION reservation set to `ion_size` bytes (0 = removed, None = left
    alone). Files get `modes[path]` (default 0644, 0755 for executable host files),
    uid/gid 0 and `source_date_epoch` as every timestamp."""
    base_img, out_img = Path(base_img), Path(out_img)
    if ion_size is not None and (ion_size < 0 or ion_size % 4096):
        raise RemasterError(f"ion_size {ion_size} must be a non-negative multiple of 4 KiB")
    _ensure_tools()
    parts = read_mbr(base_img)
    fat, root = _pick_partitions(base_img, parts)
    out_img.parent.mkdir(parents=True, exist_ok=True)
    # work beside the output: the rootfs copy can be large and /tmp may be a small tmpfs
    with tempfile.TemporaryDirectory(prefix=f".{out_img.name}.", dir=out_img.parent) as tmp:
        work = Path(tmp)
        (work / "payload").mkdir()
        items = _stage_payload(payload, modes, work / "payload")
        _extract(base_img, root, work / "rootfs.ext4")
        files, free_before, free_after = _update_rootfs(
            work / "rootfs.ext4", items, work / "payload", source_date_epoch
        )
        replacements = [(root, work / "rootfs.ext4")]
        changed, ion, configs, notes = False, [], [], []
        if ion_size is not None:
            _extract(base_img, fat, work / "boot.vfat")
            changed, ion, configs = _update_boot(
                work / "boot.vfat", work, ion_size, source_date_epoch
            )
            if changed:
                replacements.append((fat, work / "boot.vfat"))
            elif not ion:
                notes.append("no ION change needed: boot.sd left as it was")
        sha256 = _assemble(base_img, out_img, replacements)
    notes += [
        f"partition {p.index} ({p.kind}) extends past the end of the image file"
        for p in parts
        if p.end > base_img.stat().st_size
    ]
    return RemasterReport(
        base_img, out_img, sha256, parts, free_before, free_after,
        files, ion, configs, changed, notes,
    )  # fmt: skip
