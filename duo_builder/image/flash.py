"""Write an SD-card image to a TF card, refusing anything that looks like the wrong disk.

Refused: a device that does not exist or is not a block device (regular files only with
allow_regular_file, for tests), a partition instead of a whole disk, the disk holding
/ or /boot, a disk with any partition mounted, used as swap or held by device-mapper/RAID,
and a card smaller than the image. Before anything is written the image's manifest
(out/<recipe>.manifest.json beside out/<recipe>.img) must say it was made for the board
(the QEMU image cannot boot a Duo; force=True overrides), and the device's model and size
are shown and confirmed (yes=True skips the question). The image is written in 4 MiB
chunks, fsync'ed, the cached pages dropped, then read back from the device and compared
by sha256.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from duo_builder.errors import BuildError

CHUNK = 4 << 20
BOARD = "milkv-duo"  # what a TF card written here boots
SYS_BLOCK = Path("/sys/dev/block")
_GUARDED = ("/", "/boot")  # mount points whose disk is the running system


class FlashError(BuildError):
    """Flashing was refused or failed; the message names the device and the fix."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str


def parse_mounts(text: str) -> list[Mount]:
    """/proc/mounts (or /proc/swaps, whose target becomes "[swap]") as Mount entries."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] == "Filename":  # /proc/swaps header
            continue
        target = "[swap]" if fields[1] in ("partition", "file") else _unescape(fields[1])
        mounts.append(Mount(_unescape(fields[0]), target))
    return mounts


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in mount fields as \\ooo."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def refusal(
    disk: str, mounts: Iterable[Mount], disk_of: Callable[[Mount], str | None]
) -> str | None:
    """Why the whole disk `disk` (a kernel name such as "sdb") must not be written, or None.
    `disk_of` maps a mount to the whole disk under it (None if not on a disk)."""
    mounts = list(mounts)
    for m in mounts:
        if m.target in _GUARDED and disk_of(m) == disk:
            return (
                f"it is the disk holding {m.target} of this computer (the running system); "
                "pick the TF card instead (check `lsblk`)"
            )
    for m in mounts:
        if disk_of(m) == disk:
            what = "used as swap" if m.target == "[swap]" else f"mounted at {m.target}"
            fix = f"swapoff {m.source}" if m.target == "[swap]" else f"umount {m.source}"
            return f"{m.source} is {what}; run `{fix}` first"
    return None


# ------------------------------------------------------------------ the real system


def _sysfs(dev: int) -> Path | None:
    path = SYS_BLOCK / f"{os.major(dev)}:{os.minor(dev)}"
    return path.resolve() if path.exists() else None


def _disk_of_dev(dev: int) -> str | None:
    """Whole-disk kernel name for a block device number (a partition maps to its disk)."""
    node = _sysfs(dev)
    if node is None:
        return None
    return node.parent.name if (node / "partition").exists() else node.name


def _disk_of_mount(m: Mount) -> str | None:
    if m.source.startswith("/dev/"):
        try:
            st = os.stat(m.source)
            if stat.S_ISBLK(st.st_mode):
                return _disk_of_dev(st.st_rdev)
        except OSError:
            pass  # e.g. /dev/root, which only the kernel knows: use the mount point instead
    if m.target in _GUARDED:
        try:
            return _disk_of_dev(os.stat(m.target).st_dev)
        except OSError:
            return None
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _holders(disk: str) -> list[str]:
    """device-mapper / md devices built on the disk or its partitions."""
    base = Path("/sys/block") / disk
    dirs = [base, *(p for p in base.glob(f"{disk}*") if (p / "partition").exists())]
    return sorted(h.name for d in dirs for h in (d / "holders").glob("*"))


def _check_block_device(device: Path, st: os.stat_result) -> int:
    """Refuse partitions and in-use disks; return the device size in bytes."""
    node = _sysfs(st.st_rdev)
    if node is None:
        raise FlashError(f"{device}: no sysfs entry for this block device; is the card inserted?")
    if (node / "partition").exists():
        raise FlashError(
            f"{device} is a partition of /dev/{node.parent.name}; flash the whole card: "
            f"/dev/{node.parent.name}"
        )
    mounts = parse_mounts(_read("/proc/mounts")) + parse_mounts(_read("/proc/swaps"))
    why = refusal(node.name, mounts, _disk_of_mount)
    if why is None and (held := _holders(node.name)):
        why = f"it is held by {', '.join(held)} (LVM, RAID or dm-crypt); release that first"
    if why:
        raise FlashError(f"refusing to write {device}: {why}")
    return int((node / "size").read_text()) * 512


def _target_size(device: Path, allow_regular_file: bool) -> tuple[int, bool]:
    """(size in bytes, is a block device), after every safety check."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise FlashError(f"{device} does not exist; insert the card and check `lsblk`") from None
    if stat.S_ISBLK(st.st_mode):
        return _check_block_device(device, st), True
    if allow_regular_file and stat.S_ISREG(st.st_mode):
        return st.st_size, False
    raise FlashError(
        f"{device} is not a block device; give the TF card's whole-disk device, "
        "e.g. /dev/sdX or /dev/mmcblkN (check `lsblk`)"
    )


