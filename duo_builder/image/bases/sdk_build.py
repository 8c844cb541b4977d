"""The vendor SDK build, run INSIDE the builder container (stdlib only; see container.py).

Clones duo-buildroot-sdk-v2 at the pinned commit, sets the ION reservation, merges our
Buildroot fragment into the board's defconfig (appending our overlay and post-build script
to the SDK's own values), points Buildroot at our external tree through BR2_EXTERNAL (the
SDK does not pass it) and runs `./build.sh BOARD`. The SDK's board/milkv directory is never
written: it is deleted after each build. The image lands in OUT/<recipe>.img.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def checkout(repo: str, commit: str, dst: Path) -> None:
    if not (dst / ".git").exists():
        run(["git", "init", "-q", str(dst)])
        run(["git", "-C", str(dst), "remote", "add", "origin", repo])
    run(["git", "-C", str(dst), "fetch", "--depth", "1", "origin", commit])
    run(["git", "-C", str(dst), "checkout", "-q", "--force", "FETCH_HEAD"])
    run(["git", "-C", str(dst), "clean", "-qfdx", "-e", "host-tools"])


def set_ion(sdk: Path, board_link: str, ion_mb: int) -> None:
    chip = board_link.split("_")[0][:5] + "x"  # cv1800b -> cv180x
    memmap = sdk / "build" / "boards" / chip / board_link / "memmap.py"
    text = memmap.read_text()
    new, n = re.subn(
        r"^(\s*ION_SIZE\s*=\s*)\d+(\s*\*\s*SIZE_1M)", rf"\g<1>{ion_mb}\g<2>", text, flags=re.M
    )
    if n != 1:
        sys.exit(f"sdk_build: {memmap}: expected one `ION_SIZE = N * SIZE_1M` line, found {n}")
    memmap.write_text(new)


def merge_defconfig(defconfig: Path, fragment: Path, overlay: Path, post_build: Path) -> None:
    """Our fragment's lines win; list-valued settings get our entries appended."""
    lines = defconfig.read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if "=" in line and line.startswith("BR2_"))

    def appended(key: str, extra: Path) -> str:
        old = values.get(key, '""').strip('"')
        return f'{key}="{(old + " " + str(extra)).strip()}"'

    ours = [ln for ln in fragment.read_text().splitlines() if ln.startswith("BR2_")]
    keys = {ln.split("=", 1)[0] for ln in ours} | {
        "BR2_ROOTFS_OVERLAY",
        "BR2_ROOTFS_POST_BUILD_SCRIPT",
    }
    kept = [
        ln
        for ln in lines
        if not any(ln.startswith(k + "=") or ln == f"# {k} is not set" for k in keys)
    ]
    kept += ours + [
        appended("BR2_ROOTFS_OVERLAY", overlay),
        appended("BR2_ROOTFS_POST_BUILD_SCRIPT", post_build),
    ]
    defconfig.write_text("\n".join(kept) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--board", required=True, help="e.g. milkv-duo-musl-riscv64-sd")
    ap.add_argument("--ion-mb", type=int, required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--external", type=Path, required=True, help="our buildroot-external")
    ap.add_argument("--payload", type=Path, required=True, help="files for the rootfs")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    sdk = a.work / "duo-buildroot-sdk-v2"
    checkout(a.repo, a.commit, sdk)
    boardconfig = (sdk / "device" / a.board / "boardconfig.sh").read_text()
    link = re.search(r"MV_BOARD_LINK=(\S+)", boardconfig).group(1)
    set_ion(sdk, link, a.ion_mb)
    br = next(sdk.glob("buildroot-*"))
    merge_defconfig(
        br / "configs" / f"{a.board}_defconfig",
        a.external / "configs" / "duo-storyteller.fragment",
        a.external.parent / "overlay",
        a.external / "board" / "milkv-duo" / "post-build.sh",
    )
    env = {
        **os.environ,
        "BR2_EXTERNAL": str(a.external),
        "DUO_PAYLOAD": str(a.payload),
        "FORCE_UNSAFE_CONFIGURE": "1",
    }
    run(["./build.sh", a.board], cwd=sdk, env=env)
    images = sorted((sdk / "out").glob(f"{a.board}_*.img"))
    if not images:
        sys.exit(f"sdk_build: the SDK made no {a.board}_*.img in {sdk / 'out'}")
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(images[-1], a.out / f"{a.recipe}.img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
