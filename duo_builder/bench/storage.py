"""`invoke bench --storage`: what the faithful path reads from storage per token on a board
with the Duo's memory.

The -k faithful path keeps the fp32 layers and the int8 classifier mapped and reads fp32
classifier tiles (and section 11's second level) with pread when rows must be recomputed.
On a Duo (~55 MB for Linux) most of those reads can miss the page cache and go to the SD
card. This step measures it in the project's 64 MB QEMU machine (the qemu-virt-64m image,
SSH guest of `invoke qemu --ssh`) booted with `mem=60M`, which gives the guest the
contest Duo's usable memory (MemTotal ~55 MB instead of ~59 MB):

- the faithful file and a riscv64 engine go on a third, read-only virtio disk (/dev/vdc),
  which nothing else reads, so its block statistics (/sys/block/vdc/stat: read requests
  and sectors) are exactly the engine's storage traffic, readahead included;
- caches dropped, the contest command runs at -n 64 and -n 192 under busybox `time`
  (ru_majflt, peak RSS); the difference / 128 is one token at positions 64-191;
- MemAvailable and the engine's RSS are sampled every second while it runs.

The guest kernel has no task I/O accounting (/proc/PID/io and ru_inblock read nothing), so
the device's counters stand in for read_bytes; syscalls are not counted, but the engine's
own statistics give its preads (fp32 tiles and second-level tiles per step).

The result goes to build/riscv-bench/storage.json; `load_measured` gives it to the cycle
model (`bench --riscv`), which prices it at SD-card speed."""

import json
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from duo_builder.bench.riscv.cycles import SD_BYTES_PER_S
from duo_builder.errors import BuildError, run
from duo_builder.fsutil import atomic_writer
from duo_builder.paths import BUILD, LLAMA_TOKENIZER, REPO

STORAGE_JSON = BUILD / "riscv-bench" / "storage.json"
RECIPE = "qemu-virt-64m"
GUEST_MEM = "mem=60M"  # -m 64M with mem=60M: MemTotal ~55 MB, the contest Duo's 55.3 MB
STEPS = (64, 192, 64, 192)  # two pairs: start-up noise averages out
CONTEST_ARGS = ["-t", "1.0", "-p", "0.9", "-s", "123", "-i", "Once upon a time"]
SECTOR = 512
VERSION = 1


class StorageBenchError(BuildError):
    pass


@dataclass(frozen=True)
class StorageReads:
    """Storage traffic of one token (positions 64-191) in the guest."""

    read_bytes_per_token: float  # bytes the disk delivered (readahead included)
    major_faults_per_token: float  # the mapping's pages read back from the disk
    reads_per_token: float  # read requests the disk served (each a seek on an SD card)
    guest_mem_mb: int  # the guest's MemTotal, MiB
    source: str  # how it was measured (model file, engine, guest memory)


@dataclass(frozen=True)
class Run:
    """One guest run of the contest command at -n steps, caches dropped first."""

    steps: int
    disk_reads: int  # /sys/block/vdc/stat: read requests completed
    disk_sectors: int  # and 512-byte sectors read
    major_faults: int
    peak_rss_kb: int
    mem_available_before_kb: int
    mem_available_min_kb: int
    mem_total_kb: int
    seconds: float
    stats: str  # the engine's faithful statistics line
    story_sha: str
    # every second while it ran: (seconds since start, read requests, sectors, major faults)
    samples: tuple[tuple[float, int, int, int], ...] = ()

    def at(self, seconds: float) -> tuple[float, float, float]:
        """(read requests, sectors, major faults) `seconds` after the start, interpolated
        between samples; the run's totals at or after its end."""
        points = [(0.0, 0, 0, 0), *self.samples]
        points.append((self.seconds, self.disk_reads, self.disk_sectors, self.major_faults))
        for (t0, *a), (t1, *b) in zip(points, points[1:], strict=False):
            if t0 <= seconds <= t1:
                w = (seconds - t0) / (t1 - t0) if t1 > t0 else 1.0
                r, s, f = (x + w * (y - x) for x, y in zip(a, b, strict=True))
                return r, s, f
        return float(self.disk_reads), float(self.disk_sectors), float(self.major_faults)


# ---- the result file ---------------------------------------------------------------------


