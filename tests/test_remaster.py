"""remaster(): build a miniature release image, remaster it, read everything back with
the standard tools (mtools, debugfs, dumpimage, fdtget, fsck) rather than our own code."""

import hashlib
import os
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
from remaster_fixture import (
    CONFIG,
    DTB_IMAGE,
    EPOCH,
    ION_SIZE,
    build_release_image,
    compile_dts,
    debugfs,
    debugfs_cat,
    duo_dts,
    extract,
    fat_read,
    fdtget,
    fdtget_bytes,
    fdtput,
    run,
)

from duo_builder.build.hostdeps import HostDependencyError
from duo_builder.errors import BuildError
from duo_builder.image import fdt, fit
from duo_builder.image.bases import remaster as rm
from duo_builder.image.bases.remaster import RemasterError, remaster

MODEL = bytes(range(256)) * 300 + b"tail"  # 76.8 kB, not block-aligned
RUNNER = b'#!/bin/sh\nexec /opt/story/llama2 "$@"\n'
HASHES = {
    "sha256": lambda d: hashlib.sha256(d).digest(),
    "sha1": lambda d: hashlib.sha1(d).digest(),
    "crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    try:
        return build_release_image(tmp_path_factory.mktemp("release"))
    except HostDependencyError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def host_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("payload") / "stories.bin"
    path.write_bytes(MODEL)
    return path


def _payload(model: Path) -> dict:
    return {
        "/opt/story/model.bin": model,
        "/usr/bin/storyteller": RUNNER,
        "/etc/hostname": b"storybot\n",  # replaces the image's own
    }


@pytest.fixture(scope="module")
def remastered(release, host_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "duo-story.img"
    start = time.perf_counter()
    report = remaster(
        release.image, out, _payload(host_model),
        modes={"/usr/bin/storyteller": 0o755}, source_date_epoch=EPOCH,
    )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return out, report


def _parts(image: Path):
    return {p.index: p for p in rm.read_mbr(image)}


def _boot_sd(image: Path, tmp: Path) -> Path:
    fat = _parts(image)[1]
    return fat_read(extract(image, fat.start, fat.size, tmp / "fat.img"), "boot.sd", tmp / "b.sd")


def _rootfs(image: Path, tmp: Path) -> Path:
    root = _parts(image)[2]
    return extract(image, root.start, root.size, tmp / "rootfs.ext4")


def _dtb(boot_sd: Path, tmp: Path) -> Path:
    dst = tmp / "x.dtb"
    run(["dumpimage", "-T", "flat_dt", "-p", "1", "-o", str(dst), str(boot_sd)])
    return dst


# ------------------------------------------------------------------ the fixture itself


def test_fixture_is_laid_out_like_the_release(release, tmp_path):
    parts = _parts(release.image)
    assert [(p.index, p.type_id, p.bootable) for p in parts.values()] == [
        (1, 0x0C, True), (2, 0x83, False), (3, 0x82, False),
    ]  # fmt: skip
    listing = run(["dumpimage", "-l", str(release.boot_sd)])
    assert f"Configuration 0 ({CONFIG})" in listing and "lzma compressed" in listing
    dtb = _dtb(_boot_sd(release.image, tmp_path), tmp_path)
    assert fdtget(dtb, "/reserved-memory/ion@83000000", "size") == f"0 {ION_SIZE}"


# ------------------------------------------------------------------ the remastered image


def test_layout_and_everything_outside_the_partitions_unchanged(release, remastered):
    out, report = remastered
    base, new = release.image.read_bytes(), out.read_bytes()
    assert len(new) == len(base)
    assert new[:512] == base[:512]  # MBR: partition table and disk signature
    parts = _parts(out)
    assert parts == _parts(release.image) and report.partitions == list(parts.values())
    fat, root = parts[1], parts[2]
    assert new[512 : fat.start] == base[512 : fat.start]
    assert new[fat.end : root.start] == base[fat.end : root.start]
    assert new[root.end :] == base[root.end :]
    assert any("extends past the end" in n for n in report.notes)  # unwritten swap


def test_payload_files_in_rootfs(remastered, host_model, tmp_path):
    out, report = remastered
    rootfs = _rootfs(out, tmp_path)
    expect = {"/opt/story/model.bin": (MODEL, 0o644), "/usr/bin/storyteller": (RUNNER, 0o755),
              "/etc/hostname": (b"storybot\n", 0o644)}  # fmt: skip
    for path, (content, mode) in expect.items():
        assert debugfs_cat(rootfs, path) == content
        st = debugfs(rootfs, f"stat {path}")
        assert re.search(rf"Mode:\s+0?{mode:o}\b", st), st
        assert re.search(r"User:\s+0\s+Group:\s+0\b", st)
        for t in ("ctime", "atime", "mtime", "crtime"):
            assert re.search(rf"{t}: 0x{EPOCH:08x}:00000000", st), (t, st)
    new_dirs = debugfs(rootfs, "stat /opt/story")
    assert "Mode:  0755" in new_dirs and f"mtime: 0x{EPOCH:08x}" in new_dirs
    assert debugfs_cat(rootfs, "/etc/os-release").startswith(b'NAME="Buildroot"')
    run(["e2fsck", "-fn", str(rootfs)])
    files = {f.path: f for f in report.files}
    assert files["/etc/hostname"].replaced and not files["/opt/story/model.bin"].replaced
    assert files["/opt/story/model.bin"].sha256 == hashlib.sha256(MODEL).hexdigest()
    assert report.rootfs_free_after < report.rootfs_free_before


def test_dtb_ion_removed_and_consumer_disabled(release, remastered, tmp_path):
    out, report = remastered
    dtb = _dtb(_boot_sd(out, tmp_path), tmp_path)
    assert fdtget(dtb, "/reserved-memory", None, "-l").split() == ["rtos_dram@82f40000"]
    rtos = fdtget(dtb, "/reserved-memory/rtos_dram@82f40000", "reg", "-t", "x")
    assert rtos == "0 82f40000 0 c0000"
    assert fdtget(dtb, "/cvitek-ion/heap_carveout@0", "status") == "disabled"
    assert fdtget(dtb, "/cvitek-ion", "status") == "disabled"
    assert fdtget(dtb, "/c906l_rproc@0", "status") == "okay"
    assert fdtget(dtb, "/memory@80000000", "reg", "-t", "x") == "0 80000000 0 4000000"
    [change] = report.ion
    assert (change.fit_image, change.node, change.before, change.after) == (
        DTB_IMAGE, "/reserved-memory/ion@83000000", ION_SIZE, None,
    )  # fmt: skip
    assert change.disabled == ("/cvitek-ion/heap_carveout@0", "/cvitek-ion")


def test_fit_hashes_valid_and_configuration_kept(release, remastered, tmp_path):
    out, report = remastered
    boot_sd = _boot_sd(out, tmp_path)
    listing = run(["dumpimage", "-l", str(boot_sd)])
    assert f"Configuration 0 ({CONFIG})" in listing and f"FDT:          {DTB_IMAGE}" in listing
    assert fdtget(boot_sd, "/configurations", None, "-l").split() == [CONFIG]
    assert fdtget(boot_sd, "/", "timestamp") == str(EPOCH)
    printed = re.findall(r"Hash value:\s+([0-9a-f]+)", listing)
    computed = []
    for image in ("kernel-1", DTB_IMAGE):  # recomputed here from fdtget's bytes
        data = fdtget_bytes(boot_sd, f"/images/{image}", "data")
        for h in fdtget(boot_sd, f"/images/{image}", None, "-l").split():
            algo = fdtget(boot_sd, f"/images/{image}/{h}", "algo")
            value = fdtget_bytes(boot_sd, f"/images/{image}/{h}", "value")
            assert HASHES[algo](data) == value, (image, h)
            computed.append(value.hex())
    assert printed == computed and len(computed) == 5
    kernel = fdtget_bytes(boot_sd, "/images/kernel-1", "data")
    assert kernel == release.kernel.read_bytes()
    assert fit.verify(boot_sd.read_bytes()) == []
    assert boot_sd.stat().st_size == release.boot_sd.stat().st_size  # its free space kept
    assert report.boot_sd_changed and report.fit_configurations == [CONFIG]


def test_boot_partition_still_sound(release, remastered, tmp_path):
    out, _ = remastered
    fat = _parts(out)[1]
    fat_img = extract(out, fat.start, fat.size, tmp_path / "fat.img")
    run(["fsck.vfat", "-n", str(fat_img)])
    assert fat_read(fat_img, "fip.bin", tmp_path / "fip").read_bytes() == release.fip.read_bytes()
    assert "boot     sd" in run(["mdir", "-i", str(fat_img), "::"], env=rm._MTOOLS_ENV)


def test_same_inputs_same_bytes(release, remastered, host_model, tmp_path):
    out, report = remastered
    time.sleep(1.1)  # a second later: any wall-clock time leaking in would show
    again = remaster(
        release.image, tmp_path / "again.img", _payload(host_model),
        modes={"/usr/bin/storyteller": 0o755}, source_date_epoch=EPOCH,
    )  # fmt: skip
    assert again.sha256 == report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report.seconds < 5
    assert not list(tmp_path.glob(".*"))  # no temp files left beside the output


def test_remastering_again_is_a_no_op_for_ion(remastered, tmp_path):
    out, _ = remastered
    report = remaster(out, tmp_path / "twice.img", {}, source_date_epoch=EPOCH)
    assert report.ion == [] and not report.boot_sd_changed
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(RemasterError, match="no /reserved-memory ion node"):
        remaster(out, tmp_path / "x.img", {}, ion_size=8 << 20, source_date_epoch=EPOCH)


def test_ion_resized_and_untouched(release, tmp_path):
    report = remaster(
        release.image, tmp_path / "8m.img", {}, ion_size=8 << 20, source_date_epoch=EPOCH
    )
    dtb = _dtb(_boot_sd(tmp_path / "8m.img", tmp_path), tmp_path)
    node = "/reserved-memory/ion@83000000"
    assert fdtget(dtb, node, "size", "-t", "x") == "0 800000"
    assert fdtget(dtb, node, "reg", "-t", "x") == "0 83000000 0 800000"
    assert fdtget(dtb, "/cvitek-ion/heap_carveout@0", "compatible") == "cvitek,carveout"
    assert [(c.before, c.after) for c in report.ion] == [(ION_SIZE, 8 << 20)]
    kept = remaster(release.image, tmp_path / "k.img", {}, ion_size=None, source_date_epoch=EPOCH)
    assert kept.ion == [] and not kept.boot_sd_changed


@pytest.mark.parametrize("shape", ["size", "reg"])
def test_set_ion_size_on_both_vendor_shapes(shape, tmp_path):
    dtb = compile_dts(duo_dts(shape), tmp_path / "d.dtb")
    node = "/reserved-memory/ion" + ("@83000000" if shape == "reg" else "")
    new, [change] = rm.set_ion_size(dtb.read_bytes(), 0)
    (tmp_path / "new.dtb").write_bytes(new)
    assert change.after is None and change.node == node
    assert "ion" not in fdtget(tmp_path / "new.dtb", "/reserved-memory", None, "-l")
    new, [change] = rm.set_ion_size(dtb.read_bytes(), 4 << 20)
    (tmp_path / "new.dtb").write_bytes(new)
    assert fdtget(tmp_path / "new.dtb", node, "size", "-t", "x") == "0 400000"
    same, changes = rm.set_ion_size(dtb.read_bytes(), ION_SIZE)
    assert same == dtb.read_bytes() and changes == []


def test_dtb_free_space_kept(tmp_path):
    dts = tmp_path / "d.dts"
    dts.write_text(duo_dts("reg"))
    padded = tmp_path / "p.dtb"
    run(["dtc", "-q", "-p", "1024", "-I", "dts", "-O", "dtb", "-o", str(padded), str(dts)])
    new, _ = rm.set_ion_size(padded.read_bytes(), 0)
    assert len(new) == padded.stat().st_size == struct.unpack(">I", new[4:8])[0]
    (tmp_path / "n.dtb").write_bytes(new)
    assert fdtget(tmp_path / "n.dtb", "/cvitek-ion", "status") == "disabled"


def test_fdt_load_and_dump_round_trip_like_dtc(release, tmp_path):
    for blob in (release.dtb, release.boot_sd):
        rebuilt = tmp_path / "rebuilt"
        rebuilt.write_bytes(fdt.dump(fdt.load(blob.read_bytes(), blob.name)))
        assert run(["dtc", "-I", "dtb", "-O", "dts", str(rebuilt)]) == run(
            ["dtc", "-I", "dtb", "-O", "dts", str(blob)]
        )


def test_verify_fit_catches_a_stale_hash(release, tmp_path):
    stale = shutil.copy(release.boot_sd, tmp_path / "stale.sd")
    data = fdtget_bytes(stale, f"/images/{DTB_IMAGE}", "data") + b"\0\0\0\0"
    fdtput(stale, f"/images/{DTB_IMAGE}", "data", *(f"{b:02x}" for b in data), type="bx")
    problems = fit.verify(stale.read_bytes())
    assert len(problems) == 3 and all(DTB_IMAGE in p for p in problems)


def test_signed_fit_refused(release, tmp_path):
    signed = shutil.copy(release.boot_sd, tmp_path / "signed.sd")
    fdtput(signed, f"/configurations/{CONFIG}/signature-1", "algo", "sha256,rsa2048")
    with pytest.raises(RemasterError, match="signed FIT"):
        rm.edit_fit(signed.read_bytes(), 0)


# ------------------------------------------------------------------ errors


def _patched(image: Path, dst: Path, offset: int, data: bytes) -> Path:
    blob = bytearray(image.read_bytes())
    blob[offset : offset + len(data)] = data
    dst.write_bytes(blob)
    return dst


def test_not_an_mbr_image(release, tmp_path):
    root = _parts(release.image)[2]
    raw = extract(release.image, root.start, root.size, tmp_path / "rootfs.ext4")
    with pytest.raises(RemasterError, match="not an MBR disk image"):
        remaster(raw, tmp_path / "o.img", {}, source_date_epoch=EPOCH)
    fat = _parts(release.image)[1]
    vfat = extract(release.image, fat.start, fat.size, tmp_path / "boot.vfat")  # ends in 55AA
    with pytest.raises(RemasterError, match="not an MBR disk image"):
        remaster(vfat, tmp_path / "o.img", {}, source_date_epoch=EPOCH)
    assert not (tmp_path / "o.img").exists()


def test_missing_rootfs_partition(release, tmp_path):
    img = _patched(release.image, tmp_path / "no-root.img", 446 + 16, bytes(16))
    with pytest.raises(RemasterError, match=r"Linux \(0x83\) rootfs; partitions: p1=fat, p3=swap"):
        remaster(img, tmp_path / "o.img", {}, source_date_epoch=EPOCH)


def test_truncated_image(release, tmp_path):
    img = tmp_path / "short.img"
    img.write_bytes(release.image.read_bytes()[: _parts(release.image)[2].start + 4096])
    with pytest.raises(RemasterError, match="truncated"):
        remaster(img, tmp_path / "o.img", {}, source_date_epoch=EPOCH)


def test_no_boot_sd(tmp_path):
    fixture = build_release_image(tmp_path / "nb", with_boot_sd=False)
    with pytest.raises(RemasterError, match="no boot.sd on the FAT boot partition"):
        remaster(fixture.image, tmp_path / "o.img", {}, source_date_epoch=EPOCH)
    # without touching the DTB, boot.sd is not needed
    remaster(fixture.image, tmp_path / "o.img", {}, ion_size=None, source_date_epoch=EPOCH)


def test_payload_too_big_says_how_much_is_missing(release, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(40 << 20)  # sparse on the host: cheap to make, 40 MiB to store
    with pytest.raises(RemasterError, match=r"does not fit the rootfs.*MiB \(\d+ bytes\) missing"):
        remaster(release.image, tmp_path / "o.img", {"/opt/big": big}, source_date_epoch=EPOCH)
    assert not (tmp_path / "o.img").exists()


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"opt/x": b""}, "must be absolute"),
        ({"/opt/../etc/x": b""}, "must be absolute"),
        ({"/opt/with space": b""}, "must be absolute"),
        ({"/opt/missing": Path("/nonexistent/file")}, "does not exist"),
        ({"/lib64/libstory.so": b"x"}, "symlink on the rootfs"),
        ({"/etc/hostname/x": b"x"}, "is a file on the rootfs"),
        ({"/usr/bin": b"x"}, "is a directory on the rootfs"),
        ({"/a": b"", "/a/b": b""}, "both as a file and as a directory"),
    ],
)
def test_bad_payload(release, tmp_path, payload, match):
    with pytest.raises(RemasterError, match=match):
        remaster(release.image, tmp_path / "o.img", payload, source_date_epoch=EPOCH)


