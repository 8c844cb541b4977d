"""Counting what the engine executes under QEMU, for the cycle model (engine/CYCLE_MODEL.md,
"What is counted"): the counting plugin, the QEMU that runs it (Debian's qemu-riscv64 for
the rv64gcv proxy, or an external XTheadVector QEMU, `-cpu c906fdv`, for the c906 build),
the runs at -n FIRST and -n LAST, the static binary's symbols and disassembly, and per
configuration the counts per token weighed by cycles.py, per function, the bytes it
streams, the storage it reads and the host build's peak RSS."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from duo_builder import errors
from duo_builder.bench.riscv import storage_reads
from duo_builder.bench.riscv.cycles import (
    FIRST,
    LAST,
    TOKENS,
    RiscvBenchError,
    Scenario,
    TokenBytes,
    bytes_per_token,
    governing_vtypes,
    parse_objdump,
    weigh,
)
from duo_builder.bench.riscv.storage_reads import StorageReads
from duo_builder.build import engine, toolchain
from duo_builder.build.hostdeps import ensure_commands
from duo_builder.model import packed
from duo_builder.paths import BUILD, ENGINE_SRC

STORY_ARGS = ["-s", "123", "-t", "1.0", "-p", "0.9", "-i", "Once upon a time"]
QEMU = "qemu-riscv64"  # dynamic: qemu-riscv64-static cannot load plugins
GNU_TIME = "/usr/bin/time"
PLUGIN_SRC = ENGINE_SRC / "tools" / "qemu_insn_plugin.c"
OUT = BUILD / "riscv-bench"
PLUGIN = OUT / "libinsncount.so"
NM = "riscv64-linux-gnu-nm"
FORWARD = "transformer_forward"  # one call per position: checks the runs' lengths
# "The kernels": every function of the build's kernel objects (obj/kernels*.o: the traits
# table, the reference, fast and per-ISA kernels with their static helpers: matvecs, row
# recomputes, quantizers, attention) and the matvec_* dispatchers
KERNEL_SYMBOLS = re.compile(r"^matvec_")
C906_CPU = "c906fdv"  # the XTheadVector fork's C906 with FPU and vector unit
PLUGIN_API = 1  # the plugin API version engine/tools/qemu_insn_plugin.c declares


def build_plugin() -> Path:
    """build/riscv-bench/libinsncount.so from engine/tools/qemu_insn_plugin.c, with the host
    gcc, when missing or older than its source."""
    if PLUGIN.exists() and PLUGIN.stat().st_mtime >= PLUGIN_SRC.stat().st_mtime:
        return PLUGIN
    ensure_commands({"gcc": "gcc"}, "building the QEMU counting plugin")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = PLUGIN.with_name(f".{PLUGIN.name}.{os.getpid()}.tmp")
    cmd = ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    cmd += ["-fvisibility=hidden", "-o", str(tmp), str(PLUGIN_SRC)]
    try:
        errors.run(cmd, what=f"building {PLUGIN_SRC.name}", error=RiscvBenchError)
    except RiscvBenchError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, PLUGIN)
    return PLUGIN


@dataclass(frozen=True)
class Runner:
    """The QEMU that counts: its path, CPU model, plugin, how it takes the plugin's
    argument, and the label the table carries."""

    qemu: str
    cpu: str
    plugin: Path
    label: str
    plugin_arg: str = "out="  # QEMU 6.0 and older want "arg=out="

    def prefix(self, out: Path) -> list[str]:
        return [self.qemu, "-cpu", self.cpu, "-plugin", f"{self.plugin},{self.plugin_arg}{out}"]


def proxy_runner(target: str) -> Runner:
    """Debian's dynamic qemu-riscv64 (7.2) with our plugin, for a target it runs."""
    t = engine.target(target)
    if t.no_runner:
        raise RiscvBenchError(
            f"cannot count the {target!r} build with Debian's QEMU: {t.no_runner}; or give "
            f"--qemu PATH, a QEMU that runs XTheadVector (-cpu {C906_CPU})"
        )
    if not t.chroot or t.qemu not in toolchain.QEMU_CPUS:
        raise RiscvBenchError(f"{target!r} is not a riscv64 target QEMU runs")
    ensure_commands({QEMU: "qemu-user"}, "counting riscv64 instructions (a plugin-capable QEMU)")
    label = f"{target} proxy" if target == "rv64gcv" else target
    return Runner(shutil.which(QEMU) or QEMU, toolchain.QEMU_CPUS[t.qemu], build_plugin(), label)