def per_token(runs: Sequence[Run], source: str) -> StorageReads:
    """Pairs of runs (short, long, short, long, ...), averaged over the pairs. Start-up
    differs from run to run by megabytes (what the kernel evicts while the model loads),
    so two runs' totals differ by that noise: the long run's own counters are taken
    instead, at its end minus where it was after the short run's duration (the same
    work: start-up and the short run's positions), from its samples. Without samples,
    the two runs' totals. A negative mean is noise and counts as none."""
    if len(runs) < 2 or len(runs) % 2:
        raise StorageBenchError(f"{len(runs)} runs: need pairs of a short and a long one")
    sums = [0.0, 0.0, 0.0]
    for short, long in zip(runs[0::2], runs[1::2], strict=True):
        n = long.steps - short.steps
        if n <= 0:
            raise StorageBenchError(
                f"runs at -n {short.steps} and -n {long.steps}: need a longer one"
            )
        if long.samples:
            reads, sectors, faults = long.at(short.seconds)
        else:
            reads, sectors, faults = short.disk_reads, short.disk_sectors, short.major_faults
        sums[0] += (long.disk_sectors - sectors) * SECTOR / n
        sums[1] += (long.major_faults - faults) / n
        sums[2] += (long.disk_reads - reads) / n
    pairs = len(runs) // 2
    return StorageReads(
        read_bytes_per_token=max(0.0, sums[0] / pairs),
        major_faults_per_token=max(0.0, sums[1] / pairs),
        reads_per_token=max(0.0, sums[2] / pairs),
        guest_mem_mb=round(runs[-1].mem_total_kb / 1024),
        source=source,
    )


def write(path: Path, kind: str, reads: StorageReads, runs: list[Run]) -> Path:
    """Add (or replace) `kind`'s measurement in the JSON file, atomically."""
    data = _read(path) if path.exists() else {"version": VERSION, "models": {}}
    data["models"][kind] = {"per_token": asdict(reads), "runs": [asdict(r) for r in runs]}
    with atomic_writer(path) as f:
        f.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    return path


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StorageBenchError(
            f"{path}: not a storage measurement ({e}); delete it or rerun "
            "`python3 -m invoke bench --storage`"
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("version") != VERSION
        or not isinstance(data.get("models"), dict)
    ):
        raise StorageBenchError(
            f"{path}: not a version-{VERSION} storage measurement; rerun "
            "`python3 -m invoke bench --storage`"
        )
    return data


