"""flash(): the real write/verify path on a regular file; the manifest's board check and
the confirmation; the refusal rules on fake /proc/mounts text and, read-only, on this
machine's real root disk (never written)."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from duo_builder.image import flash as fl
from duo_builder.image.flash import FlashError, Mount, flash, parse_mounts, refusal

MIB = 1 << 20


def _manifest(image: Path, board: str = "milkv-duo", **extra) -> Path:
    """What `invoke image` writes beside out/<recipe>.img (the fields flash reads)."""
    data = {
        "recipe": image.name.removesuffix(".img"),
        "board": board,
        "base": {"kind": "debian" if board == "qemu-virt" else "sdk"},
        "image": {"file": image.name, "size": image.stat().st_size},
        **extra,
    }
    path = image.with_name(image.name.removesuffix(".img") + ".manifest.json")
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "duo.img"
    path.write_bytes(os.urandom(9 * MIB + 4321))  # several chunks plus a ragged tail
    _manifest(path)
    return path


def _card(tmp_path: Path, size: int) -> Path:
    card = tmp_path / "card.bin"
    card.write_bytes(b"\xff" * size)  # an erased card
    return card


def test_flash_to_a_regular_file_and_verify(image, tmp_path, capsys):
    card = _card(tmp_path, 16 * MIB)
    digest = flash(image, card, allow_regular_file=True, progress=True, yes=True)
    data = image.read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    written = card.read_bytes()
    assert written[: len(data)] == data
    assert written[len(data) :] == b"\xff" * (16 * MIB - len(data))  # rest untouched
    err = capsys.readouterr().err
    assert "write card.bin" in err  # the tqdm bar
    assert f"writing duo.img to {card}: a regular file, 0.0 GB ({16 * MIB} bytes)" in err


def test_exact_size_card_is_enough(image, tmp_path):
    card = _card(tmp_path, image.stat().st_size)
    assert flash(image, card, allow_regular_file=True, progress=False, yes=True)


def test_too_small_card_refused(image, tmp_path):
    card = _card(tmp_path, 4 * MIB)
    with pytest.raises(FlashError, match=rf"{re.escape(str(card))} holds {4 * MIB} bytes.*1 GiB"):
        flash(image, card, allow_regular_file=True, progress=False, yes=True)
    assert card.read_bytes() == b"\xff" * (4 * MIB)


def test_regular_file_needs_the_test_switch(image, tmp_path):
    card = _card(tmp_path, 16 * MIB)
    with pytest.raises(FlashError, match="not a block device.*lsblk"):
        flash(image, card, progress=False)


def test_missing_device_and_image(image, tmp_path):
    with pytest.raises(FlashError, match="does not exist; insert the card"):
        flash(image, tmp_path / "sdz", progress=False)
    with pytest.raises(FlashError, match="image .* does not exist"):
        flash(tmp_path / "none.img", tmp_path / "sdz", progress=False)


def test_read_back_mismatch_reported(image, tmp_path, monkeypatch):
    card = _card(tmp_path, 16 * MIB)
    monkeypatch.setattr(fl, "_read_back", lambda *a: "0" * 64)
    with pytest.raises(FlashError, match="read-back of .* differs.*try another card"):
        flash(image, card, allow_regular_file=True, progress=False, yes=True)


# ------------------------------------------------------------------ board and confirmation


def test_qemu_image_refused_for_a_tf_card_unless_forced(tmp_path):
    img = tmp_path / "qemu-virt-64m.img"
    img.write_bytes(os.urandom(MIB))
    _manifest(img, board="qemu-virt")
    card = _card(tmp_path, 2 * MIB)
    with pytest.raises(FlashError, match="built for qemu-virt .*cannot boot.*--force"):
        flash(img, card, allow_regular_file=True, progress=False, yes=True)
    assert card.read_bytes() == b"\xff" * (2 * MIB)
    flash(img, card, allow_regular_file=True, progress=False, yes=True, force=True)
    assert card.read_bytes()[:MIB] == img.read_bytes()


def test_old_manifest_without_board_judged_by_its_base(tmp_path):
    img = tmp_path / "qemu-virt-64m.img"
    img.write_bytes(os.urandom(MIB))
    path = _manifest(img, board="qemu-virt")
    data = json.loads(path.read_text())
    del data["board"]
    path.write_text(json.dumps(data))
    with pytest.raises(FlashError, match="built for qemu-virt"):
        flash(img, _card(tmp_path, 2 * MIB), allow_regular_file=True, progress=False, yes=True)


def test_image_without_manifest_or_changed_since_refused(tmp_path):
    img = tmp_path / "other.img"
    img.write_bytes(os.urandom(MIB))
    card = _card(tmp_path, 2 * MIB)
    with pytest.raises(FlashError, match="no manifest beside it .*--force"):
        flash(img, card, allow_regular_file=True, progress=False, yes=True)
    _manifest(img)
    img.write_bytes(os.urandom(MIB + 1))
    with pytest.raises(FlashError, match="changed after it was built"):
        flash(img, card, allow_regular_file=True, progress=False, yes=True)
    assert card.read_bytes() == b"\xff" * (2 * MIB)


def test_asks_with_the_device_and_writes_only_on_yes(image, tmp_path):
    card = _card(tmp_path, 16 * MIB)
    asked = []

    def answer(reply: str):
        return lambda question: asked.append(question) or reply

    with pytest.raises(FlashError, match="not written"):
        flash(image, card, allow_regular_file=True, progress=False, ask=answer("no"))
    assert card.read_bytes() == b"\xff" * (16 * MIB)
    assert "duo.img (duo for milkv-duo, 9 MiB)" in asked[0]
    assert f"{card}: a regular file, 0.0 GB ({16 * MIB} bytes)" in asked[0]
    flash(image, card, allow_regular_file=True, progress=False, ask=answer("yes\n"))
    assert card.read_bytes()[: image.stat().st_size] == image.read_bytes()


def test_without_a_terminal_it_asks_for_yes(image, tmp_path):
    card = _card(tmp_path, 16 * MIB)
    with pytest.raises(FlashError, match="no terminal to confirm on.*--yes"):
        flash(image, card, allow_regular_file=True, progress=False)  # pytest's stdin
    assert card.read_bytes() == b"\xff" * (16 * MIB)


def test_flash_task_refuses_the_qemu_image_in_one_line(tmp_path):
    """The real task: one line, nothing written."""
    img = tmp_path / "qemu-virt-64m.img"
    img.write_bytes(os.urandom(MIB))
    _manifest(img, board="qemu-virt")
    p = subprocess.run(
        [sys.executable, "-m", "invoke", "flash", str(img), str(tmp_path / "card.bin")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).parents[1],
    )
    assert p.returncode == 1
    assert p.stderr.strip().startswith("error: ") and "built for qemu-virt" in p.stderr
    assert "Traceback" not in p.stderr


# ------------------------------------------------------------------ refusal rules

MOUNTS = r"""sysfs /sys sysfs rw,nosuid 0 0
/dev/mmcblk0p2 / ext4 rw,relatime 0 0
/dev/mmcblk0p1 /boot vfat rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/sdb1 /media/me/boot\040fs vfat rw,nosuid 0 0
"""
SWAPS = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/sdc2                               partition\t1048572\t\t0\t\t-2
"""


