"""`invoke deploy`: the recipe's payload onto a running board over SSH, without reflashing.

The same files an image holds (payload.gather: engine, storyteller, model, tokenizer, voice
and recognizer data, config, init script), on a stock Milk-V image or ours, in five steps:
  1. check   the board has sh, cat, mv and sha256sum (busybox's do); free space on every
             filesystem a file goes to (the new files plus room to stage them) and
             MemAvailable for the model
  2. stage   every file streamed to STAGE/<path> (`cat >`, no SFTP needed)
  3. verify  sha256sum of every staged file against the host's
  4. install one shell script: the files being replaced are moved into BACKUP (with a list
             of which paths did not exist before), the staged ones moved into place
  5. verify  sha256sum of every installed file, again against the host's
`invoke deploy --rollback` puts BACKUP back: replaced files restored, new ones removed.
One backup is kept: the state before the last deploy.
"""

import hashlib
import shlex
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from duo_builder.board.ssh import Board, BoardError
from duo_builder.image import payload, recipe
from duo_builder.paths import BUILD

STATE = "/var/lib/duo-storyteller"
STAGE = f"{STATE}/incoming"
BACKUP = f"{STATE}/backup"
NEW_LIST = "created.list"  # in BACKUP: paths that did not exist before the deploy
# besides the model's own pages: the engine's buffers, KV cache, libc, the shell
RAM_MARGIN_KB = 4096


@dataclass(frozen=True)
class Item:
    path: str  # on the board, absolute
    mode: int
    data: bytes
    sha256: str


@dataclass(frozen=True)
class Deployed:
    files: list[Item]
    seconds: float
    replaced: int  # files that existed before (now in BACKUP)

    @property
    def bytes(self) -> int:
        return sum(len(f.data) for f in self.files)


def items(r: recipe.Recipe, extra_models: list[Path] | None = None) -> list[Item]:
    """The recipe's payload (what an image of it holds), plus extra model files for
    /usr/share/storyteller/ (e.g. a faithful file beside the fast one, for bench --board)."""
    files = payload.gather(r, BUILD / "image" / r.name)
    for path, why in files.absent().items():
        print(f"deploy: {path} left out: {why}", flush=True)
    out = []
    for f in files.present():
        data = payload.read(f)
        out.append(Item(f.path, f.mode, data, hashlib.sha256(data).hexdigest()))
    for extra in extra_models or []:
        if not extra.is_file():
            raise BoardError(f"--extra-model {extra}: no such file")
        data = extra.read_bytes()
        name = f"/usr/share/storyteller/{extra.name}"
        if any(i.path == name for i in out):
            raise BoardError(f"--extra-model {extra}: {name} is already in the payload; rename it")
        out.append(Item(name, 0o644, data, hashlib.sha256(data).hexdigest()))
    return sorted(out, key=lambda i: i.path)


def deploy(board: Board, files: list[Item]) -> Deployed:
    start = time.monotonic()
    _check_tools(board)
    _check_room(board, files)
    q = shlex.quote
    board.exec(f"rm -rf {STAGE} && mkdir -p {STAGE}", what="making the staging directory")
    total = sum(len(f.data) for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"deploy to {board.target}") as bar:
        for f in files:
            staged = STAGE + f.path
            board.exec(
                f"mkdir -p {q(str(PurePosixPath(staged).parent))} && cat > {q(staged)}",
                stdin=f.data,
                progress=bar.update,
                what=f"copying {f.path}",
            )
    _verify(board, {STAGE + f.path: f.sha256 for f in files}, "staged")
    replaced = _install(board, files)
    _verify(board, {f.path: f.sha256 for f in files}, "installed")
    board.exec(f"rm -rf {STAGE}; sync", what="cleaning up")
    return Deployed(files, time.monotonic() - start, replaced)


def rollback(board: Board) -> tuple[int, int, float]:
    """Restore the files the last deploy replaced and remove the ones it added:
    (restored, removed, seconds)."""
    start = time.monotonic()
    status, out, _ = board.exec(f"test -d {BACKUP}", check=False)
    if status != 0:
        raise BoardError(f"{board.target}: no deploy to roll back ({BACKUP} does not exist)")
    script = f"""set -e
cd {BACKUP}
restored=0 removed=0
if [ -f {NEW_LIST} ]; then
    while IFS= read -r p; do rm -f "$p"; removed=$((removed + 1)); done < {NEW_LIST}
fi
for f in $(find files ! -type d 2>/dev/null); do
    p=${{f#files}}
    mkdir -p "$(dirname "$p")"
    mv -f "$f" "$p"
    restored=$((restored + 1))
done
cd /
rm -rf {BACKUP}
sync
echo "$restored $removed"
"""
    out_text = board.sh(script, what="rollback").split()
    return int(out_text[0]), int(out_text[1]), time.monotonic() - start