def test_modes_for_unknown_paths(release, tmp_path):
    with pytest.raises(RemasterError, match="not in the payload"):
        remaster(release.image, tmp_path / "o.img", {}, modes={"/x": 0o755},
                 source_date_epoch=EPOCH)  # fmt: skip


def test_missing_tools_named_with_their_package(release, tmp_path, monkeypatch):
    monkeypatch.setattr(rm, "TOOLS", {**rm.TOOLS, "no-such-tool-xyz": "no-such-package"})
    monkeypatch.setattr("os.geteuid", lambda: 1000)  # as a user: report, don't apt-get
    with pytest.raises(RemasterError, match="apt-get install no-such-package"):
        remaster(release.image, tmp_path / "o.img", {}, source_date_epoch=EPOCH)


def test_mbr_parser_reads_entries(tmp_path):
    mbr = bytearray(512)
    struct.pack_into("<B3xB3xII", mbr, 446, 0x80, 0x0C, 2048, 8192)
    struct.pack_into("<B3xB3xII", mbr, 446 + 32, 0x00, 0x83, 10240, 4096)
    mbr[510:] = b"\x55\xaa"
    (tmp_path / "m.img").write_bytes(mbr)
    parts = rm.read_mbr(tmp_path / "m.img")
    assert [(p.index, p.kind, p.start, p.size, p.bootable) for p in parts] == [
        (1, "fat", 2048 * 512, 8192 * 512, True), (3, "linux", 10240 * 512, 4096 * 512, False),
    ]  # fmt: skip
    mbr[446 + 4] = 0xEE
    (tmp_path / "g.img").write_bytes(mbr)
    with pytest.raises(RemasterError, match="GPT"):
        rm.read_mbr(tmp_path / "g.img")


