"""A miniature Milk-V Duo release image, laid out like the official one.

MBR disk: p1 FAT `boot` (bootable, type 0x0C) with fip.bin and boot.sd, p2 ext4 `rootfs`
(0x83), p3 swap (0x82, left unwritten as genimage does). boot.sd is a FIT made by
`mkimage -f boot.its`: an LZMA kernel and one DTB, each with sha256/sha1/crc32 hashes, and
the configuration `config-cv1800b_milkv_duo_sd`. The DTS follows the vendor's
cv180x memmap dtsi: /reserved-memory with 2/2 cells, an `ion-region` node referenced by
the `cvitek,cvitek-ion` heap, and an rtos_dram carve-out that must survive untouched.
Everything is built with fixed times and UUIDs, so the fixture itself is reproducible.
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from duo_builder.build.hostdeps import ensure_commands

EPOCH = 1_700_000_000
UUID = "4d696c6b-5600-4475-6f00-000000000001"
CONFIG = "config-cv1800b_milkv_duo_sd"
DTB_IMAGE = "fdt-cv1800b_milkv_duo_sd"
ION_SIZE = 0x0100_0000  # 16 MiB, as on the 64 MB board
FIXTURE_TOOLS = {
    "dtc": "device-tree-compiler",
    "fdtget": "device-tree-compiler",
    "fdtput": "device-tree-compiler",
    "mkimage": "u-boot-tools",
    "dumpimage": "u-boot-tools",
    "genimage": "genimage",
    "mkfs.vfat": "dosfstools",
    "fsck.vfat": "dosfstools",
    "mcopy": "mtools",
    "mke2fs": "e2fsprogs",
}
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "TZ": "UTC"}

_ION_NODES = {
    # what the brief and released DTBs show: a placed region with both reg and size
    "reg": """
		ion_reserved: ion@83000000 {
			compatible = "ion-region";
			size = <0x0 0x01000000>;
			reg = <0x0 0x83000000 0x0 0x01000000>;
		};""",
    # the vendor source (cv180x_default_memmap.dtsi): size only, placed by the kernel
    "size": """
		ion_reserved: ion {
			compatible = "ion-region";
			size = <0x0 0x01000000>;
		};""",
    "none": "",
}

_HEAP = """
	cvitek-ion {
		compatible = "cvitek,cvitek-ion";

		heap_carveout@0 {
			compatible = "cvitek,carveout";
			memory-region = <&ion_reserved>;
		};
	};
"""


def duo_dts(ion_shape: str = "reg") -> str:
    """DTS for the fixture board; ion_shape is "reg", "size" or "none"."""
    return f"""/dts-v1/;

/ {{
	model = "Milk-V Duo";
	compatible = "milkv,duo", "cvitek,cv180x";
	#address-cells = <0x2>;
	#size-cells = <0x2>;

	memory@80000000 {{
		device_type = "memory";
		reg = <0x0 0x80000000 0x0 0x04000000>;
	}};

	reserved-memory {{
		#size-cells = <0x2>;
		#address-cells = <0x2>;
		ranges;
{_ION_NODES[ion_shape]}

		c906l: rtos_dram@82f40000 {{
			reg = <0x0 0x82f40000 0x0 0x000c0000>;
			no-map;
		}};
	}};
{_HEAP if ion_shape != "none" else ""}
	c906l_rproc: c906l_rproc@0 {{
		compatible = "cvitek,cv18xx-c906l-rproc";
		memory-region = <&c906l>;
		firmware-name = "cvirtos.elf";
		status = "okay";
	}};

	chosen {{
		bootargs = "console=ttyS0,115200 root=/dev/mmcblk0p2 rootwait rw";
	}};
}};
"""


BOOT_ITS = f"""/dts-v1/;

/ {{
	description = "Various kernels, ramdisks and FDT blobs";
	#address-cells = <2>;

	images {{
		kernel-1 {{
			description = "cvitek kernel";
			data = /incbin/("./Image.lzma");
			type = "kernel";
			arch = "riscv";
			os = "linux";
			compression = "lzma";
			load = <0x0 0x80200000>;
			entry = <0x0 0x80200000>;
			hash-1 {{ algo = "sha256"; }};
			hash-2 {{ algo = "crc32"; }};
		}};

		{DTB_IMAGE} {{
			description = "cvitek device tree - cv1800b_milkv_duo_sd";
			data = /incbin/("./cv1800b_milkv_duo_sd.dtb");
			type = "flat_dt";
			arch = "riscv";
			compression = "none";
			hash-1 {{ algo = "sha256"; }};
			hash-2 {{ algo = "sha1"; }};
			hash-3 {{ algo = "crc32"; }};
		}};
	}};

	configurations {{
		{CONFIG} {{
			description = "boot cvitek system with board cv1800b_milkv_duo_sd";
			kernel = "kernel-1";
			fdt = "{DTB_IMAGE}";
		}};
	}};
}};
"""

GENIMAGE_CFG = """image boot.vfat {
	vfat {
		label = "boot"
		extraargs = "-i 4d696c6b --invariant"
		files = { "fip.bin", "boot.sd" }
	}
	size = 4M
}

