"""`invoke bench --riscv`: instruments that predict the Milk-V Duo's speed without a board.

For each configuration (a model file, a compute path, a riscv64 engine build) the engine
runs twice under bookworm's dynamic qemu-riscv64 (7.2, the one that loads TCG plugins)
with our counting plugin (engine/tools/qemu_insn_plugin.c): `-n 64` and `-n 192`, same
seed, so the first 64 positions are the same work and the difference / 128 is what one
token costs at positions 64-191, start-up excluded. Each executed address is weighed by
the cycle model of engine/CYCLE_MODEL.md (the static binary disassembled by the toolchain
chroot's objdump), the model is calibrated on the 2023 contest's best entry, and a Duo
token takes the longer of its compute time and its DRAM time (weights and KV cache
streamed per token, from the file's header).

Not a test: nothing here asserts a speed; it prints a table.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TextIO

from duo_builder.build import engine, toolchain
from duo_builder.build.hostdeps import ensure_commands
from duo_builder.model.checkpoint import MAGIC, Config
from duo_builder.paths import BUILD, ENGINE_SRC, LLAMA_TOKENIZER

# --- the cycle model (engine/CYCLE_MODEL.md) -----------------------------------------------
VLEN = 128  # bits: the C906's vector registers
DATAPATH = 64  # bits of a vector register the C906 processes per cycle (roughly)
REDUCTION_EXTRA = 6.0  # units on top of a reduction's element work (5-9+ cycles measured)
ORDERED_PER_ELEMENT = 4.0  # vfredosum: one dependent fp add per element
SCALAR_DIV = 8.0  # integer div/rem, fdiv, fsqrt: iterative, not pipelined
VECTOR_DIV_PER_ELEMENT = 2.0  # vector div/rem/sqrt, per element
SCALAR_DIVISIONS = frozenset(
    "div divu divw divuw rem remu remw remuw fdiv.s fdiv.d fdiv.h fsqrt.s fsqrt.d fsqrt.h".split()
)

# --- calibration and the Duo --------------------------------------------------------------
CLOCK_HZ = 1e9  # the C906 in the CV1800B
DRAM_BYTES_PER_S = 1.4e9  # DDR2, what a streaming read achieves (1.3-1.5 GB/s)
CONTEST_INSNS_PER_TOKEN = 19.0e6  # runq.c as optimized by the best 2023 entry, XTheadVector
CONTEST_TOK_S = 24.3  # the same binary on a Duo
CONTEST_CYCLES_PER_TOKEN = CLOCK_HZ / CONTEST_TOK_S  # 41.15 M
# The scalar context (rv64gc builds of llama2.c, stories15M shape)
SCALAR_REFERENCES = (
    ("run.c -O3 (rv64gc scalar, fp32)", 97.5e6, "fp32"),
    ("runq.c -Ofast (rv64gc scalar, Q8_0)", 124.8e6, "q80"),
)

# --- the runs ------------------------------------------------------------------------------
FIRST, LAST = 64, 192  # measured positions: FIRST .. LAST - 1
TOKENS = LAST - FIRST
MEAN_POS = (FIRST + LAST - 1) / 2  # 127.5; attention at position p reads p + 1 keys
STORY_ARGS = ["-s", "123", "-t", "1.0", "-p", "0.9", "-i", "Once upon a time"]
QEMU = "qemu-riscv64"  # dynamic: qemu-riscv64-static cannot load plugins
GNU_TIME = "/usr/bin/time"
PLUGIN_SRC = ENGINE_SRC / "tools" / "qemu_insn_plugin.c"
OUT = BUILD / "riscv-bench"
PLUGIN = OUT / "libinsncount.so"
NM = "riscv64-linux-gnu-nm"
FORWARD = "transformer_forward"  # one call per position: checks the runs' lengths
# "The matvec kernels": every function of the build's per-ISA kernel object
# (obj/kernels_<set>.o, static helpers included) and every matvec_* (the references)
KERNEL_SYMBOLS = re.compile(r"^matvec_")


class RiscvBenchError(Exception):
    """A measurement could not be made; the message names the cause."""


# ===========================================================================================
# Disassembly and the cycle model
# ===========================================================================================


@dataclass(frozen=True)
class Insn:
    """One disassembled instruction."""

    address: int
    mnemonic: str
    operands: tuple[str, ...]
    function: str
    raw: int | None = None  # the encoding as objdump prints it (a little-endian number)


@dataclass(frozen=True)
class VType:
    """The vector configuration an instruction runs under: SEW, LMUL and the VL assumed."""

    sew: int
    lmul: Fraction
    vl: int

    @property
    def vlmax(self) -> int:
        return vlmax(self.sew, self.lmul)


def vlmax(sew: int, lmul: Fraction) -> int:
    return max(1, int(Fraction(VLEN) * lmul / sew))


# Default when no vset* precedes a vector instruction in its function: one full register
FALLBACK_VTYPE = VType(32, Fraction(1), VLEN // 32)

_FUNCTION = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_RAW = re.compile(r"^(?:[0-9a-f]{4}|[0-9a-f]{8})(?: [0-9a-f]{2,8})*$")


def parse_objdump(text: str) -> list[Insn]:
    """Instructions of `objdump -d` output (with or without raw bytes), in address order
    within each function, each tagged with its function (the `<name>:` it follows)."""
    insns: list[Insn] = []
    function = ""
    for line in text.splitlines():
        if m := _FUNCTION.match(line):
            function = m[2]
            continue
        head, sep, rest = line.partition(":\t")
        if not sep or not re.fullmatch(r"\s*[0-9a-f]+", head):
            continue
        fields = rest.split("\t")
        raw = None
        if len(fields) > 1 and _RAW.match(fields[0].strip()):
            raw = int(fields[0].replace(" ", ""), 16)
            fields = fields[1:]
        mnemonic = fields[0].strip()
        if not mnemonic or mnemonic.startswith(("...", "<")):
            continue
        operands = fields[1] if len(fields) > 1 else ""
        operands = operands.split("#")[0].split("<")[0].strip()
        ops = tuple(o.strip() for o in operands.split(",") if o.strip())
        insns.append(Insn(int(head, 16), mnemonic.lower(), ops, function, raw))
    return insns


def _base(mnemonic: str) -> str:
    """The mnemonic without the XTheadVector prefix (th.vadd.vv -> vadd.vv)."""
    return mnemonic[3:] if mnemonic.startswith("th.v") else mnemonic


def _is_vset(mnemonic: str) -> bool:
    return _base(mnemonic).startswith("vset")


def _parse_vtype(operands: Sequence[str]) -> tuple[int, Fraction] | None:
    sew = lmul = None
    for op in operands:
        if m := re.fullmatch(r"e(\d+)", op):
            sew = int(m[1])
        elif m := re.fullmatch(r"m(f?)(\d+)", op):
            lmul = Fraction(1, int(m[2])) if m[1] else Fraction(int(m[2]))
    if sew is None:
        return None
    return sew, lmul if lmul is not None else Fraction(1)


_STORE = re.compile(r"^(s[bhwd]|fs[hwd]|c\.f?s[wd](sp)?)$")
_BRANCH = frozenset(
    "beq bne blt bge bltu bgeu beqz bnez blez bgez bltz bgtz bgt ble bgtu bleu "
    "c.beqz c.bnez j jr c.j c.jr ret".split()
)


def _writes(insn: Insn, reg: str) -> bool:
    """Whether `insn` writes integer register `reg`: its first operand, unless it is a
    store or a branch, which have no destination."""
    if not insn.operands or insn.operands[0] != reg:
        return False
    m = _base(insn.mnemonic)
    vector_store = m.startswith("vs") and m.endswith(".v")
    return not (_STORE.match(m) or m in _BRANCH or vector_store)


def _known_avl(insns: Sequence[Insn], i: int, reg: str, vtypes: Sequence[VType | None]) -> int:
    """The AVL in `reg` for the vset* at i, when the nearest earlier writer of `reg` in the
    same function says it: `li reg, N`, or a vset* that put its VL in reg. 0 = unknown."""
    fn = insns[i].function
    for j in range(i - 1, max(-1, i - 64), -1):
        prev = insns[j]
        if prev.function != fn:
            break
        if not _writes(prev, reg):
            continue
        if prev.mnemonic in ("li", "c.li") and len(prev.operands) == 2:
            try:
                return max(0, int(prev.operands[1], 0))
            except ValueError:
                return 0
        vt = vtypes[j]
        if _is_vset(prev.mnemonic) and vt is not None:
            return vt.vl
        return 0
    return 0


def governing_vtypes(insns: Sequence[Insn]) -> list[VType | None]:
    """For each instruction, the vtype in force: set by the nearest preceding vset* in
    program (address) order within its function. The AVL of a vsetvli is taken as VLMAX
    unless it is an immediate (vsetivli), zero (VLMAX), x0 with rd x0 (VL kept), or a
    register last written by `li` or by another vset* nearby. None = no vset* yet."""
    out: list[VType | None] = []
    current: VType | None = None
    function = None
    for i, insn in enumerate(insns):
        if insn.function != function:
            function, current = insn.function, None
        if _is_vset(insn.mnemonic):
            parsed = _parse_vtype(insn.operands)
            if parsed is None:  # vsetvl: vtype from a register
                current = None
            else:
                sew, lmul = parsed
                vmax = vlmax(sew, lmul)
                base = _base(insn.mnemonic)
                rd, avl_op = (insn.operands + ("", ""))[:2]
                if base.startswith("vsetivli"):
                    vl = min(vmax, int(avl_op, 0))
                elif avl_op in ("zero", "x0"):  # rd x0: VL kept; else VLMAX
                    keep = current if rd in ("zero", "x0") else None
                    vl = min(vmax, keep.vl) if keep else vmax
                else:
                    avl = _known_avl(insns, i, avl_op, out)
                    vl = min(vmax, avl) if avl > 0 else vmax
                current = VType(sew, lmul, vl)
        out.append(current)
    return out


_UNIT_STRIDE = re.compile(r"^v[ls](?:seg(\d))?e(\d+)(?:ff)?\.v$")
_STRIDED = re.compile(r"^v[ls]s(?:seg(\d))?e(\d+)\.v$")
_INDEXED = re.compile(r"^v[ls][uo]x(?:seg(\d))?ei(\d+)\.v$")
_WHOLE = re.compile(r"^(?:vl(\d)re\d+\.v|vl(\d)r\.v|vs(\d)r\.v|vmv(\d)r\.v)$")
_SCALAR_MOVE = frozenset(
    "vmv.x.s vfmv.f.s vmv.s.x vfmv.s.f vcpop.m vpopc.m vfirst.m vmfirst.m vlm.v vsm.v".split()
)
_MASK = re.compile(r"^vm(and|nand|andn|andnot|xor|or|nor|orn|ornot|xnor|mv|not|clr|set)\.mm?$")
_NARROWING = re.compile(r"^v(nsrl|nsra|nclip|nclipu|ncvt|fncvt)\.")
_MASK_SET = frozenset("vmsbf.m vmsif.m vmsof.m".split())


def weigh(insn: Insn, vtype: VType | None) -> float:
    """Units (engine/CYCLE_MODEL.md) for one execution of `insn` under `vtype`."""
    m = _base(insn.mnemonic)
    if not m.startswith("v") or m.startswith("vset"):
        return SCALAR_DIV if m in SCALAR_DIVISIONS else 1.0
    t = vtype or FALLBACK_VTYPE
    vl, sew = t.vl, t.sew

    def elements(width: int, nf: int = 1) -> float:
        return max(1.0, nf * vl * width / DATAPATH)

    if w := _WHOLE.match(m):
        nf = int(next(g for g in w.groups() if g))
        return nf * VLEN / DATAPATH
    if m in _SCALAR_MOVE or _MASK.match(m) or m in _MASK_SET:
        return 1.0
    if s := _UNIT_STRIDE.match(m):
        return elements(int(s[2]), int(s[1] or 1))
    if s := (_STRIDED.match(m) or _INDEXED.match(m)):
        return max(1.0, float(int(s[1] or 1) * vl))  # element by element
    if re.match(r"^vfw?redosum\.", m):
        return ORDERED_PER_ELEMENT * vl
    if re.match(r"^v(f|w|fw)?red", m):
        return elements(sew) + REDUCTION_EXTRA
    if _NARROWING.match(m):  # the source is 2 x SEW wide
        return elements(2 * sew)
    if re.match(r"^v(f?div|f?rdiv|divu|f?rem|remu|fsqrt)\.", m):
        return max(1.0, VECTOR_DIV_PER_ELEMENT * vl)
    return elements(sew)  # widening ops: SEW is their source width already


def weigh_disassembly(text: str) -> dict[int, float]:
    """Address -> units for every instruction of an objdump listing."""
    insns = parse_objdump(text)
    return {i.address: weigh(i, t) for i, t in zip(insns, governing_vtypes(insns), strict=True)}


# ===========================================================================================
# Bytes streamed per token
# ===========================================================================================

PACK_MAGIC = b"DUOPACK\0"
PACK_HEADER = 128
PACK_SECTION = struct.Struct("<IIQQ")  # kind, layer, offset, bytes
PACK_WEIGHTS = {1: "fp32", 2: "q8", 3: "q4"}
FAITHFUL_CODE = 4  # fp32 packed + a certified int8 classifier (engine/FORMAT.md)
NORMS, EMBEDDING, CLASSIFIER = 1, 2, 10
LAYER_KINDS = (3, 4, 5, 6, 7, 8, 9)  # wq wk wv wo w1 w2 w3


@dataclass(frozen=True)
class TokenBytes:
    """What one token streams from DRAM: the weights it reads, and the KV cache."""

    format: str
    weights: int
    kv: float

    @property
    def total(self) -> float:
        return self.weights + self.kv


def _matrices(cfg: Config) -> list[tuple[int, int]]:
    """(rows, cols) of one layer's wq, wk, wv, wo, w1, w2, w3 (out = W . x)."""
    d, h, kv = cfg.dim, cfg.hidden_dim, cfg.kv_dim
    return [(d, d), (kv, d), (kv, d), (d, d), (h, d), (d, h), (h, d)]