def load_measured(model_kind: str, path: Path = STORAGE_JSON) -> StorageReads | None:
    """The measured storage reads per token of `model_kind` (e.g. "faithful"), or None
    when `invoke bench --storage` has not measured it. A damaged file is an error."""
    if not Path(path).exists():
        return None
    entry = _read(Path(path))["models"].get(model_kind)
    if entry is None:
        return None
    try:
        raw = entry["per_token"]
        reads = StorageReads(
            read_bytes_per_token=float(raw["read_bytes_per_token"]),
            major_faults_per_token=float(raw["major_faults_per_token"]),
            reads_per_token=float(raw["reads_per_token"]),
            guest_mem_mb=int(raw["guest_mem_mb"]),
            source=str(raw["source"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise StorageBenchError(
            f"{path}: {model_kind!r} has no complete per-token measurement ({e!r}); rerun "
            "`python3 -m invoke bench --storage`"
        ) from None
    return reads


# ---- in the guest ------------------------------------------------------------------------

MOUNT = "/mnt/storage-bench"


def guest_script(steps: int, engine: str, model: str, tokenizer: str, device: str) -> str:
    """One run: caches dropped, the contest command under busybox time, MemAvailable and
    the engine's RSS sampled every second, the disk's counters before and after."""
    cmd = " ".join(
        shlex.quote(a)
        for a in [f"{MOUNT}/{engine}", f"{MOUNT}/{model}", "-z", f"{MOUNT}/{tokenizer}",
                  "-k", "faithful", "-n", str(steps), *CONTEST_ARGS]
    )  # fmt: skip
    return f"""set -e
dev={device}
mkdir -p {MOUNT}
grep -q " {MOUNT} " /proc/mounts || mount -o ro /dev/$dev {MOUNT}
sync; echo 3 > /proc/sys/vm/drop_caches
set -- $(cat /sys/block/$dev/stat); echo "DISK_BEFORE $1 $3"; r0=$1; s0=$3
grep -E '^(MemTotal|MemAvailable):' /proc/meminfo | tr -s ' ' | sed 's/^/MEM_BEFORE /'
start=$(cut -d' ' -f1 /proc/uptime)
LLAMA2_FAITHFUL_STATS=1 time -f 'TIME %F %M' {cmd} \\
  > /tmp/storage-story.txt 2> /tmp/storage-err.txt &
tpid=$!
min=999999999
while kill -0 $tpid 2>/dev/null; do
  set -- $(grep MemAvailable /proc/meminfo); [ "$2" -lt "$min" ] && min=$2
  f=0; p=$(pidof {engine} || true)
  [ -n "$p" ] && {{ set -- $(cat /proc/$p/stat 2>/dev/null) 0 0 0 0 0 0 0 0 0 0 0 0; f=${{12}}; }}
  t=$(cut -d' ' -f1 /proc/uptime)
  set -- $(cat /sys/block/$dev/stat); echo "SAMPLE $t $(($1 - r0)) $(($3 - s0)) $f"
  sleep 1
done
rc=0; wait $tpid || rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
set -- $(cat /sys/block/$dev/stat); echo "DISK_AFTER $1 $3"
echo "MEM_MIN $min"
echo "SECONDS $start $end"
echo "STORY $(sha256sum /tmp/storage-story.txt | cut -d' ' -f1)"
grep -E '^(TIME|faithful)' /tmp/storage-err.txt || true
[ $rc -eq 0 ] || {{ echo "EXIT $rc"; tail -3 /tmp/storage-err.txt; }}
"""


def parse(steps: int, out: str) -> Run:
    """A Run from guest_script's output; StorageBenchError naming what is missing."""

    def one(pattern: str) -> re.Match:
        m = re.search(pattern, out, re.M)
        if not m:
            tail = " | ".join(out.strip().splitlines()[-3:])
            raise StorageBenchError(f"-n {steps} in the guest: no {pattern!r} in: {tail}")
        return m

    if m := re.search(r"^EXIT (\d+)", out, re.M):
        tail = " | ".join(out[m.end() :].strip().splitlines()[-2:])
        raise StorageBenchError(f"the engine in the guest exited with {m[1]} at -n {steps}: {tail}")
    before, after = one(r"^DISK_BEFORE (\d+) (\d+)$"), one(r"^DISK_AFTER (\d+) (\d+)$")
    timed = one(r"^TIME (\d+) (\d+)$")
    start, end = one(r"^SECONDS ([0-9.]+) ([0-9.]+)$").groups()
    return Run(
        steps=steps,
        disk_reads=int(after[1]) - int(before[1]),
        disk_sectors=int(after[2]) - int(before[2]),
        major_faults=int(timed[1]),
        peak_rss_kb=int(timed[2]),
        mem_available_before_kb=int(one(r"^MEM_BEFORE MemAvailable: (\d+) kB$")[1]),
        mem_available_min_kb=int(one(r"^MEM_MIN (\d+)$")[1]),
        mem_total_kb=int(one(r"^MEM_BEFORE MemTotal: (\d+) kB$")[1]),
        seconds=float(end) - float(start),
        stats=one(r"^faithful: .*$")[0],
        story_sha=one(r"^STORY ([0-9a-f]{64})$")[1],
        samples=tuple(
            (float(m[1]) - float(start), int(m[2]), int(m[3]), int(m[4]))
            for m in re.finditer(r"^SAMPLE ([0-9.]+) (\d+) (\d+) (\d+)$", out, re.M)
        ),
    )


# ---- the step ----------------------------------------------------------------------------


def guest_files(out_dir: Path = REPO / "out") -> tuple[Path, Path]:
    """The qemu-virt-64m image and its kernel, as `invoke image` leaves them."""
    image = out_dir / f"{RECIPE}.img"
    kernel = out_dir / "Image"
    for path in (image, kernel):
        if not path.exists():
            raise StorageBenchError(
                f"{path} is missing: build the QEMU image first with "
                f"`python3 -m invoke image --recipe {RECIPE}`"
            )
    return image, kernel


def data_disk(files: dict[str, Path], dst: Path) -> Path:
    """An ext4 image holding `files` (name -> host path) at its root, sized to fit."""
    with tempfile.TemporaryDirectory(prefix="storage-disk-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        total = 0
        for name, src in files.items():
            shutil.copyfile(src, root / name)
            (root / name).chmod(0o755)
            total += src.stat().st_size
        size_mb = total * 11 // 10 // 2**20 + 16
        with open(dst, "wb") as f:
            f.truncate(size_mb << 20)
        run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", root, dst],
            what="mke2fs (the data disk)",
            error=StorageBenchError,
        )
    return dst


def measure(
    image: Path,
    kernel: Path,
    model: Path,
    tokenizer: Path,
    engine: Path,
    *,
    steps: Sequence[int] = STEPS,
    port: int = 0,
    work: Path | None = None,
) -> list[Run]:
    """Boot the guest with `model`, `tokenizer` and `engine` on /dev/vdc and run the
    contest command at each of `steps`; progress on stdout."""
    from duo_builder.board.ssh import connect, ensure_key, trust_host_key
    from duo_builder.image.bases import debian

    work = work or BUILD / "riscv-bench" / "storage"
    work.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    with tempfile.TemporaryDirectory(prefix="storage-", dir=work) as tmp:
        disk = data_disk(
            {"llama2": engine, "model.bin": model, "tokenizer.bin": tokenizer},
            Path(tmp) / "data.img",
        )
        print(f"storage: booting the {RECIPE} guest ({GUEST_MEM}) with {model.name} ...",
              flush=True)  # fmt: skip
        start = time.monotonic()
        runs = []
        _, public = ensure_key()
        with debian.ssh_guest(
            image, kernel, port=port, authorized_keys=(public + "\n").encode(),
            console_log=work / "console.log", extra_disks=[disk], extra_append=GUEST_MEM,
        ) as g:  # fmt: skip
            trust_host_key("127.0.0.1", port, g.host_key)
            with connect("root@127.0.0.1", port) as board:
                print(f"storage: guest up in {time.monotonic() - start:.0f} s", flush=True)
                for n in steps:
                    t = time.monotonic()
                    print(f"storage: -n {n} in the guest (caches dropped) ...", end="", flush=True)
                    script = guest_script(n, "llama2", "model.bin", "tokenizer.bin", "vdc")
                    out = board.sh(script, what=f"the contest command at -n {n}", check=False)
                    runs.append(parse(n, out))
                    print(f" {time.monotonic() - t:.0f} s", flush=True)
    return runs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(reads: StorageReads, runs: list[Run]) -> str:
    last = runs[-1]
    seq = reads.read_bytes_per_token / SD_BYTES_PER_S * 1e3
    lines = [
        f"storage per token (positions {runs[0].steps}-{last.steps - 1}), guest MemTotal "
        f"{last.mem_total_kb / 1024:.1f} MiB:",
        f"  read from disk  {reads.read_bytes_per_token / 1024:10.1f} KiB"
        f"   ({seq:.1f} ms at 22 MB/s sequential)",
        f"  read requests   {reads.reads_per_token:10.2f}",
        f"  major faults    {reads.major_faults_per_token:10.2f}",
        f"  engine peak RSS {last.peak_rss_kb / 1024:10.1f} MiB; MemAvailable "
        f"{last.mem_available_before_kb / 1024:.1f} MiB before, "
        f"{last.mem_available_min_kb / 1024:.1f} MiB at least while it ran",
        f"  {last.stats}",
    ]
    return "\n".join(lines)


def main(
    model: str | None = None,
    tokenizer: str | None = None,
    target: str = "rv64gc",
    kind: str = "faithful",
    out: Path = STORAGE_JSON,
) -> StorageReads:
    from duo_builder.bench.contest import converted, default_model
    from duo_builder.build import engine as eng

    image, kernel = guest_files()
    fp32 = Path(model) if model else default_model()
    tok = Path(tokenizer) if tokenizer else LLAMA_TOKENIZER
    for path in (fp32, tok):
        if not path.exists():
            raise StorageBenchError(f"{path}: no such file")
    binary = eng.build(target)
    work = BUILD / "riscv-bench" / "storage"
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"storage: {fp32.name} in the faithful format (converted if missing or stale) ...",
        flush=True,
    )
    faithful = converted(fp32, "faithful", work)
    runs = measure(image, kernel, faithful, tok, binary, work=work)
    source = (
        f"{faithful.name} ({faithful.stat().st_size / 2**20:.1f} MiB), {target} engine, "
        f"{RECIPE} guest -m 64M {GUEST_MEM}, /sys/block/vdc/stat and ru_majflt, "
        f"the -n {runs[1].steps} run's counters past the -n {runs[0].steps} run's duration, "
        f"mean of {len(runs) // 2} pairs"
    )
    reads = per_token(runs, source)
    print(table(reads, runs))
    print(write(out, kind, reads, runs))
    return reads