def _fake_disk_of(m: Mount) -> str | None:
    found = re.match(r"/dev/(sd[a-z]|mmcblk\d+|nvme\d+n\d+)", m.source)
    return found.group(1) if found else None


def test_root_disk_refused():
    why = refusal("mmcblk0", parse_mounts(MOUNTS), _fake_disk_of)
    assert why and "holding / of this computer" in why


def test_boot_disk_refused():
    mounts = parse_mounts("/dev/nvme0n1p2 / ext4 rw 0 0\n/dev/sda1 /boot ext4 rw 0 0\n")
    assert "holding /boot" in refusal("sda", mounts, _fake_disk_of)


def test_mounted_card_refused_with_the_unmount_command():
    why = refusal("sdb", parse_mounts(MOUNTS), _fake_disk_of)
    assert why == "/dev/sdb1 is mounted at /media/me/boot fs; run `umount /dev/sdb1` first"


def test_swap_on_the_card_refused():
    why = refusal("sdc", parse_mounts(MOUNTS) + parse_mounts(SWAPS), _fake_disk_of)
    assert why == "/dev/sdc2 is used as swap; run `swapoff /dev/sdc2` first"


def test_unmounted_card_allowed():
    assert refusal("sdd", parse_mounts(MOUNTS) + parse_mounts(SWAPS), _fake_disk_of) is None


def _real_root() -> Mount:
    for m in parse_mounts(Path("/proc/mounts").read_text()):
        if m.target == "/":
            return m
    pytest.skip("no / in /proc/mounts")


def test_this_machines_root_disk_is_refused():
    """Only the checks run (sysfs and /proc reads); the root disk is never opened."""
    disk = fl._disk_of_mount(_real_root())
    if disk is None or not Path(f"/dev/{disk}").exists():
        pytest.skip("/ is not on a local block device here (overlay, NFS, ...)")
    with pytest.raises(FlashError, match=rf"refusing to write /dev/{disk}: .*holding /"):
        fl._target_size(Path(f"/dev/{disk}"), allow_regular_file=False)


def test_this_machines_root_partition_is_refused_as_a_partition():
    root = _real_root()
    st = os.stat(root.source) if root.source.startswith("/dev/") else None
    node = fl._sysfs(st.st_rdev) if st else None
    if node is None or not (node / "partition").exists():
        pytest.skip("/ is not on a partition here")
    with pytest.raises(FlashError, match="is a partition of"):
        fl._target_size(Path(root.source), allow_regular_file=False)