def plugin_header(qemu: Path) -> Path | None:
    """qemu-plugin.h beside an external QEMU: a build tree's source (BUILD/../include/qemu/)
    or an install prefix's include/."""
    here = qemu.resolve().parent
    dirs = [here, here.parent, here.parent.parent]
    info = here / "meson-info" / "meson-info.json"  # a meson build tree names its source
    if info.is_file():
        try:
            dirs.insert(0, Path(json.loads(info.read_text())["directories"]["source"]))
        except (ValueError, KeyError, TypeError):
            pass
    for d in dirs:
        for rel in ("include/qemu/qemu-plugin.h", "include/qemu-plugin.h", "qemu-plugin.h"):
            if (d / rel).is_file():
                return d / rel
    return None


def header_api_range(header: Path) -> tuple[int, int] | None:
    """(QEMU_PLUGIN_MIN_VERSION, QEMU_PLUGIN_VERSION) of a qemu-plugin.h, if it says."""
    text = header.read_text(errors="replace")
    cur = re.search(r"#define\s+QEMU_PLUGIN_VERSION\s+(\d+)", text)
    low = re.search(r"#define\s+QEMU_PLUGIN_MIN_VERSION\s+(\d+)", text)
    if not cur:
        return None
    return (int(low[1]) if low else 0, int(cur[1]))


