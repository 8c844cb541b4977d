"""Calibrating the cycle model v2 (engine/CYCLE_MODEL.md, "Calibration"): PR4's measured
instruction histogram (the 2023 contest's winner, 24.3 tok/s on a Duo), its vector
instructions given the vtypes its method implies, costed by cycles.py's table; one factor
per scenario so that its modelled speed is 24.3 tok/s; and the residual on measurements
the fit did not see (PR2's fp32 matrix-vector products timed on a Duo)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from duo_builder.bench.riscv.cycles import (
    CLOCK_HZ,
    SCENARIOS,
    RiscvBenchError,
    Scenario,
    VType,
    cost,
    is_vector,
    q80_bytes_per_token,
    stories15m_config,
)

PR4_HISTOGRAM = Path(__file__).with_name("pr4_histogram.tsv")
PR4_TOK_S = 24.3  # measured on a Duo 64 MB, contest final verification, 30-run mean
PR4_GROUP = 32

# PR4's method (c906-facts.md): per group of 32, two `vlb.v` (the activations' and the
# weights' int8 values, e8 m2, VL 32), one `vwmul.vv` e8 m2 -> e16 m4, one `vwredsum.vs`
# over the e16 m4 products, one `vmv.x.s` of the sum; `vmv.v.i` zeroes a one-register e32
# accumulator (an assumption: it could be the e16 m4 group, 8 cycles, not 4); the six
# vsetvli per group switch among these.
PR4_VTYPES: dict[str, VType] = {
    "vlb.v": VType(8, Fraction(2), 32),
    "vwmul.vv": VType(8, Fraction(2), 32),
    "vwredsum.vs": VType(16, Fraction(4), 32),
    "vmv.x.s": VType(32, Fraction(1), 4),
    "vmv.v.i": VType(32, Fraction(1), 4),
    "vsetvli": VType(8, Fraction(2), 32),
}


def read_histogram(path: Path = PR4_HISTOGRAM) -> dict[str, float]:
    """mnemonic -> executions per token from a `mnemonic<TAB>count` file (# comments)."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith(("#", "mnemonic")):
            continue
        name, n = line.split("\t")[:2]
        out[name] = out.get(name, 0.0) + float(n)
    return out


def histogram_cycles(hist: Mapping[str, float], vtypes: Mapping[str, VType]) -> float:
    """Modelled cycles per token of a histogram whose vector mnemonics all have a vtype."""
    total = 0.0
    for name, n in hist.items():
        if is_vector(name) and name not in vtypes:
            raise RiscvBenchError(f"no vtype assumed for PR4's vector instruction {name!r}")
        total += n * cost(name, vtypes.get(name))
    return total


@dataclass(frozen=True)
class Calibration:
    """The fitted factors (calibrated cycles = factor x modelled cycles) per scenario."""

    insns: float  # PR4's instructions per token
    cycles: float  # PR4's modelled cycles per token (before the factor)
    bytes: float  # PR4's bytes per token
    factors: dict[Scenario, float]

    def tok_s(self, scenario: Scenario) -> float:
        return 1.0 / scenario.seconds(self.factors[scenario] * self.cycles, self.bytes)


def fit(cycles: float, nbytes: float, tok_s: float, scenario: Scenario) -> float:
    """The factor that makes a token of `cycles` and `nbytes` take 1 / tok_s."""
    budget = 1.0 / tok_s
    memory = nbytes / scenario.bandwidth
    compute = budget if scenario.overlap else budget - memory
    if compute <= 0 or (scenario.overlap and memory > budget):
        raise RiscvBenchError(
            f"{scenario.label}: PR4's {nbytes / 1e6:.1f} MB/token alone take longer than "
            f"its measured {budget * 1e3:.1f} ms/token"
        )
    return compute * CLOCK_HZ / cycles


def calibrate(path: Path = PR4_HISTOGRAM) -> Calibration:
    hist = read_histogram(path)
    cyc = histogram_cycles(hist, PR4_VTYPES)
    nbytes = q80_bytes_per_token(stories15m_config(), PR4_GROUP).total
    factors = {s: fit(cyc, nbytes, PR4_TOK_S, s) for s in SCENARIOS}
    return Calibration(sum(hist.values()), cyc, nbytes, factors)


# ===========================================================================================
# The residual: PR2's fp32 matrix-vector products, timed on a Duo (c906-facts.md)
# ===========================================================================================

PR2_MATVECS = ((32000, 288, 58.87e-3), (768, 288, 0.951e-3))  # rows, cols, seconds measured
MATVEC_LMUL = 4  # a plain RVV kernel: e32 m4 strips of 16 (an assumption; see CYCLE_MODEL.md)


def matvec_fp32_mix(rows: int, cols: int, lmul: int = MATVEC_LMUL) -> float:
    """Modelled cycles (before the factor) of a plain RVV fp32 matvec: per row, strips of
    vsetvli, two unit-stride loads (weights, x), one vfmacc.vv, four scalar (two pointer
    adds, the count, the branch); then vmv.s.x, vfredusum over the accumulator, vfmv.f.s,
    fsw and three scalar of row overhead (plus a vmv.v.i zeroing the accumulator)."""
    vl = 128 * lmul // 32
    strips = -(-cols // vl)
    t = VType(32, Fraction(lmul), vl)
    strip = cost("vsetvli", t) + 2 * cost("vle.v", t) + cost("vfmacc.vv", t)
    strip += 2 * cost("add", None) + cost("sub", None) + cost("bnez", None)
    row = strips * strip + cost("vmv.v.i", t) + cost("vmv.s.x", t) + cost("vfredusum.vs", t)
    row += cost("vfmv.f.s", t) + cost("fsw", None) + 3 * cost("addi", None)
    return rows * row


def matvec_bytes(rows: int, cols: int) -> float:
    """The weights streamed once, x read (it stays in L1 after), y written."""
    return 4.0 * (rows * cols + cols + rows)


@dataclass(frozen=True)
class Residual:
    label: str
    measured_s: float
    modelled_s: dict[Scenario, float]

    def error(self, s: Scenario) -> float:
        """(modelled - measured) / measured."""
        return self.modelled_s[s] / self.measured_s - 1.0


def residuals(cal: Calibration) -> list[Residual]:
    out = []
    for rows, cols, measured in PR2_MATVECS:
        cyc, nbytes = matvec_fp32_mix(rows, cols), matvec_bytes(rows, cols)
        modelled = {s: s.seconds(cal.factors[s] * cyc, nbytes) for s in SCENARIOS}
        out.append(Residual(f"PR2 fp32 matvec {rows}x{cols}", measured, modelled))
    return out