def _check_tools(board: Board) -> None:
    status, out, _ = board.exec(
        "for t in sh cat mv mkdir sha256sum df find; do "
        "command -v $t >/dev/null 2>&1 || echo $t; done",
        check=False,
    )
    missing = out.decode().split()
    if missing:
        raise BoardError(f"{board.target}: the board lacks {', '.join(missing)} (busybox has them)")


def _check_room(board: Board, files: list[Item]) -> None:
    """Free space (staged copy + installed file, on each file's filesystem) and RAM."""
    dirs = sorted({str(PurePosixPath(f.path).parent) for f in files} | {"/var/lib"})
    # the nearest existing ancestor of each directory says which filesystem it is on
    probe = " ".join(shlex.quote(d) for d in dirs)
    script = f"""for d in {probe}; do
  e=$d; while [ ! -d "$e" ]; do e=$(dirname "$e"); done
  echo "$d $(df -kP "$e" | tail -n 1 | awk '{{print $1, $4}}')"
done
sed -n 's/^MemAvailable:[[:space:]]*\\([0-9]*\\) kB/mem \\1/p' /proc/meminfo"""
    out = board.sh(script, what="checking free space").splitlines()
    fs_of: dict[str, tuple[str, int]] = {}
    mem_kb = None
    for line in out:
        parts = line.split()
        if parts[0] == "mem":
            mem_kb = int(parts[1])
        elif len(parts) == 3:
            fs_of[parts[0]] = (parts[1], int(parts[2]))
    need: dict[str, int] = {}
    stage_fs = fs_of["/var/lib"][0]
    for f in files:
        fs = fs_of[str(PurePosixPath(f.path).parent)][0]
        kb = len(f.data) // 1024 + 4
        need[fs] = need.get(fs, 0) + kb  # the installed file (the old one only moves)
        need[stage_fs] = need.get(stage_fs, 0) + kb  # its staged copy until the move
    free = {fs: kb for fs, kb in fs_of.values()}
    for fs, kb in need.items():
        if kb > free[fs]:
            raise BoardError(
                f"{board.target}: {fs} has {free[fs] // 1024} MB free, the deploy needs "
                f"{kb // 1024 + 1} MB (staging included): free some space"
            )
    model = next((f for f in files if f.path.endswith("/model.bin")), None)
    if model is not None and mem_kb is not None:
        want = len(model.data) // 1024 + RAM_MARGIN_KB
        if mem_kb < want:
            raise BoardError(
                f"{board.target}: MemAvailable {mem_kb // 1024} MB is less than the model "
                f"({len(model.data) >> 20} MB) needs with its buffers ({want // 1024} MB): stop "
                "other programs, or set the ION reservation to 0 (the duo recipes do)"
            )


def _install(board: Board, files: list[Item]) -> int:
    lines = [
        "set -e",
        f"rm -rf {BACKUP}",
        f"mkdir -p {BACKUP}/files",
        f": > {BACKUP}/{NEW_LIST}",
        "replaced=0",
    ]
    q = shlex.quote
    for f in files:
        dst, staged, keep = q(f.path), q(STAGE + f.path), q(f"{BACKUP}/files{f.path}")
        parent = q(str(PurePosixPath(f.path).parent))
        lines += [
            f"if [ -e {dst} ] || [ -L {dst} ]; then",
            f"  mkdir -p {q(str(PurePosixPath(BACKUP + '/files' + f.path).parent))}",
            f"  mv -f {dst} {keep}; replaced=$((replaced + 1))",
            f"else echo {dst} >> {BACKUP}/{NEW_LIST}; fi",
            f"mkdir -p {parent}",
            f"chmod {f.mode:o} {staged}",
            f"mv -f {staged} {dst}",
        ]
    lines += ["sync", "echo $replaced"]
    return int(board.sh("\n".join(lines), what="installing the files").strip() or 0)


def _verify(board: Board, expected: dict[str, str], what: str) -> None:
    paths = " ".join(shlex.quote(p) for p in expected)
    out = board.sh(f"sha256sum {paths}", what=f"sha256sum of the {what} files")
    got = {}
    for line in out.splitlines():
        digest, _, path = line.partition("  ")
        got[path.strip()] = digest.strip()
    bad = [p for p, d in expected.items() if got.get(p) != d]
    if bad:
        raise BoardError(
            f"{board.target}: {len(bad)} {what} file(s) differ from the host's after the copy "
            f"(first: {bad[0]}): run the deploy again"
        )