def test_tools_resolved_off_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    if shutil.which("debugfs", path="/usr/sbin:/sbin"):
        assert rm._tool("debugfs").endswith("/debugfs")


def test_sparse_copy_keeps_bytes_and_hash(tmp_path):
    src = tmp_path / "sparse.img"
    with open(src, "wb") as f:  # data, 9 MiB hole, data, zeros written out, trailing hole
        f.write(b"head" * 1000)
        f.seek(9 << 20)
        f.write(b"middle")
        f.write(bytes(5 << 20))
        f.truncate(24 << 20)
    part = rm.Partition(2, 0x83, 512, (24 << 20) - 1024)
    rm._extract(src, part, tmp_path / "part")
    assert (tmp_path / "part").read_bytes() == src.read_bytes()[512 : 512 + part.size]
    sha = rm._assemble(src, tmp_path / "out.img", [(part, tmp_path / "part")])
    assert (tmp_path / "out.img").read_bytes() == src.read_bytes()
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    assert os.stat(tmp_path / "out.img").st_blocks * 512 < 9 << 20  # 2 data chunks of 24 MiB


# ------------------------------------------- invoke image --base-image (the release recipe)

OFFICIAL = "milkv-duo-musl-riscv64-sd_v2.0.1.img"


def _release_recipe(where: Path, sha256: str | None) -> Path:
    """recipes/duo-64m-remaster.yaml with the bundled stories260K and the rv64gcv engine
    (what CI has without the network), under `where`, with base.sha256 = `sha256`."""
    import yaml

    from duo_builder.paths import REPO

    data = yaml.safe_load((REPO / "recipes" / "duo-64m-remaster.yaml").read_text())
    data["base"]["sha256"] = sha256
    data["model"] = {
        "path": "models/stories260K.bin",
        "sha256": "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696",
        "tokenizer": "models/tok512.bin",
        "tokenizer_sha256": "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
        "format": "v0",
    }
    data["engine"] = {"target": "rv64gcv"}
    data["image"]["size_mb"] = 64
    where.mkdir(parents=True, exist_ok=True)
    path = where / "duo-64m-remaster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def official_zip(tmp_path_factory) -> Path:
    """The fixture, zipped under the official file names (room for the whole payload)."""
    import zipfile

    try:
        fixture = build_release_image(tmp_path_factory.mktemp("official"), rootfs_mib=64)
    except HostDependencyError as e:
        pytest.skip(str(e))
    path = fixture.image.parent / f"{OFFICIAL}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(fixture.image, OFFICIAL)
    return path


