"""The Duo cycle model v2 (engine/CYCLE_MODEL.md): what an executed instruction costs on the
C906 by class, SEW and LMUL (../shared/notes/c906-facts.md's figures), the bytes a token
streams from DRAM, and the modelled time of a token in the four scenarios (1.0 or 1.4 GB/s;
compute and memory overlapping or not) plus storage. No program runs here: count.py
measures, calibration.py fits, report.py prints."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from duo_builder.errors import BuildError
from duo_builder.model import checkpoint, packed
from duo_builder.model.checkpoint import Config

# --- the Duo --------------------------------------------------------------------------------
VLEN = 128  # bits: the C906's vector registers
CLOCK_HZ = 1e9  # the C906 in the CV1800B
BANDWIDTHS = (1.0e9, 1.4e9)  # a streaming DRAM read on the Duo: somewhere in 1.0-1.4 GB/s
SD_BYTES_PER_S = 22e6  # the SD card, sequential
SD_REQUEST_S = 0.5e-3  # per storage request (an assumption: an A1 card's ~1,500 random IOPS)
PAGE = 4096  # no storage request reads less than a page

# --- the measured positions ---------------------------------------------------------------
FIRST, LAST = 64, 192  # measured positions: FIRST .. LAST - 1
TOKENS = LAST - FIRST
MEAN_POS = (FIRST + LAST - 1) / 2  # 127.5; attention at position p reads p + 1 keys


class RiscvBenchError(BuildError):
    """A measurement could not be made; the message names the cause."""


# ===========================================================================================
# The scenarios and the time of a token
# ===========================================================================================


@dataclass(frozen=True)
class Scenario:
    """One end of the range: DRAM bandwidth, and whether compute and memory overlap."""

    bandwidth: float  # bytes/s
    overlap: bool  # True: max(compute, memory); False: compute + memory

    @property
    def label(self) -> str:
        return f"{self.bandwidth / 1e9:.1f} GB/s {'max' if self.overlap else 'sum'}"

    def seconds(self, cycles: float, nbytes: float, storage_s: float = 0.0) -> float:
        """One token: calibrated cycles at CLOCK_HZ, bytes at the bandwidth, and the
        storage seconds, which overlap nothing."""
        compute, memory = cycles / CLOCK_HZ, nbytes / self.bandwidth
        core = max(compute, memory) if self.overlap else compute + memory
        return core + storage_s

    def bound(self, cycles: float, nbytes: float) -> str:
        return "mem" if nbytes / self.bandwidth > cycles / CLOCK_HZ else "cpu"


# The pessimistic ones first: the targets are read at 1.0 GB/s, sum
SCENARIOS = tuple(Scenario(bw, ov) for bw in BANDWIDTHS for ov in (False, True))
PESSIMISTIC = SCENARIOS[0]


def storage_seconds(read_bytes: float, requests: float) -> float:
    """Storage time of a token: its bytes at the SD card's sequential speed, plus a fixed
    cost per request; no more requests than pages read."""
    n = min(requests, read_bytes / PAGE)
    return read_bytes / SD_BYTES_PER_S + n * SD_REQUEST_S


# ===========================================================================================
# Disassembly and the vtype each vector instruction runs under
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


def base(mnemonic: str) -> str:
    """The mnemonic without the T-Head prefix (th.vadd.vv -> vadd.vv, th.flrw -> flrw)."""
    return mnemonic[3:] if mnemonic.startswith("th.") else mnemonic


def _is_vset(mnemonic: str) -> bool:
    return base(mnemonic).startswith("vset")


def _parse_vtype(operands: Sequence[str]) -> tuple[int, Fraction] | None:
    """SEW and LMUL of a vset*'s operands (RVV 1.0 `e8,m2,ta,ma` or XTheadVector
    `e8,m2,d1`)."""
    sew = lmul = None
    for op in operands:
        if m := re.fullmatch(r"e(\d+)", op):
            sew = int(m[1])
        elif m := re.fullmatch(r"m(f?)(\d+)", op):
            lmul = Fraction(1, int(m[2])) if m[1] else Fraction(int(m[2]))
    if sew is None:
        return None
    return sew, lmul if lmul is not None else Fraction(1)


_STORE = re.compile(r"^(s[bhwd]|fs[hwd]|c\.f?s[wd](sp)?|f?su?r[bhwd]|s[bhwd]i[ab]|s[wd]d)$")
_BRANCH = frozenset(
    "beq bne blt bge bltu bgeu beqz bnez blez bgez bltz bgtz bgt ble bgtu bleu "
    "c.beqz c.bnez j jr c.j c.jr ret".split()
)


def _writes(insn: Insn, reg: str) -> bool:
    """Whether `insn` writes integer register `reg`: its first operand, unless it is a
    store or a branch, which have no destination."""
    if not insn.operands or insn.operands[0] != reg:
        return False
    m = base(insn.mnemonic)
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
    """For each instruction, the vtype in force: set by the nearest preceding vset*
    (`vsetvli`, `vsetivli`, XTheadVector's `th.vsetvli`) in program (address) order within
    its function. The AVL of a vsetvli is taken as VLMAX unless it is an immediate
    (vsetivli), zero (VLMAX), x0 with rd x0 (VL kept), or a register last written by `li`
    or by another vset* nearby. None = no vset* yet, or a vsetvl (vtype in a register)."""
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
                rd, avl_op = (insn.operands + ("", ""))[:2]
                if base(insn.mnemonic).startswith("vsetivli"):
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


# ===========================================================================================
# The cost table: cycles per executed instruction (engine/CYCLE_MODEL.md)
# ===========================================================================================

# Vector: cycles at LMUL 1, 2, 4, 8 (c906-facts.md, rvv-bench on the C906; the LMUL 8
# column, and any figure the facts leave blank, doubles the one before: an extrapolation)
V_INT = (4, 4, 8, 16)  # vadd, vsll, vand, vmv.v.x, vslideup, compares, merges...
V_MUL_NARROW_SEW = (4, 4, 8, 16)  # vmul / vmacc at e8, e16
V_MUL_E32 = (5, 5, 8, 16)  # vmul / vmacc at e32, e64
V_WIDEN = (4, 8, 16, 32)  # vwmul, vwmacc, vwadd(.wv), vwcvt, vfwadd, vfwcvt: by source LMUL
V_NARROW = (4, 8, 16, 32)  # vnsra, vnclip, vncvt, vfncvt: by destination LMUL
V_RED = (5, 5, 9, 18)  # vredsum, vwredsum, vredmax...
V_FADD = (4, 4, 8, 16)  # vfadd, vfsub, vfmin/max, vfsgnj, vfcvt (same width), fp compares
V_FMUL = (5, 5, 8, 16)  # vfmul, vfmacc, vfmadd... (e32; e16 assumed the same)
V_FWMACC = (5, 10, 20, 40)  # vfwmacc, vfwmul (e16 source)
V_FRED_U = {32: (9, 14, 22, 44), 16: (12, 17, 34, 68)}  # vfredusum (0.7.1 vfredsum), max, min
V_FRED_O = {32: (11, 23, 47, 95), 16: (23, 47, 95, 190)}  # vfredosum, vfwredosum
V_RGATHER = (4, 16, 64, 256)  # vrgather.vv
V_DIV = (36, 72, 144, 288)  # vfdiv, vfsqrt (e32); integer vdiv/vrem assumed the same
V_TO_SCALAR = {"vmv.x.s": 5, "vext.x.v": 5, "vfmv.f.s": 4}  # 0.7.1 vext.x.v = vmv.x.s
V_TO_SCALAR_OTHER = 5  # vcpop/vfirst (0.7.1 vmpopc/vmfirst): assumed as vmv.x.s
V_FROM_SCALAR = 4  # vmv.s.x, vfmv.s.f: assumed as an integer op at LMUL 1
V_MASK = 4  # vmand.mm ...: an integer op at LMUL 1
VSET = 3  # vsetvli, vsetivli, th.vsetvli
V_MEM_PER_16B = 2  # unit-stride loads and stores: ~8 bytes per cycle in L1
V_MEM_PER_ELEMENT = 2  # strided and indexed: element by element (an assumption)

# Scalar (openc906 user manual; rvv-bench for mul and add)
S_DEFAULT = 1  # add, shift, logic, lui, li, mv, T-Head addsl/ext/extu/mveqz..., branches
S_LOAD = 2  # lb..ld, flw, fld, T-Head indexed lr*/flr* and post-increment l*ia/l*ib
S_LOAD_PAIR = 3  # T-Head ldd/lwd/lwud: two registers (an assumption)
S_STORE = 1  # a store buffer (an assumption)
S_MUL = 4  # mul, mulw, T-Head mula/muls... (rvv-bench measured 4; the manual says 3)
S_MULH = 6
S_DIV = 20.5  # div, divu, rem, remu: 5-36, iterative: the middle
S_DIVW = 12.5  # divw, divuw, remw, remuw: 5-20
S_FADD = 3  # fadd, fsub, fmul (.s, .d, .h)
S_FMADD = 4  # fmadd, fmsub, fnmadd, fnmsub
S_FDIV = 10  # fdiv, fsqrt: 4-17
S_FOTHER = 3  # fmv, fcvt, feq/flt/fle, fclass, fsgnj, fmin/fmax
S_ATOMIC = 2  # lr/sc, amo*: as a load (rare on our paths)

_V_UNIT = re.compile(r"^v[ls](?:seg(\d))?(?:e(\d*)|[bhw]u?)(?:ff)?\.v$")  # vle32.v, vle.v, vlbu.v
_V_STRIDED = re.compile(r"^v[ls]s(?:seg(\d))?(?:e\d*|[bhw]u?)\.v$")  # vlse32.v, vlse.v, vlsb.v
_V_INDEXED = re.compile(r"^v[ls](?:[uo]x|x|ux)(?:seg(\d))?(?:ei\d+|e|[bhw]u?)\.v$")
_V_WHOLE = re.compile(r"^v[ls](\d)r(?:e\d+)?\.v$")
_V_MVNR = re.compile(r"^vmv(\d)r\.v$")
_V_MASK = re.compile(
    r"^vm(and|nand|andn|andnot|xor|or|nor|orn|ornot|xnor|mv|not|clr|set|sbf|sif|sof)\.mm?$"
)
_V_TO_SCALAR_OTHER = frozenset("vcpop.m vpopc.m vmpopc.m vfirst.m vmfirst.m".split())
_S_LOAD = re.compile(r"^(l[bhwd]u?|fl[hwd]|c\.f?l[wd](sp)?|f?lu?r[bhwd]u?|l[bhwd]u?i[ab])$")
_S_LOAD_PAIR = frozenset("ldd lwd lwud".split())
_S_MUL = re.compile(r"^(mulw?|mul[as][hw]?)$")
_S_MULH = frozenset("mulh mulhu mulhsu".split())
_S_DIV = frozenset("div divu rem remu".split())
_S_DIVW = frozenset("divw divuw remw remuw".split())
_S_FP_CSR = frozenset("frflags fsflags frrm fsrm frcsr fscsr fsflagsi fsrmi fence fence.i".split())


def _lmul_index(vtype: VType, sew: int | None = None) -> int:
    """0..3 for LMUL 1, 2, 4, 8: the registers the instruction touches at its VL (a
    fractional LMUL or a short VL counts as one register)."""
    width = vtype.vl * (sew or vtype.sew)
    regs = max(1, math.ceil(width / VLEN), 1)
    regs = min(regs, max(1, int(vtype.lmul)))
    return min(3, (regs - 1).bit_length())


def vector_cost(m: str, t: VType) -> float:
    """Cycles of one vector instruction `m` (T-Head prefix removed) under vtype `t`."""
    li = _lmul_index(t)
    if m.startswith("vset"):
        return VSET
    if w := _V_WHOLE.match(m):
        return V_MEM_PER_16B * int(w[1])
    if w := _V_MVNR.match(m):
        return V_INT[min(3, (int(w[1]) - 1).bit_length())]
    if m in ("vlm.v", "vsm.v"):
        return V_MEM_PER_16B
    if s := _V_UNIT.match(m):
        eew = int(s[2]) if s[2] else t.sew  # 0.7.1 vle.v/vlb.v: SEW-wide register elements
        return V_MEM_PER_16B * int(s[1] or 1) * max(1.0, t.vl * eew / VLEN)
    if s := (_V_STRIDED.match(m) or _V_INDEXED.match(m)):
        return V_MEM_PER_ELEMENT * int(s[1] or 1) * t.vl
    if m in V_TO_SCALAR:
        return V_TO_SCALAR[m]
    if m in _V_TO_SCALAR_OTHER:
        return V_TO_SCALAR_OTHER
    if m in ("vmv.s.x", "vfmv.s.f"):
        return V_FROM_SCALAR
    if _V_MASK.match(m):
        return V_MASK
    if re.match(r"^vfw?redosum\.", m):
        return V_FRED_O[16 if m.startswith("vfw") or t.sew <= 16 else 32][li]
    if re.match(r"^vfw?red", m):
        return V_FRED_U[16 if m.startswith("vfw") or t.sew <= 16 else 32][li]
    if re.match(r"^vw?red", m):
        return V_RED[li]
    if re.match(r"^v(f?div|divu|f?rdiv|remu?|fsqrt)\.", m):
        return V_DIV[li]
    if m.startswith("vrgather"):
        return V_RGATHER[li] if ".vv" in m or "ei16" in m else V_INT[li]
    if re.match(r"^vfw(n?macc|n?msac|mul)\.", m):
        return V_FWMACC[li]
    if re.match(r"^v(f?w|fwcvt)", m):  # widening: by source LMUL, vtype's
        return V_WIDEN[li]
    if re.match(r"^v(nsrl|nsra|nclipu?|ncvt|fncvt)\.", m):  # by destination LMUL
        return V_NARROW[li]
    if re.match(r"^v(mulh?s?u?|n?macc|n?msac|madd|nmsub)\.", m):
        return (V_MUL_NARROW_SEW if t.sew <= 16 else V_MUL_E32)[li]
    if re.match(r"^vf(mul|n?macc|n?msac|n?madd|n?msub)\.", m):
        return V_FMUL[li]
    if m.startswith("vf"):
        return V_FADD[li]
    return V_INT[li]


def scalar_cost(m: str) -> float:
    """Cycles of one scalar instruction `m` (T-Head prefix removed)."""
    if _S_LOAD.match(m) or m.startswith("lr."):
        return S_ATOMIC if m.startswith("lr.") else S_LOAD
    if m in _S_LOAD_PAIR:
        return S_LOAD_PAIR
    if _STORE.match(m):
        return S_STORE
    if m.startswith(("sc.", "amo")):
        return S_ATOMIC
    if m in _S_MULH:
        return S_MULH
    if _S_MUL.match(m):
        return S_MUL
    if m in _S_DIV:
        return S_DIV
    if m in _S_DIVW:
        return S_DIVW
    if m.startswith("f") and m not in _S_FP_CSR:
        if re.match(r"^f(div|sqrt)\.", m):
            return S_FDIV
        if re.match(r"^fn?m(add|sub)\.", m):
            return S_FMADD
        if re.match(r"^f(add|sub|mul)\.", m):
            return S_FADD
        return S_FOTHER
    return S_DEFAULT


def is_vector(mnemonic: str) -> bool:
    m = base(mnemonic)
    return m.startswith("v")


def cost(mnemonic: str, vtype: VType | None) -> float:
    """Cycles (before the calibration factor) of one execution of `mnemonic` under
    `vtype` (None: no vset* seen; one e32 register assumed)."""
    m = base(mnemonic)
    if m.startswith("v"):
        return vector_cost(m, vtype or FALLBACK_VTYPE)
    return scalar_cost(m)


def weigh(insn: Insn, vtype: VType | None) -> float:
    """cost() of a disassembled instruction."""
    return cost(insn.mnemonic, vtype)


def weigh_disassembly(text: str) -> dict[int, float]:
    """Address -> modelled cycles for every instruction of an objdump listing."""
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


def stories15m_config() -> Config:
    """The stories15M shape (the contest's model; synth15m has the same)."""
    return Config(288, 768, 6, 6, 6, 32000, 256)


def q80_bytes_per_token(cfg: Config, group_size: int = 32, pos: float = MEAN_POS) -> TokenBytes:
    """What a llama2.c v2 Q8_0 file of shape `cfg` streams per token (runq.c's fp32 KV)."""
    weights = checkpoint.streamed_bytes_per_token(cfg, "q80", group_size)
    return TokenBytes("q80", weights, kv_bytes(cfg, pos, "q80"))
