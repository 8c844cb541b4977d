"""The pure parts of `invoke bench --riscv` (duo_builder/bench/riscv/): the cycle model v2's
cost table on hand-written disassembly (RVV 1.0 and XTheadVector), the calibration on PR4's
measured histogram, bytes per token from hand-written headers, the --qemu checks through
the real CLI, and the QEMU counting plugin on a tiny static riscv64 program. The benchmark
itself is not a test."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from duo_builder.bench.riscv import calibration, count, cycles
from duo_builder.build import toolchain
from duo_builder.model import packed
from duo_builder.model.checkpoint import MAGIC
from duo_builder.paths import BUILD, REPO, SHARED

LISTING = """
0000000000010000 <kernel>:
   10000:\t0c0077d7          \tvsetvli\ta5,zero,e8,m1,ta,ma
   10004:\tf2256157          \tvwmacc.vx\tv2,a0,v1
   10008:\tvsetvli\ta5,zero,e32,m4,ta,ma
   1000c:\tvfmacc.vv\tv4,v8,v12
   10010:\tvsetvli\ta4,zero,e32,m1,ta,ma
   10014:\tvredsum.vs\tv1,v2,v1
   10018:\tvfredosum.vs\tv1,v2,v1
   1001c:\t952e                \tadd\ta0,a0,a1
   1001e:\tdivw\ta0,a0,a1
   10022:\tvsetivli\tzero,2,e32,m1,ta,ma
   10026:\tvfadd.vv\tv1,v1,v2
   1002a:\tli\ta3,6
   1002c:\tvsetvli\tzero,a3,e32,m2,ta,ma
   10030:\tvle32.v\tv2,(a1)
   10034:\tvle8.v\tv2,(a1)
   10038:\tvsetvli\tzero,a2,e16,m2,ta,ma
   1003c:\tvnsrl.wi\tv1,v2,0
   10040:\tvmv.x.s\ta0,v1
   10042:\tvfnmsac.vv\tv1,v2,v3
   10043:\tvmand.mm\tv0,v1,v2
   10044:\tret

0000000000010100 <other>:
   10100:\tvadd.vv\tv1,v1,v2

0000000000010200 <th_kernel>:
   10200:\t00007d57          \tth.vsetvli\ts10,zero,e8,m2,d1
   10204:\tth.vlb.v\tv2,(a5)
   10208:\tth.vwmul.vv\tv4,v2,v6
   1020c:\tth.vsetvli\tzero,zero,e16,m4,d1
   10210:\tth.vwredsum.vs\tv1,v4,v1
   10214:\tth.vext.x.v\ta0,v1,zero
   10218:\tth.vsetvli\tzero,zero,e32,m1,d1
   1021c:\tth.vle.v\tv1,(a0)
   10220:\tth.vfredsum.vs\tv1,v2,v1
   10224:\tth.flrw\tfa5,a0,a1,2
   10228:\tth.addsl\ta0,a0,a1,2
   1022c:\tth.mula\ta0,a1,a2
   10230:\tth.ldd\ta0,a1,(a2),0,4
   10234:\tth.srw\ta0,a1,a2,2
   10238:\tfmadd.s\tfa0,fa1,fa2,fa3
   1023c:\tdiv\ta0,a0,a1
   10240:\tfdiv.s\tfa0,fa1,fa2
   10244:\tfcvt.s.w\tfa0,a0