# ------------------------------------------------------------------ what and where


@dataclass(frozen=True)
class ImageInfo:
    recipe: str
    board: str
    manifest: Path | None


def manifest_path(image: Path) -> Path:
    """out/<recipe>.manifest.json for out/<recipe>.img."""
    stem = image.name[: -len(".img")] if image.name.endswith(".img") else image.name
    return image.with_name(f"{stem}.manifest.json")


def image_info(image: Path) -> ImageInfo | None:
    """The recipe and board the image was built for, from its manifest; None without one."""
    path = manifest_path(image)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        recipe = str(data["recipe"])
        # manifests written before "board" was recorded: a debian base is the QEMU image
        board = data.get("board") or ("qemu-virt" if data["base"]["kind"] == "debian" else BOARD)
        size = data.get("image", {}).get("size")
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"{path}: not a readable image manifest ({e}); rebuild the image"
        raise FlashError(why) from None
    if size is not None and size != image.stat().st_size:
        raise FlashError(
            f"{path} describes a {size}-byte image but {image} has {image.stat().st_size} "
            "bytes: the image was changed after it was built; rebuild it (`invoke image`)"
        )
    return ImageInfo(recipe, str(board), path)


def check_board(image: Path, info: ImageInfo | None, force: bool) -> None:
    """Refuse an image made for another board, or one without a manifest, unless forced."""
    if force:
        return
    if info is None:
        raise FlashError(
            f"{image}: no manifest beside it ({manifest_path(image).name}), so nothing says it "
            f"boots a {BOARD}; build it with `invoke image`, or pass --force to write it anyway"
        )
    if info.board != BOARD:
        raise FlashError(
            f"{image} was built for {info.board} (recipe {info.recipe}), not a {BOARD}: it "
            "cannot boot the board (`invoke recipes` lists the Duo ones, e.g. duo-64m); "
            "--force writes it anyway"
        )


def describe_device(device: Path, capacity: int, block: bool) -> str:
    """What the user is about to overwrite: vendor, model and size from sysfs."""
    size = f"{capacity / 1e9:.1f} GB ({capacity} bytes)"
    if not block:
        return f"{device}: a regular file, {size}"
    node = _sysfs(os.stat(device).st_rdev)
    words = []
    for field in ("vendor", "model", "name"):  # name: SD cards in a native mmc slot
        text = _read(str(node / "device" / field)).strip() if node else ""
        if text and text not in words:
            words.append(text)
    removable = _read(str(node / "removable")).strip() == "1" if node else False
    what = " ".join(words) or "unknown model"
    return f"{device}: {what}, {size}{', removable' if removable else ''}"