# Bytes per KV-cache element: the engine keeps binary16 for the packed quantized formats
# (engine/src/transformer.c, half_kv_cache), fp32 for everything else
KV_ELEMENT_BYTES = {"q8": 2, "q4": 2}


def kv_bytes(cfg: Config, pos: float = MEAN_POS, fmt: str = "v1") -> float:
    """Keys and values read by attention at position `pos` (positions 0..pos: pos + 1
    rows of kv_dim elements each, per layer, keys and values)."""
    return 2 * cfg.n_layers * (pos + 1) * cfg.kv_dim * KV_ELEMENT_BYTES.get(fmt, 4)


def packed_matrix_bytes(rows: int, cols: int, weights: str, tile_rows: int, group: int) -> int:
    """engine/FORMAT.md's size of a packed rows x cols matrix."""
    tiles = -(-rows // tile_rows)
    if weights == "fp32":
        return tiles * cols * tile_rows * 4
    groups = -(-cols // group)
    per_value = {"q8": Fraction(1), "q4": Fraction(1, 2)}[weights]
    block = int(tile_rows * group * per_value) + 2 * tile_rows  # values, then bf16 scales
    return tiles * groups * block


def header_bytes_per_token(head: bytes, pos: float = MEAN_POS) -> TokenBytes:
    """Bytes streamed per token at position `pos` for a model file whose first bytes are
    `head` (llama2.c v0/v1 fp32, v2 Q8_0, or the packed format of engine/FORMAT.md; for
    the packed format `head` must hold the section table to have it checked)."""
    if head[:8] == PACK_MAGIC:
        return _packed_bytes(head, pos)
    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == MAGIC:
        version = struct.unpack_from("<i", head, 4)[0]
        ints = struct.unpack_from("<7i", head, 8)
        cfg = Config(*ints, shared_classifier=bool(head[36]))
        if version == 1:
            return _fp32_bytes(cfg, "v1", pos)
        if version == 2:
            gs = struct.unpack_from("<i", head, 37)[0]
            return _q80_bytes(cfg, gs, pos)
        raise RiscvBenchError(f"unknown llama2.c checkpoint version {version}")
    ints = struct.unpack_from("<7i", head)
    cfg = Config(*ints[:5], abs(ints[5]), ints[6], shared_classifier=ints[5] > 0)
    return _fp32_bytes(cfg, "v0", pos)


def bytes_per_token(model: Path, pos: float = MEAN_POS) -> TokenBytes:
    with open(model, "rb") as f:
        head = f.read(PACK_HEADER)
        if head[:8] == PACK_MAGIC:
            n = struct.unpack_from("<i", head, 56)[0]
            if not 0 <= n <= 4096:
                raise RiscvBenchError(f"{model}: bad packed header (n_sections {n})")
            head += f.read(n * PACK_SECTION.size)
    try:
        return header_bytes_per_token(head, pos)
    except (ValueError, struct.error) as e:
        raise RiscvBenchError(f"{model}: {e}") from None


def _fp32_bytes(cfg: Config, fmt: str, pos: float) -> TokenBytes:
    layers = cfg.n_layers * sum(r * c for r, c in _matrices(cfg)) * 4
    norms = (2 * cfg.n_layers + 1) * cfg.dim * 4
    classifier = cfg.vocab_size * cfg.dim * 4
    embedding_row = cfg.dim * 4
    return TokenBytes(fmt, layers + norms + classifier + embedding_row, kv_bytes(cfg, pos))


def _q80_bytes(cfg: Config, gs: int, pos: float) -> TokenBytes:
    def q80(n: int) -> int:
        return n + 4 * (n // gs)  # int8 values, fp32 scale per group

    layers = cfg.n_layers * sum(q80(r * c) for r, c in _matrices(cfg))
    norms = (2 * cfg.n_layers + 1) * cfg.dim * 4
    classifier = q80(cfg.vocab_size * cfg.dim)
    embedding_row = q80(cfg.dim)
    return TokenBytes("q80", layers + norms + classifier + embedding_row, kv_bytes(cfg, pos))


def _faithful_bytes(head: bytes, pos: float) -> TokenBytes:
    """A faithful file (weights code 4): fp32 layers and the int8 certified classifier
    (section 11) every token; the fp32 classifier only for the tiles it recomputes, which
    only a run knows (measure() adds the engine's own count). fp32 KV cache."""
    ints = struct.unpack_from("<7i", head, 16)
    shared, _, _, n_sections = struct.unpack_from("<4i", head, 44)
    cfg = Config(*ints, shared_classifier=bool(shared))
    if len(head) < PACK_HEADER + n_sections * PACK_SECTION.size:
        raise ValueError("truncated section table")
    sections = [
        PACK_SECTION.unpack_from(head, PACK_HEADER + i * PACK_SECTION.size)
        for i in range(n_sections)
    ]
    fixed = sum(nbytes for kind, _, _, nbytes in sections if kind not in (EMBEDDING, CLASSIFIER))
    return TokenBytes("faithful", fixed + cfg.dim * 4, kv_bytes(cfg, pos))


def faithful_weight_bytes(host: Path, model: Path, tokenizer: Path) -> int:
    """The weight bytes per token a faithful run reports (fixed part + recomputed fp32
    tiles), from the host build's contest run with LLAMA2_FAITHFUL_STATS=1."""
    cmd = [str(host), str(model), "-z", str(tokenizer), *STORY_ARGS, "-n", "256"]
    env = {**os.environ, "LLAMA2_FAITHFUL_STATS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    m = re.search(r"bytes per token (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        raise RiscvBenchError(f"{' '.join(cmd)}: no faithful statistics: {p.stderr[-300:]}")
    return int(m[1])


def _packed_bytes(head: bytes, pos: float) -> TokenBytes:
    version, wcode = struct.unpack_from("<ii", head, 8)
    if version != 1:
        raise ValueError(f"packed format version {version}, expected 1")
    if wcode == FAITHFUL_CODE:
        return _faithful_bytes(head, pos)
    if wcode not in PACK_WEIGHTS:
        raise ValueError(f"packed weights code {wcode}, expected 1, 2, 3 or 4")
    weights = PACK_WEIGHTS[wcode]
    ints = struct.unpack_from("<7i", head, 16)
    shared, tile_rows, group, n_sections = struct.unpack_from("<4i", head, 44)
    cfg = Config(*ints, shared_classifier=bool(shared))
    if tile_rows <= 0 or (weights != "fp32" and group <= 0):
        raise ValueError(f"bad packed header: tile_rows {tile_rows}, group_size {group}")

    def size(rows: int, cols: int) -> int:
        return packed_matrix_bytes(rows, cols, weights, tile_rows, group)

    expected = [(NORMS, 0, (2 * cfg.n_layers + 1) * cfg.dim * 4)]
    if not cfg.shared_classifier:
        expected.append((EMBEDDING, 0, size(cfg.vocab_size, cfg.dim)))
    for layer in range(cfg.n_layers):
        expected += [
            (kind, layer, size(r, c))
            for kind, (r, c) in zip(LAYER_KINDS, _matrices(cfg), strict=True)
        ]
    expected.append((CLASSIFIER, 0, size(cfg.vocab_size, cfg.dim)))
    if n_sections != len(expected):
        raise ValueError(f"packed header lists {n_sections} sections, expected {len(expected)}")
    if len(head) >= PACK_HEADER + n_sections * PACK_SECTION.size:
        for i, (kind, layer, nbytes) in enumerate(expected):
            got = PACK_SECTION.unpack_from(head, PACK_HEADER + i * PACK_SECTION.size)
            if (got[0], got[1], got[3]) != (kind, layer, nbytes):
                raise ValueError(
                    f"packed section {i} is (kind {got[0]}, layer {got[1]}, {got[3]} bytes), "
                    f"expected (kind {kind}, layer {layer}, {nbytes} bytes)"
                )
    streamed = sum(b for kind, _, b in expected if kind != EMBEDDING)
    # One embedding row: in row tiles it shares every cache line with its tile's rows
    embedding_row = size(min(tile_rows, cfg.vocab_size), cfg.dim)
    return TokenBytes(weights, streamed + embedding_row, kv_bytes(cfg, pos, weights))


# ===========================================================================================
# The plugin and the runs
# ===========================================================================================


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
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RiscvBenchError(f"building {PLUGIN_SRC.name} failed:\n{p.stderr.strip()}")
    os.replace(tmp, PLUGIN)
    return PLUGIN


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
    t = engine.target(target)
    if t.no_runner:
        raise RiscvBenchError(f"cannot count the {target!r} build: {t.no_runner}")
    if not t.chroot or t.qemu not in toolchain.QEMU_CPUS:
        raise RiscvBenchError(f"{target!r} is not a riscv64 target QEMU runs")
    ensure_commands({QEMU: "qemu-user"}, "counting riscv64 instructions (a plugin-capable QEMU)")
    cpu = toolchain.QEMU_CPUS[t.qemu]
    return [shutil.which(QEMU) or QEMU, "-cpu", cpu, "-plugin", f"{plugin},out={out}"]


def count_run(
    binary: Path,
    target: str,
    model: Path,
    tokenizer: Path,
    kpath: str | None,
    steps: int,
    out: Path,
) -> tuple[Counts, str]:
    """Run the engine under QEMU with the plugin; (counts, the story)."""
    cmd = [*qemu_prefix(target, build_plugin(), out), "-d", "plugin", str(binary), str(model)]
    cmd += ["-z", str(tokenizer), *STORY_ARGS, "-n", str(steps)]
    if kpath:
        cmd += ["-k", kpath]
    out.unlink(missing_ok=True)
    p = subprocess.run(cmd, capture_output=True)
    err = p.stderr.decode(errors="replace").strip()
    if p.returncode != 0:
        raise RiscvBenchError(f"{' '.join(cmd)} failed (exit {p.returncode}): {err[-500:]}")
    if not out.exists():
        raise RiscvBenchError(f"the plugin wrote no counts ({out}): {err[-300:]}")
    return read_counts(out), p.stdout.decode("utf-8", "replace")


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


def disassemble(binary: Path) -> str:
    """The sid chroot's objdump; `-M max` decodes every extension (glibc's vector string
    functions carry ISA mapping symbols the default would not)."""
    p = toolchain.run_in_chroot([toolchain.OBJDUMP, "-d", "-M", "max", str(binary)])
    if p.returncode != 0:
        raise RiscvBenchError(f"objdump {binary} failed: {p.stderr.strip()}")
    return p.stdout


def kernel_object(target: str) -> Path | None:
    """build/<target>/obj/kernels_<set>.o, the per-ISA kernels, if the build left it."""
    obj = engine.build_dir(target) / "obj" / f"kernels_{engine.target(target).kernels}.o"
    return obj if obj.exists() else None


@dataclass(frozen=True)
class BinaryModel:
    """A static binary's cycle-model weights, encodings and function symbols."""

    weights: dict[int, float]
    raw: dict[int, int]
    symbols: list[Symbol]
    kernels: frozenset[str] = frozenset()

    @classmethod
    def of(cls, binary: Path, kernel_object: Path | None = None) -> BinaryModel:
        text = disassemble(binary)
        insns = parse_objdump(text)
        weights = {
            i.address: weigh(i, t) for i, t in zip(insns, governing_vtypes(insns), strict=True)
        }
        raw = {i.address: i.raw for i in insns if i.raw is not None}
        kernels = frozenset(s.name for s in (text_symbols(kernel_object) if kernel_object else ()))
        return cls(weights, raw, text_symbols(binary), kernels)

    def is_kernel(self, name: str) -> bool:
        """Whether function `name` (maybe a gcc clone, name.constprop.0) is a kernel."""
        return bool(KERNEL_SYMBOLS.match(name)) or name.split(".")[0] in self.kernels

    def symbol_at(self, address: int) -> str:
        starts = [s.address for s in self.symbols]
        i = bisect.bisect_right(starts, address) - 1
        while i >= 0:
            s = self.symbols[i]
            if s.address <= address < s.address + max(s.size, 1):
                return s.name
            if s.size:  # a sized symbol that ends before: not inside any
                break
            i -= 1
        return ""

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
    units: float  # per token
    kernel_units: float
    bytes: TokenBytes
    rss_kb: int
    kernels: tuple[str, ...]
    unknown: float  # per token: executed addresses objdump did not list

    @property
    def ratio(self) -> float:
        return self.units / self.insns

    def kernel_share(self) -> float:
        return self.kernel_units / self.units if self.units else 0.0

    def cycles(self, k: float) -> float:
        return k * self.units

    def tok_s(self, k: float) -> float:
        return modelled_tok_s(self.bytes.total, self.cycles(k))


def modelled_tok_s(bytes_per_token: float, cycles_per_token: float) -> float:
    return 1.0 / max(bytes_per_token / DRAM_BYTES_PER_S, cycles_per_token / CLOCK_HZ)


def calibrate(q80: Measurement) -> float:
    """Cycles per unit, assuming the contest entry's units/instruction ratio equals that
    of our own runq-style Q8_0 path (an assumption: we do not have its binary)."""
    return CONTEST_CYCLES_PER_TOKEN / (CONTEST_INSNS_PER_TOKEN * q80.ratio)


def per_token(
    short: Counts, long: Counts, bm: BinaryModel, label: str
) -> tuple[float, float, float, tuple[str, ...], float]:
    """(insns, units, kernel units, kernel symbols, unknown insns) per token from the
    difference of the two runs' counts."""
    units = kernel = unknown = 0.0
    kernels: set[str] = set()
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
        units += n * w
        name = bm.symbol_at(addr)
        if bm.is_kernel(name):
            kernel += n * w
            kernels.add(name.split(".")[0])
    insns = (long.total - short.total) / TOKENS
    return insns, units / TOKENS, kernel / TOKENS, tuple(sorted(kernels)), unknown / TOKENS


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


def _snapshot(target: str) -> tuple[Path, Path]:
    """Copies of the target's binary and kernel object: every count must describe one
    binary, even if the build is remade while the runs go on."""
    where = OUT / "snapshot" / target
    where.mkdir(parents=True, exist_ok=True)
    binary = Path(shutil.copy2(engine.build(target), where / "llama2"))
    return binary, Path(shutil.copy2(kernel_object(target), where / "kernels.o"))


def measure(
    configs: Sequence[Configuration], tokenizer: Path, jobs: int | None = None
) -> list[Measurement]:
    """Count every configuration at -n FIRST and -n LAST (in parallel), then weigh."""
    ensure_commands({GNU_TIME: "time"}, "measuring peak RSS")
    build_plugin()
    snapshots = {t: _snapshot(t) for t in sorted({c.target for c in configs})}
    binaries = {t: b for t, (b, _) in snapshots.items()}
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
        result = count_run(
            binaries[c.target], c.target, c.model, tokenizer, c.kpath, n, OUT / f"{slug}-n{n}.txt"
        )
        progress.finished(
            f"{c.label} -n {n}: {result[0].total / 1e6:.0f} M insns", time.monotonic() - t0
        )
        return result

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        results = dict(zip(runs, pool.map(one, runs), strict=True))

    out = []
    for c in configs:
        (short, s_story), (long, l_story) = results[(c, FIRST)], results[(c, LAST)]
        bm = models[c.target]
        _check_runs(c, bm, short, long, s_story, l_story)
        insns, units, kernel, kernels, unknown = per_token(short, long, bm, c.label)
        rss = host_rss_kb(host, c, tokenizer)
        tb = bytes_per_token(c.model)
        if tb.format == "faithful":
            tb = dataclasses.replace(tb, weights=faithful_weight_bytes(host, c.model, tokenizer))
        out.append(Measurement(c, insns, units, kernel, tb, rss, kernels, unknown))
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


# ===========================================================================================
# The command
# ===========================================================================================


def default_configurations(
    extra_models: Iterable[Path] = (), model: Path | None = None, target: str = "rv64gcv"
) -> list[Configuration]:
    """fp32 -k ref, fp32 -k fast, its v2 Q8_0 conversion -k q80 and its packed fp32 (-k ref
    and fast), q8 and q4 conversions (synth15m unless `model` is given), then each extra
    model on the engine's default path."""
    from duo_builder.bench.contest import converted, default_model

    fp32 = model or default_model()
    where = BUILD / "bench" if model else fp32.parent
    where.mkdir(parents=True, exist_ok=True)
    formats = ("q80", "fp32", "q8", "q4", "faithful")
    files = {fmt: converted(fp32, fmt, where) for fmt in formats}
    name = fp32.stem
    configs = [
        Configuration(f"{name} fp32 -k ref", fp32, "ref", target),
        Configuration(f"{name} fp32 -k fast", fp32, "fast", target),
        Configuration(f"{name} v2 Q8_0 -k q80", files["q80"], "q80", target),
        Configuration(f"{name} packed fp32 -k ref", files["fp32"], "ref", target),
        Configuration(f"{name} packed fp32 fast", files["fp32"], None, target),
        Configuration(f"{name} packed q8", files["q8"], None, target),
        Configuration(f"{name} packed q4", files["q4"], None, target),
        Configuration(f"{name} faithful", files["faithful"], "faithful", target),
    ]
    for m in extra_models:
        if not m.is_file():
            raise RiscvBenchError(f"model {m} does not exist")
        configs.append(Configuration(m.name, m, None, target))
    return configs


def report(ms: Sequence[Measurement], out: TextIO | None = None) -> None:
    """The table, with the calibration and the issue's scalar reference lines."""

    def say(s: str = "") -> None:
        print(s, file=out or sys.stdout)

    q80 = next(m for m in ms if m.config.kpath == "q80")
    k = calibrate(q80)
    base = q80.tok_s(k)
    say()
    say(
        f"calibration: the contest's best entry ran {CONTEST_INSNS_PER_TOKEN / 1e6:.1f} M "
        f"insns/token at {CONTEST_TOK_S} tok/s = {CONTEST_CYCLES_PER_TOKEN / 1e6:.2f} M "
        f"cycles/token; assuming its units/insn equals our q80 path's ({q80.ratio:.3f}):"
    )
    say(f"  k = {k:.3f} cycles per unit  (engine/CYCLE_MODEL.md)")
    say(
        f"positions {FIRST}-{LAST - 1} ({TOKENS} tokens), {' '.join(STORY_ARGS)}; "
        f"Duo = 1 / max(bytes / {DRAM_BYTES_PER_S / 1e9:.1f} GB/s, k x units / "
        f"{CLOCK_HZ / 1e9:.0f} GHz); RSS: host build, contest run (256 steps)"
    )
    head = (
        f"{'config':<32}{'insns/tok':>11}{'units/tok':>11}{'kernels':>9}{'MB/tok':>8}"
        f"{'RSS MB':>8}{'Duo tok/s':>11}{'bound':>7}{'x q80':>7}"
    )
    say(head)
    say("-" * len(head))
    for m in ms:
        cyc = m.cycles(k)
        bound = "mem" if m.bytes.total / DRAM_BYTES_PER_S > cyc / CLOCK_HZ else "cpu"
        tps = m.tok_s(k)
        say(
            f"{m.config.label[:31]:<32}{m.insns / 1e6:>10.2f}M{m.units / 1e6:>10.2f}M"
            f"{100 * m.kernel_share():>8.1f}%{m.bytes.total / 1e6:>8.2f}{m.rss_kb / 1024:>8.1f}"
            f"{tps:>11.1f}{bound:>7}{tps / base:>7.2f}"
        )
    fp32_bytes = next((m.bytes.total for m in ms if m.bytes.format in ("v0", "v1")), None)
    say("reference lines (the issue's counts; scalar, so units = insns):")
    for label, insns, fmt in SCALAR_REFERENCES:
        b = q80.bytes.total if fmt == "q80" else fp32_bytes
        tps = f"{modelled_tok_s(b, k * insns):>11.1f}" if b else f"{'':>11}"
        say(f"  {label:<38}{insns / 1e6:>10.1f}M{'':>11}{'':>9}{'':>8}{'':>8}{tps}")
    say(
        f"  {'contest best entry (XTheadVector)':<38}{CONTEST_INSNS_PER_TOKEN / 1e6:>10.1f}M"
        f"{'':>36}{CONTEST_TOK_S:>11.1f}  (measured on a Duo)"
    )
    for m in ms:
        if m.unknown > 0.001 * m.insns:
            say(
                f"note: {m.config.label}: {m.unknown:.0f} insns/token at addresses objdump "
                "did not list (weighed 1)"
            )
    kernels = sorted({s for m in ms for s in m.kernels})
    say(f"kernel symbols counted: {', '.join(kernels) or 'none'}")


def main(
    models: Sequence[str] = (),
    model: str | None = None,
    tokenizer: str | None = None,
    target: str = "rv64gcv",
) -> None:
    tok = Path(tokenizer) if tokenizer else LLAMA_TOKENIZER
    configs = default_configurations(
        [Path(m) for m in models], Path(model) if model else None, target
    )
    print(
        f"riscv bench: {len(configs)} configurations x 2 runs (-n {FIRST}, -n {LAST}) under "
        f"{QEMU} with {PLUGIN_SRC.relative_to(ENGINE_SRC.parent)}, target {target}"
    )
    report(measure(configs, tok))