"""


def test_cost_table_on_rvv_disassembly():
    w = cycles.weigh_disassembly(LISTING)
    assert w[0x10000] == cycles.VSET == 3
    assert w[0x10004] == 4  # widening e8 from one register
    assert w[0x1000C] == 8  # vfmacc e32 m4
    assert w[0x10014] == 5  # integer reduction, one register
    assert w[0x10018] == 11  # ordered fp reduction e32 m1
    assert w[0x1001C] == 1
    assert w[0x1001E] == cycles.S_DIVW == 12.5  # divw: the middle of 5-20
    assert w[0x10026] == 4  # vsetivli 2: one register
    assert w[0x10030] == 2 * 1.5  # AVL 6 from `li`: 6 x 32 bits = 1.5 registers, 2 per 16 B
    assert w[0x10034] == 2  # EEW 8 from the mnemonic: less than a register
    assert w[0x1003C] == 8  # narrowing, destination m2 (unknown AVL: VLMAX)
    assert w[0x10040] == 5  # vmv.x.s
    assert w[0x10042] == 5  # vfnmsac: an fp multiply-add at m2 (not narrowing)
    assert w[0x10043] == cycles.V_MASK
    assert w[0x10100] == 4  # no vset* in its function: one e32 register


def test_cost_table_on_xtheadvector_disassembly():
    """The c906 build's objdump names (th.*, RVV 0.7.1) cost as PR4's method implies."""
    w = cycles.weigh_disassembly(LISTING)
    assert w[0x10200] == 3  # th.vsetvli
    assert w[0x10204] == 4  # th.vlb.v e8 m2: 32 bytes, two registers, 2 cycles each
    assert w[0x10208] == 8  # th.vwmul.vv e8 m2 -> e16 m4: widening by source LMUL 2
    assert w[0x10210] == 9  # th.vwredsum.vs over e16 m4 (VL kept: 32 x 16 bits = 4 regs)
    assert w[0x10214] == 5  # th.vext.x.v = vmv.x.s
    assert w[0x1021C] == 2  # th.vle.v e32 m1: one register
    assert w[0x10220] == 9  # th.vfredsum.vs: 0.7.1's unordered sum, e32 m1
    assert w[0x10224] == cycles.S_LOAD  # th.flrw: indexed fp load
    assert w[0x10228] == 1  # th.addsl
    assert w[0x1022C] == cycles.S_MUL  # th.mula
    assert w[0x10230] == cycles.S_LOAD_PAIR  # th.ldd
    assert w[0x10234] == cycles.S_STORE  # th.srw: indexed store
    assert w[0x10238] == 4 and w[0x1023C] == cycles.S_DIV and w[0x10240] == cycles.S_FDIV
    assert w[0x10244] == 3  # fcvt


def test_objdump_parsing_keeps_functions_and_encodings():
    insns = {i.address: i for i in cycles.parse_objdump(LISTING)}
    assert insns[0x10000].raw == 0x0C0077D7 and insns[0x10008].raw is None
    assert insns[0x10004].mnemonic == "vwmacc.vx"
    assert insns[0x10004].operands == ("v2", "a0", "v1")
    assert insns[0x10100].function == "other" and insns[0x10044].function == "kernel"


TSV = SHARED / "reference" / "c906" / "insns_per_token.tsv"


@pytest.mark.needs_shared(TSV)
def test_calibration_reproduces_pr4_from_the_measured_histogram(tmp_path):
    """The package's copy of PR4's histogram is the reference tsv's column, and the fitted
    factors give PR4's measured 24.3 tok/s in all four scenarios."""
    lines = [ln for ln in TSV.read_text().splitlines() if not ln.startswith("#")]
    col = lines[0].split("\t").index("pr4_q80")
    pr4 = {f[0]: float(f[col]) for f in (ln.split("\t") for ln in lines[1:]) if float(f[col])}
    assert calibration.read_histogram() == pr4
    assert sum(pr4.values()) == pytest.approx(19.026e6, rel=1e-4)  # the tsv's stated total
    (tmp_path / "pr4.tsv").write_text("\n".join(f"{k}\t{v}" for k, v in pr4.items()))
    cal = calibration.calibrate(tmp_path / "pr4.tsv")
    assert set(cal.factors) == set(cycles.SCENARIOS)
    for s in cycles.SCENARIOS:
        assert cal.tok_s(s) == pytest.approx(calibration.PR4_TOK_S)
        assert 0 < cal.factors[s] < 2
    # overlap: the factor does not depend on the bandwidth (PR4 is compute-bound)
    assert cal.factors[cycles.SCENARIOS[1]] == pytest.approx(cal.factors[cycles.SCENARIOS[3]])
    for r in calibration.residuals(cal):  # printed, not judged: but finite and positive
        assert all(v > 0 for v in r.modelled_s.values())