def _ask_terminal(question: str) -> str:
    if not sys.stdin.isatty():
        raise FlashError("no terminal to confirm on: check the device, then pass --yes")
    return input(question)


def confirm(
    image: Path, info: ImageInfo | None, device_line: str, ask: Callable[[str], str]
) -> None:
    what = f"{info.recipe} for {info.board}" if info else "no manifest"
    answer = ask(
        f"write {image.name} ({what}, {image.stat().st_size / 2**20:.0f} MiB) to\n"
        f"  {device_line}\nEverything on it will be lost. Type yes to continue: "
    )
    if answer.strip().lower() != "yes":
        raise FlashError(f"{device_line.split(':')[0]}: not written (answer was not yes)")


# ------------------------------------------------------------------ writing


def _open_target(device: Path, block: bool) -> int:
    # O_EXCL on a block device: the kernel itself refuses if anything has it mounted/held
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_EXCL if block else 0)
    try:
        return os.open(device, flags)
    except PermissionError:
        raise FlashError(
            f"no permission to write {device}; run as root or join the `disk` group"
        ) from None
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise FlashError(f"{device} is busy (mounted or in use); unmount it first") from None
        raise FlashError(f"cannot open {device}: {e.strerror}") from None


def _bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
        leave=False,
    )


def _write(image: Path, fd: int, size: int, progress: bool, name: str) -> str:
    h = hashlib.sha256()
    with open(image, "rb") as src, _bar(size, f"write {name}", progress) as bar:
        while block := src.read(CHUNK):
            h.update(block)
            view = memoryview(block)
            while view:  # os.write may write less than asked on devices
                view = view[os.write(fd, view) :]
            bar.update(len(block))
    os.fsync(fd)
    return h.hexdigest()


def _read_back(device: Path, size: int, progress: bool) -> str:
    h = hashlib.sha256()
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # drop cached pages so the comparison reads what the card actually stored
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with _bar(size, f"verify {device.name}", progress) as bar:
            remaining = size
            while remaining:
                block = os.read(fd, min(CHUNK, remaining))
                if not block:
                    raise FlashError(f"{device} ended after {size - remaining} bytes on read-back")
                h.update(block)
                remaining -= len(block)
                bar.update(len(block))
    finally:
        os.close(fd)
    return h.hexdigest()


def flash(
    image: Path,
    device: Path,
    *,
    progress: bool = True,
    allow_regular_file: bool = False,
    force: bool = False,
    yes: bool = False,
    ask: Callable[[str], str] = _ask_terminal,
) -> str:
    """Write `image` to the whole-disk `device`, verify by reading back; return its sha256.
    The image must be made for the board (its manifest) unless `force`; the device is shown
    and `ask` must answer "yes" unless `yes`."""
    image, device = Path(image), Path(os.path.realpath(device))  # by-id links -> /dev/sdX
    if not image.is_file():
        raise FlashError(f"image {image} does not exist")
    info = image_info(image)
    check_board(image, info, force)
    size = image.stat().st_size
    capacity, block = _target_size(device, allow_regular_file)
    if size > capacity:
        raise FlashError(
            f"{device} holds {capacity} bytes but {image.name} needs {size} "
            f"({size - capacity} more); use a card of at least {-(-size // (1 << 30))} GiB"
        )
    line = describe_device(device, capacity, block)
    if yes:
        print(f"writing {image.name} to {line}", file=sys.stderr)
    else:
        confirm(image, info, line, ask)
    fd = _open_target(device, block)
    try:
        written = _write(image, fd, size, progress, device.name)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    read = _read_back(device, size, progress)
    if read != written:
        raise FlashError(
            f"read-back of {device} differs from {image.name} (wrote {written[:12]}, read "
            f"{read[:12]}): the card may be failing or fake-capacity; try another card"
        )
    return read