def external_runner(qemu: str, plugin: str = "", probe: Path | None = None) -> Runner:
    """An external QEMU that runs XTheadVector (-cpu c906fdv), checked: it exists, runs,
    lists c906fdv, and loads the counting plugin (`plugin`, a .so built against that
    QEMU's qemu-plugin.h, or ours when the header beside it accepts API version 1) on
    `probe`, a static riscv64 program."""
    path = Path(qemu)
    if not path.is_file():
        raise RiscvBenchError(f"--qemu {qemu}: no such file (give the path of a qemu-riscv64)")
    if not os.access(path, os.X_OK):
        raise RiscvBenchError(f"--qemu {qemu}: not executable (chmod +x {qemu})")
    import subprocess

    try:  # qemu-user lists its CPUs, then exits 1
        p = subprocess.run(
            [str(path.resolve()), "-cpu", "help"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise RiscvBenchError(f"--qemu {qemu}: does not run: {e}") from None
    if not re.search(rf"^\s*{C906_CPU}\b", p.stdout + p.stderr, re.M):
        raise RiscvBenchError(
            f"--qemu {qemu}: its -cpu help lists no {C906_CPU}: not a QEMU that runs "
            "XTheadVector (build the XuanTie fork's qemu-riscv64)"
        )
    if plugin:
        so = Path(plugin)
        if not so.is_file():
            raise RiscvBenchError(f"--plugin {plugin}: no such file")
    else:
        header = plugin_header(path)
        api = header_api_range(header) if header else None
        if api and not api[0] <= PLUGIN_API <= api[1]:
            raise RiscvBenchError(
                f"--qemu {qemu}: its {header} takes plugin API {api[0]}-{api[1]}, "
                f"{PLUGIN_SRC.name} declares {PLUGIN_API}: build a counting plugin against that "
                "header and pass --plugin SO"
            )
        so = build_plugin()
    runner = Runner(str(path.resolve()), C906_CPU, so.resolve(), f"c906 ({C906_CPU})")
    return _probe(runner, probe) if probe else runner


def _probe(runner: Runner, program: Path) -> Runner:
    """The runner whose plugin argument form this QEMU takes ("out=", else the older
    "arg=out="), found by counting `program` (run without arguments: a usage exit)."""
    import subprocess

    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f".probe.{os.getpid()}.txt"
    last = ""
    for form in ("out=", "arg=out="):
        r = dataclasses.replace(runner, plugin_arg=form)
        out.unlink(missing_ok=True)
        cmd = [*r.prefix(out), "-d", "plugin", str(program)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        try:
            if out.exists() and read_counts(out).total > 0:
                return r
        finally:
            out.unlink(missing_ok=True)
        last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    raise RiscvBenchError(
        f"--qemu {runner.qemu}: it does not load the counting plugin {runner.plugin} ({last}); "
        "pass --plugin SO built against that QEMU's qemu-plugin.h"
    )


@dataclass(frozen=True)
class Counts:
    """One counted run: executions and instruction bytes per guest address."""

    total: int
    per_address: dict[int, int]
    encoding: dict[int, bytes]


def read_counts(path: Path) -> Counts:
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("# qemu_insn_plugin 1 total "):
        raise RiscvBenchError(f"{path}: not a qemu_insn_plugin dump")
    if "incomplete" in lines[0]:
        raise RiscvBenchError(f"{path}: the plugin ran out of memory; counts are incomplete")
    total = int(lines[0].split()[4])
    per, enc = {}, {}
    for line in lines[1:]:
        addr, count, raw = line.split()
        a = int(addr, 16)
        per[a] = per.get(a, 0) + int(count)
        enc[a] = bytes.fromhex(raw)
    return Counts(total, per, enc)


def qemu_prefix(target: str, plugin: Path, out: Path) -> list[str]:
    """The dynamic qemu-riscv64 command that runs a static `target` build with the plugin."""
    return dataclasses.replace(proxy_runner(target), plugin=plugin).prefix(out)


def count_run(
    runner: Runner,
    binary: Path,
    model: Path,
    tokenizer: Path,
    kpath: str | None,
    steps: int,
    out: Path,
) -> tuple[Counts, str]:
    """Run the engine under QEMU with the plugin; (counts, the story)."""
    cmd = [*runner.prefix(out), "-d", "plugin", str(binary), str(model)]
    cmd += ["-z", str(tokenizer), *STORY_ARGS, "-n", str(steps)]
    if kpath:
        cmd += ["-k", kpath]
    out.unlink(missing_ok=True)
    what = f"counting {model.name} -n {steps} under {runner.qemu} -cpu {runner.cpu}"
    p = errors.run(cmd, what=what, error=RiscvBenchError)
    if not out.exists():
        raise RiscvBenchError(f"the plugin wrote no counts ({out}): {p.stderr.strip()[-300:]}")
    return read_counts(out), p.stdout


@dataclass(frozen=True)
class Symbol:
    address: int
    size: int
    name: str


def text_symbols(binary: Path) -> list[Symbol]:
    """Function symbols of a static riscv64 binary (nm), by address."""
    p = toolchain.run_in_chroot([NM, "-S", "-n", "--defined-only", str(binary)])
    if p.returncode != 0:
        raise RiscvBenchError(f"nm {binary} failed: {p.stderr.strip()}")
    out = []
    for f in map(str.split, p.stdout.splitlines()):
        if len(f) == 4 and f[2] in "tTwW" and not f[3].startswith("$"):
            out.append(Symbol(int(f[0], 16), int(f[1], 16), f[3]))
    return out


def is_xtheadvector(binary: Path) -> bool:
    """Whether the binary's architecture string (.riscv.attributes) names XTheadVector."""
    return b"_xtheadvector" in binary.read_bytes()


def disassemble(binary: Path) -> str:
    """The sid chroot's objdump. For RVV 1.0 builds `-M max` decodes every extension
    (glibc's vector string functions carry ISA mapping symbols the default would not); for
    the c906 build the ELF's own architecture attribute, since `-M max` would decode its
    XTheadVector encodings as RVV 1.0 (th.vle.v as vle64.v)."""
    opts = [] if is_xtheadvector(binary) else ["-M", "max"]
    p = toolchain.run_in_chroot([toolchain.OBJDUMP, "-d", *opts, str(binary)])
    if p.returncode != 0:
        raise RiscvBenchError(f"objdump {binary} failed: {p.stderr.strip()}")
    return p.stdout


def kernel_objects(target: str) -> list[Path]:
    """build/<target>/obj/kernels*.o: the traits table, reference, fast and per-ISA kernels."""
    return sorted((engine.build_dir(target) / "obj").glob("kernels*.o"))


@dataclass(frozen=True)
class BinaryModel:
    """A static binary's cycle-model weights, encodings and function symbols."""

    weights: dict[int, float]
    raw: dict[int, int]
    symbols: list[Symbol]
    kernels: frozenset[str] = frozenset()

    @classmethod
    def of(cls, binary: Path, kernel_objects: Sequence[Path] = ()) -> BinaryModel:
        text = disassemble(binary)
        insns = parse_objdump(text)
        weights = {
            i.address: weigh(i, t) for i, t in zip(insns, governing_vtypes(insns), strict=True)
        }
        raw = {i.address: i.raw for i in insns if i.raw is not None}
        kernels = frozenset(s.name for o in kernel_objects for s in text_symbols(o))
        return cls(weights, raw, text_symbols(binary), kernels)

    def is_kernel(self, name: str) -> bool:
        """Whether function `name` (maybe a gcc clone, name.constprop.0) is a kernel."""
        return bool(KERNEL_SYMBOLS.match(name)) or name.split(".")[0] in self.kernels

    def symbol_at(self, address: int) -> str:
        i = bisect.bisect_right(self._starts, address) - 1
        while i >= 0:
            s = self.symbols[i]
            if s.address <= address < s.address + max(s.size, 1):
                return s.name
            if s.size:  # a sized symbol that ends before: not inside any
                break
            i -= 1
        return ""

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [s.address for s in self.symbols]

    def entry(self, name: str) -> int | None:
        return next((s.address for s in self.symbols if s.name == name), None)


# ===========================================================================================
# Measuring configurations
# ===========================================================================================


@dataclass(frozen=True)
class Configuration:
    label: str
    model: Path
    kpath: str | None  # -k; None: the engine picks for the file
    target: str = "rv64gcv"


@dataclass(frozen=True)
class Measurement:
    config: Configuration
    insns: float  # per token
    cycles: float  # modelled cycles per token, before the calibration factor
    kernel_cycles: float
    functions: dict[str, float]  # function -> modelled cycles per token (before the factor)
    bytes: TokenBytes
    rss_kb: int
    kernels: tuple[str, ...]
    unknown: float  # per token: executed addresses objdump did not list
    storage: StorageReads | None = None
    counted_by: str = ""  # the runner's label: "rv64gcv proxy", "c906 (c906fdv)"

    def kernel_share(self) -> float:
        return self.kernel_cycles / self.cycles if self.cycles else 0.0

    def storage_s(self) -> float | None:
        return storage_reads.seconds(self.storage) if self.storage else None

    def seconds(self, scenario: Scenario, factor: float) -> float:
        """A token's modelled time: calibrated compute, DRAM, storage."""
        return scenario.seconds(factor * self.cycles, self.bytes.total, self.storage_s() or 0.0)

    def tok_s(self, scenario: Scenario, factor: float) -> float:
        return 1.0 / self.seconds(scenario, factor)

    def top_functions(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.functions.items(), key=lambda kv: -kv[1])[:n]


@dataclass(frozen=True)
class PerToken:
    insns: float
    cycles: float
    kernel_cycles: float
    functions: dict[str, float]
    kernels: tuple[str, ...]
    unknown: float


def per_token(short: Counts, long: Counts, bm: BinaryModel, label: str) -> PerToken:
    """Instructions, modelled cycles (all, in kernels, per function) and unknown
    instructions per token from the difference of the two runs' counts."""
    cycles = kernel = unknown = 0.0
    kernels: set[str] = set()
    functions: dict[str, float] = {}
    for addr, n_long in long.per_address.items():
        n = n_long - short.per_address.get(addr, 0)
        if n == 0:
            continue
        raw = bm.raw.get(addr)
        if raw is not None and int.from_bytes(long.encoding[addr], "little") != raw:
            raise RiscvBenchError(
                f"{label}: the instruction QEMU ran at {addr:#x} is not the one objdump lists: "
                "was the binary rebuilt during the run?"
            )
        w = bm.weights.get(addr)
        if w is None:
            unknown += n
            w = 1.0
        cycles += n * w
        name = bm.symbol_at(addr) or "?"
        functions[name] = functions.get(name, 0.0) + n * w / TOKENS
        if bm.is_kernel(name):
            kernel += n * w
            kernels.add(name.split(".")[0])
    insns = (long.total - short.total) / TOKENS
    return PerToken(
        insns, cycles / TOKENS, kernel / TOKENS, functions, tuple(sorted(kernels)), unknown / TOKENS
    )


def host_rss_kb(host: Path, c: Configuration, tokenizer: Path) -> int:
    """Peak RSS of the host build on the same model and path, the contest's full run
    (GNU time: RSS under QEMU would include QEMU's own)."""
    from duo_builder.bench.contest import BenchError, run_once

    extra = ["-k", c.kpath] if c.kpath else []
    try:
        return run_once(host, c.model, tokenizer, extra)[1]
    except BenchError as e:
        raise RiscvBenchError(str(e)) from None


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.lock, self.t0 = total, 0, threading.Lock(), time.monotonic()

    def say(self, msg: str) -> None:
        with self.lock:
            print(f"  [{time.monotonic() - self.t0:5.0f} s] {msg}", flush=True)

    def finished(self, what: str, seconds: float) -> None:
        with self.lock:
            self.done += 1
            done = self.done
        self.say(f"{done}/{self.total} done: {what} ({seconds:.0f} s)")


def recomputed_bytes_per_token(host: Path, model: Path, tokenizer: Path) -> int:
    """The fp32 classifier tiles a faithful file's sampler recomputes, in bytes per token:
    the mean per step of the host build's contest run (LLAMA2_FAITHFUL_STATS=1). Only a
    run knows it; the file's fixed part is header_bytes_per_token()'s."""
    cmd = [host, model, "-z", tokenizer, *STORY_ARGS, "-n", "256"]
    env = {**os.environ, "LLAMA2_FAITHFUL_STATS": "1"}
    p = errors.run(cmd, what=f"the faithful run of {model.name}", error=RiscvBenchError, env=env)
    m = re.search(r"tiles per step ([0-9.]+)", p.stderr)
    if not m:
        raise RiscvBenchError(f"{host} {model}: no faithful statistics: {p.stderr[-300:]}")
    with open(model, "rb") as f:
        head = f.read(packed.TABLE_OFFSET)
    try:
        dim = packed.parse_header(head).config.dim
    except (ValueError, struct.error) as e:
        raise RiscvBenchError(f"{model}: {e}") from None
    return round(float(m[1]) * packed.tile_bytes("faithful", dim))


def _snapshot(target: str) -> tuple[Path, list[Path]]:
    """Copies of the target's binary and kernel objects: every count must describe one
    binary, even if the build is remade while the runs go on."""
    where = OUT / "snapshot" / target
    where.mkdir(parents=True, exist_ok=True)
    binary = Path(shutil.copy2(engine.build(target), where / "llama2"))
    objs = [Path(shutil.copy2(o, where / o.name)) for o in kernel_objects(target)]
    return binary, objs


def runners(targets: Sequence[str], qemu: str = "", plugin: str = "") -> dict[str, Runner]:
    """target -> the QEMU that counts it: with `qemu`, that external XTheadVector QEMU for
    the c906 build (checked by running it); otherwise Debian's, for the proxy."""
    if not qemu:
        if plugin:
            raise RiscvBenchError("--plugin goes with --qemu PATH (Debian's QEMU uses ours)")
        return {t: proxy_runner(t) for t in targets}
    wrong = [t for t in targets if t != "c906"]
    if wrong:
        raise RiscvBenchError(
            f"--qemu runs -cpu {C906_CPU}: it counts the c906 build, not {', '.join(wrong)}"
        )
    return {"c906": external_runner(qemu, plugin)}


def measure(
    configs: Sequence[Configuration],
    tokenizer: Path,
    jobs: int | None = None,
    qemu: str = "",
    plugin: str = "",
) -> list[Measurement]:
    """Count every configuration at -n FIRST and -n LAST (in parallel), then weigh."""
    targets = sorted({c.target for c in configs})
    run_by = runners(targets, qemu, plugin)  # the one-line errors before any build
    ensure_commands({GNU_TIME: "time"}, "measuring peak RSS")
    snapshots = {t: _snapshot(t) for t in targets}
    binaries = {t: b for t, (b, _) in snapshots.items()}
    if qemu:  # the plugin's argument form, and that it loads at all
        run_by = {t: _probe(r, binaries[t]) for t, r in run_by.items()}
    models = {t: BinaryModel.of(b, k) for t, (b, k) in snapshots.items()}
    # RSS as on the Duo: a static build where the project has one (no host shared libraries)
    host = engine.build("host-static" if "host-static" in engine.TARGETS else "host")
    OUT.mkdir(parents=True, exist_ok=True)
    runs = [(c, n) for n in (LAST, FIRST) for c in configs]  # the long runs first
    progress = _Progress(len(runs))

    def one(job: tuple[Configuration, int]) -> tuple[Counts, str]:
        c, n = job
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{c.target}-{c.label}")
        t0 = time.monotonic()
        progress.say(f"start {c.label} -n {n}")
        out = OUT / f"{slug}-n{n}.txt"
        result = count_run(
            run_by[c.target], binaries[c.target], c.model, tokenizer, c.kpath, n, out
        )
        progress.finished(
            f"{c.label} -n {n}: {result[0].total / 1e6:.0f} M insns", time.monotonic() - t0
        )
        return result

    workers = min(jobs or cores(), cores())  # one qemu per core: more only thrash
    progress.say(f"{len(runs)} runs, {workers} at a time ({cores()} cores)")
    results: dict[tuple[Configuration, int], tuple[Counts, str]] = {}
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(one, r): r for r in runs}
    try:
        for f in as_completed(futures):
            results[futures[f]] = f.result()
    except KeyboardInterrupt:
        # Ctrl-C reached the qemu children too (one process group): drop what has not
        # started, wait for the rest, then weigh the configurations whose two runs finished
        pool.shutdown(wait=True, cancel_futures=True)
        for f, run in futures.items():
            if f.done() and not f.cancelled() and f.exception() is None:
                results[run] = f.result()
        done = [c for c in configs if (c, FIRST) in results and (c, LAST) in results]
        raise Interrupted(
            f"interrupted (Ctrl-C) after {len(results)} of {len(runs)} runs: "
            f"{len(done)} of {len(configs)} configurations complete",
            _weigh(done, results, models, host, tokenizer, run_by),
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return _weigh(configs, results, models, host, tokenizer, run_by)


def cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Interrupted(RiscvBenchError):
    """Ctrl-C during the runs; `partial` holds the configurations that were complete."""

    def __init__(self, msg: str, partial: list[Measurement]) -> None:
        super().__init__(msg)
        self.partial = partial


def _weigh(
    configs: Sequence[Configuration],
    results: dict[tuple[Configuration, int], tuple[Counts, str]],
    models: dict[str, BinaryModel],
    host: Path,
    tokenizer: Path,
    run_by: dict[str, Runner],
) -> list[Measurement]:
    out = []
    for c in configs:
        (short, s_story), (long, l_story) = results[(c, FIRST)], results[(c, LAST)]
        bm = models[c.target]
        _check_runs(c, bm, short, long, s_story, l_story)
        pt = per_token(short, long, bm, c.label)
        rss = host_rss_kb(host, c, tokenizer)
        tb = bytes_per_token(c.model)
        if tb.format == "faithful":
            extra = recomputed_bytes_per_token(host, c.model, tokenizer)
            tb = dataclasses.replace(tb, weights=tb.weights + extra)
        storage = storage_reads.load_measured(tb.format)
        out.append(
            Measurement(
                c,
                pt.insns,
                pt.cycles,
                pt.kernel_cycles,
                pt.functions,
                tb,
                rss,
                pt.kernels,
                pt.unknown,
                storage,
                run_by[c.target].label,
            )
        )
    return out


def _check_runs(
    c: Configuration, bm: BinaryModel, short: Counts, long: Counts, s: str, lg: str
) -> None:
    """The short run's story must begin the long one's, and the runs must have made
    FIRST and LAST forward passes (a story that ends early, at BOS, would not)."""
    if not lg.startswith(s.rstrip("\n")):
        raise RiscvBenchError(
            f"{c.label}: the -n {FIRST} story is not the start of the -n {LAST} one "
            "(a nondeterministic path?)"
        )
    entry = bm.entry(FORWARD)
    if entry is None:
        return
    got = (short.per_address.get(entry, 0), long.per_address.get(entry, 0))
    if got != (FIRST, LAST):
        raise RiscvBenchError(
            f"{c.label}: {FORWARD} ran {got[0]} and {got[1]} times, expected {FIRST} and "
            f"{LAST}: the story ended early (try another seed or model)"
        )