def test_a_vector_mnemonic_without_a_vtype_is_refused():
    with pytest.raises(cycles.RiscvBenchError, match="vfoo.vv"):
        calibration.histogram_cycles({"vfoo.vv": 1.0}, calibration.PR4_VTYPES)


def test_an_unknown_only_key_is_one_line_through_the_cli():
    p = _invoke("--only", "q8,q9")
    assert p.returncode != 0
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1 and "--only q9" in lines[0] and "faithful" in lines[0], lines


# stories15M's shape, as engine/FORMAT.md's table
DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 288, 768, 6, 6, 6, 32000, 256
SHAPE = (DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ)
MATRICES = [(288, 288), (288, 288), (288, 288), (288, 288), (768, 288), (288, 768), (768, 288)]
NORMS = (2 * LAYERS + 1) * DIM * 4
KV = 2 * LAYERS * (cycles.MEAN_POS + 1) * DIM * 4


def packed_header(weights: int, block: int, *, break_section: bool = False) -> bytes:
    """A packed header written by hand from FORMAT.md (shared classifier, R 16, G 32)."""

    def size(rows: int, cols: int) -> int:
        tiles = -(-rows // 16)
        if weights == 1:
            return tiles * cols * 16 * 4
        return tiles * -(-cols // 32) * block

    sections = [(1, 0, NORMS)]
    for layer in range(LAYERS):
        sections += [(3 + i, layer, size(r, c)) for i, (r, c) in enumerate(MATRICES)]
    sections.append((10, 0, size(VOCAB, DIM)))
    group = 0 if weights == 1 else 32  # fp32 has no groups: the engine refuses another value
    head = b"DUOPACK\0" + struct.pack("<ii7i4i", 1, weights, *SHAPE, 1, 16, group, len(sections))
    head = head.ljust(128, b"\0")
    offset = 4096
    for i, (kind, layer, nbytes) in enumerate(sections):
        if break_section and i == 5:
            nbytes += 1
        head += struct.pack("<IIQQ", kind, layer, offset, nbytes)
        offset += -(-nbytes // 4096) * 4096
    return head


@pytest.mark.parametrize(
    "weights, block, streamed_mib, embedding_row",
    [(2, 544, 15.39, 9 * 544), (3, 288, 8.15, 9 * 288), (1, 0, 57.94, 288 * 16 * 4)],
)
def test_bytes_per_token_of_a_packed_header(weights, block, streamed_mib, embedding_row):
    tb = cycles.header_bytes_per_token(packed_header(weights, block))
    matrices = tb.weights - NORMS - embedding_row  # the layers and the classifier
    assert round(matrices / 2**20, 2) == streamed_mib  # FORMAT.md's table
    kv = KV if weights == 1 else KV / 2  # the engine keeps q8/q4's KV cache in binary16
    assert tb.kv == kv and tb.total == tb.weights + kv
    assert tb.format == {1: "fp32", 2: "q8", 3: "q4"}[weights]
    if weights == 2:  # FORMAT.md: layers 6.35 MB, classifier 9.79 MB
        assert LAYERS * sum(packed.packed_bytes("q8", r, c) for r, c in MATRICES) == (6_345_216)
        assert packed.packed_bytes("q8", VOCAB, DIM) == 9_792_000


def test_packed_header_with_a_wrong_section_is_refused():
    with pytest.raises(ValueError, match="section 5"):
        cycles.header_bytes_per_token(packed_header(2, 544, break_section=True))


def test_bytes_per_token_of_llama2c_headers():
    params = sum(r * c for r, c in MATRICES) * LAYERS + VOCAB * DIM
    v1 = struct.pack("<Ii7iB", MAGIC, 1, *SHAPE, 1).ljust(256, b"\0")
    assert cycles.header_bytes_per_token(v1).weights == 4 * params + NORMS + 4 * DIM
    v0 = struct.pack("<7i", *SHAPE)
    assert cycles.header_bytes_per_token(v0).weights == 4 * params + NORMS + 4 * DIM
    v2 = struct.pack("<Ii7iBi", MAGIC, 2, *SHAPE, 1, 32).ljust(256, b"\0")
    tb = cycles.header_bytes_per_token(v2)
    # int8 values + an fp32 scale per 32; the embedding row dequantized from the same table
    assert tb.weights == params + params // 8 + NORMS + DIM + DIM // 8
    assert tb.format == "q80" and tb.kv == KV


def test_scenarios_overlap_or_add_and_storage_adds():
    s10_sum, s10_max, s14_sum, s14_max = cycles.SCENARIOS
    assert cycles.PESSIMISTIC == s10_sum and s10_sum.label == "1.0 GB/s sum"
    assert s10_max.seconds(20e6, 10e6) == pytest.approx(0.020)  # compute wins
    assert s10_sum.seconds(20e6, 10e6) == pytest.approx(0.030)
    assert s14_max.seconds(1e6, 14e6) == pytest.approx(0.010)  # memory wins
    assert s14_sum.seconds(1e6, 14e6, storage_s=0.005) == pytest.approx(0.016)
    # storage: 22 MB/s plus a fixed cost per request, never more requests than pages
    assert cycles.storage_seconds(22e6, 1) == pytest.approx(1 + cycles.SD_REQUEST_S)
    assert cycles.storage_seconds(8192, 100) == pytest.approx(8192 / 22e6 + 2 * 0.5e-3)


def _invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--riscv", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "content, mode, message",
    [
        ("", 0o644, "not executable"),
        ("#!/bin/sh\necho any; echo rv64; exit 1\n", 0o755, "lists no c906fdv"),
    ],
)
def test_a_wrong_qemu_is_one_line_through_the_cli(tmp_path, content, mode, message):
    fake = tmp_path / "qemu-riscv64"
    fake.write_text(content)
    fake.chmod(mode)
    p = _invoke("--qemu", str(fake))
    assert p.returncode != 0
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(fake) in lines[0], lines


SPIN = r"""
__attribute__((noinline)) long spin(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += i ^ (s >> 3);
    return s;
}
int main(int argc, char **argv) { (void)argv; return (int)(spin(999 + argc) & 1); }
"""


@pytest.fixture(scope="module")
def spin_binary() -> Path:
    """A tiny static riscv64 program, built with the toolchain chroot's gcc 15."""
    d = BUILD / "riscv-bench" / "test"
    d.mkdir(parents=True, exist_ok=True)
    (d / "spin.c").write_text(SPIN)
    p = toolchain.run_in_chroot(
        [toolchain.GCC, "-O1", "-static", "-o", str(d / "spin"), str(d / "spin.c")]
    )
    assert p.returncode == 0, p.stderr
    return d / "spin"


def test_plugin_counts_a_tiny_program_deterministically(spin_binary, tmp_path):
    import subprocess

    def counted(name: str) -> count.Counts:
        out = tmp_path / name
        cmd = [*count.qemu_prefix("rv64gcv", count.build_plugin(), out), "-d", "plugin"]
        p = subprocess.run([*cmd, str(spin_binary)], capture_output=True, text=True)
        assert p.returncode in (0, 1), p.stderr
        return count.read_counts(out)

    a, b = counted("a.txt"), counted("b.txt")
    assert a.per_address == b.per_address and a.total == b.total
    assert a.total == sum(a.per_address.values())
    bm = count.BinaryModel.of(spin_binary)
    in_spin = {addr: n for addr, n in a.per_address.items() if bm.symbol_at(addr) == "spin"}
    assert max(in_spin.values()) == 1000  # the loop body, once per iteration
    assert sum(n == 1000 for n in in_spin.values()) >= 3
    for addr, raw in a.encoding.items():  # QEMU ran what objdump lists
        if addr in bm.raw:
            assert int.from_bytes(raw, "little") == bm.raw[addr], hex(addr)