def _invoke(*args: str):  # noqa: ANN202
    import subprocess
    import sys

    from duo_builder.paths import REPO

    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip


def test_unpinned_recipe_without_base_image_says_how(tmp_path):
    from duo_builder.image import pipeline, recipe

    r = recipe.load(str(_release_recipe(tmp_path, None)))
    with pytest.raises(BuildError, match=r"sha256 is empty.*--base-image PATH"):
        pipeline.build_here(r, tmp_path / "out")


def test_base_image_contradicting_the_pin_is_refused_in_one_line(official_zip, tmp_path):
    recipe_file = _release_recipe(tmp_path, "0" * 64)
    done = _invoke("image", "--recipe", str(recipe_file), "--base-image", str(official_zip))
    assert done.returncode == 1
    assert re.fullmatch(
        rf"error: --base-image {re.escape(str(official_zip))}: sha256 [0-9a-f]{{64}} contradicts "
        r"the pin 0{64} in .*duo-64m-remaster.yaml \(base.sha256, of "
        rf"{re.escape(OFFICIAL)}.zip\): give that file\n",
        done.stderr,
    ), done.stderr


@pytest.mark.slow
def test_base_image_given_and_pinned_by_what_was_given(official_zip, tmp_path):
    """The tracked recipe's null pin: the given .img.zip is used as it is, its sha256
    printed and recorded; the same file under a matching pin (of the zip or of the .img
    inside) builds the same image."""
    import json
    import zipfile

    from duo_builder.image import pipeline, recipe
    from duo_builder.image.bases import release

    digest = hashlib.sha256(official_zip.read_bytes()).hexdigest()
    done = _invoke("image", "--recipe", str(_release_recipe(tmp_path, None)),
                   "--base-image", str(official_zip))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"base image {official_zip} sha256 {digest} (pinned by what was given)" in done.stdout
    image = Path(done.stdout.strip().splitlines()[-3])
    manifest = json.loads(image.with_name("duo-64m-remaster.manifest.json").read_text())
    assert manifest["base"]["sha256"] == digest
    assert manifest["base"]["image"] == str(official_zip)
    paths = {f["path"] for f in manifest["files"]}
    assert {"/usr/bin/llama2", "/usr/share/storyteller/model.bin"} <= paths
    assert _parts(image).keys() == {1, 2, 3}

    with zipfile.ZipFile(official_zip) as z:
        inner = hashlib.sha256(z.read(OFFICIAL)).hexdigest()
    pinned = recipe.load(str(_release_recipe(tmp_path / "p", inner)))
    built = pipeline.build_here(release.with_base_image(pinned, official_zip), tmp_path / "o")
    assert built.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
