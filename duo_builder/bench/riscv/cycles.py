"""The Duo cycle model (engine/CYCLE_MODEL.md): what an executed instruction costs on the
C906, the calibration on the 2023 contest's best entry, the bytes a token streams from
DRAM, and the modelled speed, the slower of compute and memory. No program runs here:
count.py measures, report.py prints."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from duo_builder.errors import BuildError
from duo_builder.model import checkpoint, packed
from duo_builder.model.checkpoint import Config

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

# --- the measured positions ---------------------------------------------------------------
FIRST, LAST = 64, 192  # measured positions: FIRST .. LAST - 1
TOKENS = LAST - FIRST
MEAN_POS = (FIRST + LAST - 1) / 2  # 127.5; attention at position p reads p + 1 keys


class RiscvBenchError(BuildError):
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
# Bytes streamed per token: the format modules' counts, plus the KV cache
# ===========================================================================================


@dataclass(frozen=True)
class TokenBytes:
    """What one token streams from DRAM: the weights it reads, and the KV cache."""

    format: str
    weights: int
    kv: float

    @property
    def total(self) -> float:
        return self.weights + self.kv


# Bytes per KV-cache element: the engine keeps binary16 for the packed quantized formats
# (engine/src/kv_cache.c, half_layout), fp32 for everything else
KV_ELEMENT_BYTES = {"q8": 2, "q4": 2}


def kv_bytes(cfg: Config, pos: float = MEAN_POS, fmt: str = "v1") -> float:
    """Keys and values read by attention at position `pos` (positions 0..pos: pos + 1
    rows of kv_dim elements each, per layer, keys and values)."""
    return 2 * cfg.n_layers * (pos + 1) * cfg.kv_dim * KV_ELEMENT_BYTES.get(fmt, 4)


def header_bytes_per_token(head: bytes, pos: float = MEAN_POS) -> TokenBytes:
    """Bytes streamed per token at position `pos` for a model file whose first bytes are
    `head`: llama2.c v0/v1 fp32 or v2 Q8_0 (duo_builder.model.checkpoint), or the packed
    format (duo_builder.model.packed; `head` must hold the section table to have it
    checked). A faithful file's weights leave out the fp32 tiles its sampler recomputes:
    count.measure() adds what a run reports."""
    if head[: len(packed.MAGIC)] == packed.MAGIC:
        h = packed.parse_header(head)
        weights = packed.streamed_bytes_per_token(h.config, h.weights)
        return TokenBytes(h.weights, weights, kv_bytes(h.config, pos, h.weights))
    fmt, cfg, group_size = checkpoint.parse_header(head)
    weights = checkpoint.streamed_bytes_per_token(cfg, fmt, group_size)
    return TokenBytes(fmt, weights, kv_bytes(cfg, pos, fmt))


def bytes_per_token(model: Path, pos: float = MEAN_POS) -> TokenBytes:
    """header_bytes_per_token() of a model file."""
    try:
        with open(model, "rb") as f:
            head = f.read(checkpoint.V1_HEADER_BYTES)
            if head[: len(packed.MAGIC)] == packed.MAGIC:
                head += f.read(max(0, packed.header_length(head) - len(head)))
        return header_bytes_per_token(head, pos)
    except (ValueError, struct.error, checkpoint.CheckpointError) as e:
        raise RiscvBenchError(f"{model}: {e}") from None


# ===========================================================================================
# Calibration and the modelled speed
# ===========================================================================================


def calibrate(units_per_insn: float) -> float:
    """Cycles per unit, assuming the contest entry's units/instruction ratio equals
    `units_per_insn`, that of our own runq-style Q8_0 path (an assumption: we do not have
    its binary)."""
    return CONTEST_CYCLES_PER_TOKEN / (CONTEST_INSNS_PER_TOKEN * units_per_insn)


def modelled_tok_s(bytes_per_token: float, cycles_per_token: float) -> float:
    return 1.0 / max(bytes_per_token / DRAM_BYTES_PER_S, cycles_per_token / CLOCK_HZ)