image milkv-duo.img {
	hdimage {
		partition-table-type = "mbr"
		disk-signature = 0x4d696c6b
		align = 1M
	}
	partition boot {
		partition-type = 0xC
		bootable = "true"
		image = "boot.vfat"
	}
	partition rootfs {
		partition-type = 0x83
		image = "rootfs.ext4"
	}
	partition swap {
		partition-type = 0x82
		size = 1M
	}
}
"""


@dataclass(frozen=True)
class DuoFixture:
    image: Path
    dtb: Path
    boot_sd: Path
    fip: Path
    kernel: Path  # the LZMA blob inside kernel-1


def tool(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path) or name


def ensure_fixture_tools() -> None:
    ensure_commands({tool(c): p for c, p in FIXTURE_TOOLS.items()}, "the remaster test fixture")


def run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "LC_ALL": "C", "SOURCE_DATE_EPOCH": str(EPOCH), **(env or {})}
    result = subprocess.run(
        [tool(args[0]), *args[1:]], cwd=cwd, env=full_env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def compile_dts(source: str, dst: Path) -> Path:
    dts = dst.with_suffix(".dts")
    dts.write_text(source)
    run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dst), str(dts)])
    return dst


def _rootfs(work: Path, size_mib: int) -> Path:
    root = work / "rootfs"
    for d in ("etc", "usr/bin", "lib", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("milkv-duo\n")
    (root / "etc/os-release").write_text('NAME="Buildroot"\nVERSION_ID=2023.11\n')
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (root / "lib64").symlink_to("lib")  # buildroot's merged lib64 -> lib
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
    image = work / "in" / "rootfs.ext4"
    uuid = ["-U", UUID, "-E", f"hash_seed={UUID}"]
    run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-L", "rootfs", *uuid, "-d", str(root),
         str(image), f"{size_mib}M"], env={"E2FSPROGS_FAKE_TIME": str(EPOCH)})  # fmt: skip
    # mke2fs -d copies host times (ctime cannot be set, reading a dir bumps its atime):
    # pin them all with debugfs
    paths = ["/", "/lost+found"] + [f"/{p.relative_to(root)}" for p in sorted(root.rglob("*"))]
    script = work / "times.debugfs"
    script.write_text(
        "".join(f"set_inode_field {p} {t} @{EPOCH}\n" for p in paths for t in ("atime", "ctime"))
    )
    run(["debugfs", "-w", "-f", str(script), str(image)], env={"E2FSPROGS_FAKE_TIME": str(EPOCH)})
    return image


def build_release_image(
    work: Path, *, ion_shape: str = "reg", rootfs_mib: int = 16, with_boot_sd: bool = True
) -> DuoFixture:
    """Build the fixture under `work` (a fresh directory) and return its parts."""
    ensure_fixture_tools()
    inputs = work / "in"
    inputs.mkdir(parents=True)
    kernel = inputs / "Image.lzma"
    fake = b"RISCV\0\0\0fake cv180x kernel " + bytes(range(256)) * 64
    kernel.write_bytes(lzma.compress(fake, format=lzma.FORMAT_ALONE))  # U-Boot's "lzma"
    dtb = compile_dts(duo_dts(ion_shape), inputs / "cv1800b_milkv_duo_sd.dtb")
    (inputs / "boot.its").write_text(BOOT_ITS)
    run(["mkimage", "-f", "boot.its", "boot.sd"], cwd=inputs)
    fip = inputs / "fip.bin"
    fip.write_bytes(b"CVBL01\n\0" + bytes(i * 7 & 0xFF for i in range(8184)))
    _rootfs(work, rootfs_mib)
    cfg = GENIMAGE_CFG
    if not with_boot_sd:
        cfg = cfg.replace('"fip.bin", "boot.sd"', '"fip.bin"')
    (work / "genimage.cfg").write_text(cfg)
    (work / "genroot").mkdir()
    for p in inputs.iterdir():
        os.utime(p, (EPOCH, EPOCH))
    run(["genimage", "--config", "genimage.cfg", "--rootpath", "genroot", "--tmppath", "tmp",
         "--inputpath", "in", "--outputpath", "out"], cwd=work, env=MTOOLS_ENV)  # fmt: skip
    return DuoFixture(work / "out" / "milkv-duo.img", dtb, inputs / "boot.sd", fip, kernel)


# ----------------------------------------------------------------- read-back helpers


def extract(image: Path, start: int, size: int, dst: Path) -> Path:
    with open(image, "rb") as f:
        f.seek(start)
        dst.write_bytes(f.read(size))
    return dst


def fat_read(fat: Path, name: str, dst: Path) -> Path:
    run(["mcopy", "-n", "-i", str(fat), f"::{name}", str(dst)], env=MTOOLS_ENV)
    return dst


def debugfs(image: Path, request: str) -> str:
    result = subprocess.run(
        [tool("debugfs"), "-R", request, str(image)], capture_output=True, env={"LC_ALL": "C"}
    )
    return result.stdout.decode("latin-1")


def debugfs_cat(image: Path, path: str) -> bytes:
    return subprocess.run(
        [tool("debugfs"), "-R", f"cat {path}", str(image)], capture_output=True, check=True
    ).stdout


def fdtget(blob: Path, node: str, prop: str | None = None, *flags: str) -> str:
    args = ["fdtget", *flags, str(blob), node] + ([prop] if prop else [])
    return run(args).strip()


def fdtget_bytes(blob: Path, node: str, prop: str) -> bytes:
    """A property's raw bytes, read by dtc's own fdtget (independent of the code under test)."""
    return bytes(int(b, 16) for b in fdtget(blob, node, prop, "-t", "bx").split())


def fdtput(blob: Path, node: str, prop: str, *values: str, type: str = "s") -> None:
    """Set a property with dtc's own fdtput, creating the node path if needed (-p)."""
    run(["fdtput", "-p", "-t", type, str(blob), node, prop, *values])
