"""The pure parts of `invoke bench --riscv` (duo_builder/bench/riscv/): the cycle model
on hand-written disassembly, bytes per token from hand-written headers, and the QEMU
counting plugin on a tiny static riscv64 program. The benchmark itself is not a test."""

import struct
from pathlib import Path

import pytest

from duo_builder.bench.riscv import count, cycles
from duo_builder.build import toolchain
from duo_builder.model import packed
from duo_builder.model.checkpoint import MAGIC
from duo_builder.paths import BUILD

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
"""


def test_cycle_model_weights():
    w = cycles.weigh_disassembly(LISTING)
    assert w[0x10000] == 1  # vsetvli: a scalar instruction
    assert w[0x10004] == 2  # e8, m1: VL 16 x 8 bits / 64
    assert w[0x1000C] == 8  # e32, m4: VL 16 x 32 / 64
    assert w[0x10014] == 2 + cycles.REDUCTION_EXTRA  # e32 m1 reduction: 4 x 32 / 64 + 6
    assert w[0x10018] == 4 * cycles.ORDERED_PER_ELEMENT  # ordered: per element
    assert w[0x1001C] == 1  # scalar
    assert w[0x1001E] == cycles.SCALAR_DIV
    assert w[0x10026] == 1  # vsetivli 2: 2 x 32 / 64
    assert w[0x10030] == 3  # AVL 6 from `li`: 6 x 32 / 64
    assert w[0x10034] == 1  # EEW 8 from the mnemonic: 6 x 8 / 64 -> at least 1
    assert w[0x1003C] == 8  # narrowing, unknown AVL: VLMAX 16 x 2 x 16 / 64
    assert w[0x10040] == 1
    assert w[0x10042] == 4  # not narrowing: 16 x 16 / 64
    assert w[0x10043] == 1  # mask logic
    assert w[0x10100] == 2  # no vset* in its function: one e32 m1 register


def test_objdump_parsing_keeps_functions_and_encodings():
    insns = {i.address: i for i in cycles.parse_objdump(LISTING)}
    assert insns[0x10000].raw == 0x0C0077D7 and insns[0x10008].raw is None
    assert insns[0x10004].mnemonic == "vwmacc.vx"
    assert insns[0x10004].operands == ("v2", "a0", "v1")
    assert insns[0x10100].function == "other" and insns[0x10044].function == "kernel"


def test_xtheadvector_mnemonics_weigh_alike():
    th = "0000000000010000 <k>:\n   10000:\tth.vsetvli\ta5,zero,e32,m4,d1\n"
    th += "   10004:\tth.vfmacc.vv\tv4,v8,v12\n"
    assert cycles.weigh_disassembly(th)[0x10004] == 8


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


def test_modelled_speed_takes_the_slower_of_memory_and_compute():
    assert cycles.modelled_tok_s(1.4e9 / 50, 1e9 / 100) == pytest.approx(50)
    assert cycles.modelled_tok_s(1.4e9 / 100, 1e9 / 40) == pytest.approx(40)


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
