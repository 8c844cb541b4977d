"""The RISC-V vector kernels (engine/src/kernels_rvv.c) in the rv64gcv and c906 builds.

test_riscv.py already runs the rv64gcv build (now with these kernels) against run.c's
goldens with -k ref, compares its fast and Q8_0 stories with the host's for seeds 1-3 and
runs the C unit tests under QEMU. This file adds what is specific to the vector kernels:
a kernel-level check over many shapes under several QEMU vector configurations, more
seeds against the host, and the c906 build's XTheadVector code (which nothing here can
run: its disassembly must show the vector kernels and no vlenb read)."""

import re
from pathlib import Path

import pytest

from duo_builder import engine, toolchain
from duo_builder.convert import convert
from duo_builder.paths import BUILD, ENGINE_SRC, MODELS
from engine_runner import first_difference, run, run_many

MODEL, TOKENIZER = MODELS / "stories260K.bin", MODELS / "tok512.bin"
SEEDS = (4, 5, 6, 7, 8)  # test_riscv.py takes 1-3
FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")
# QEMU CPUs for the kernel check: VLEN 128 as on the C906; wider vectors (nothing may
# assume 128); tails filled with ones (no result may depend on tail elements: the C906
# zeroes them whatever the code asks)
RVV_CPUS = {
    "vlen 128": "rv64,v=true,vlen=128,vext_spec=v1.0",
    "vlen 256": "rv64,v=true,vlen=256,vext_spec=v1.0",
    "vlen 1024": "rv64,v=true,vlen=1024,vext_spec=v1.0",
    "vlen 128, tails all ones": "rv64,v=true,vlen=128,vext_spec=v1.0,rvv_ta_all_1s=true",
}

# matvec_f32_fast within 1e-5 of the reference; matvec_q80 bit-identical to
# matvec_q80_ref; neither writes past out[rows - 1]. Shapes: every row count mod 4,
# columns around the vector lengths, every group size the converter makes and some it
# does not, -128 weights, unaligned scales and rows straddling groups (the fallbacks).
KERNEL_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static unsigned long long rng = 7;
static float uniform(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}
static int failures, checks;
#define FAIL(...) do { if (failures++ < 10) printf(__VA_ARGS__); } while (0)

static void check_f32(size_t n, size_t d) {
    float *w = malloc(n * d * sizeof *w), *x = malloc(n * sizeof *x);
    float *a = malloc(d * sizeof *a), *b = malloc((d + 1) * sizeof *b);
    for (size_t i = 0; i < n * d; i++) w[i] = uniform();
    for (size_t j = 0; j < n; j++) x[j] = uniform();
    b[d] = 12345.0f;
    matvec_f32_ref(a, w, x, n, d);
    matvec_f32_fast(b, w, x, n, d);
    for (size_t i = 0; i < d; i++) {
        double mag = 0;
        for (size_t j = 0; j < n; j++) mag += fabs((double)w[i * n + j] * x[j]);
        checks++;
        if (!(fabs((double)a[i] - b[i]) <= 1e-5 * (1 + mag)))
            FAIL("f32 n %zu d %zu row %zu: %g vs %g\n", n, d, i, b[i], a[i]);
    }
    checks++;
    if (b[d] != 12345.0f) FAIL("f32 n %zu d %zu: wrote past the end\n", n, d);
    free(w); free(x); free(a); free(b);
}

static void check_q80(size_t rows, size_t cols, size_t gs, size_t misalign, int extreme) {
    size_t total = rows * cols, ng = (total + gs - 1) / gs;
    float *w = malloc(total * sizeof *w), *x = malloc(cols * sizeof *x);
    int8_t *wq = malloc(total), *xq = malloc(cols);
    unsigned char *sbuf = malloc(ng * 4 + 8);
    float *ws = malloc(ng * sizeof *ws), *xs = malloc(cols * sizeof *xs);
    float *out = malloc((rows + 1) * sizeof *out), *ref = malloc(rows * sizeof *ref);
    for (size_t i = 0; i < total; i++) w[i] = uniform();
    for (size_t j = 0; j < cols; j++) x[j] = uniform() * 3.0f;
    quantize_q80(wq, ws, w, total, gs);
    quantize_q80(xq, xs, x, cols, gs);
    if (extreme) { /* the widest products: -128 weights (a file may hold them), |x| 127 */
        for (size_t i = 0; i < total; i++) wq[i] = (i % 3) ? -128 : 127;
        for (size_t j = 0; j < cols; j++) xq[j] = (j % 2) ? -127 : 127;
    }
    memcpy(sbuf + misalign, ws, ng * 4);
    Tensor t = {.type = TENSOR_Q80, .rows = rows, .cols = cols, .q = wq,
                .s = sbuf + misalign, .group_size = gs};
    Activation a = {.f = x, .q = xq, .s = xs, .n = cols, .group_size = gs};
    out[rows] = 12345.0f;
    matvec_q80(out, &t, &a);
    matvec_q80_ref(ref, &t, &a);
    for (size_t i = 0; i < rows; i++) {
        checks++;
        if (memcmp(&out[i], &ref[i], sizeof(float)) != 0)
            FAIL("q80 %zux%zu gs %zu +%zu row %zu: %.9g vs %.9g\n", rows, cols, gs, misalign,
                 i, out[i], ref[i]);
    }
    checks++;
    if (out[rows] != 12345.0f) FAIL("q80 %zux%zu: wrote past the end\n", rows, cols);
    free(w); free(x); free(wq); free(xq); free(sbuf); free(ws); free(xs); free(out); free(ref);
}

int main(void) {
    size_t fn[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 77, 172, 288, 768};
    for (size_t k = 0; k < sizeof fn / sizeof fn[0]; k++)
        for (size_t d = 1; d <= 9; d++) check_f32(fn[k], d);
    check_f32(288, 64);
    check_f32(768, 37);
    size_t gss[] = {1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256};
    for (size_t k = 0; k < sizeof gss / sizeof gss[0]; k++) {
        size_t gs = gss[k];
        for (size_t m = 1; m <= 4; m++)
            for (size_t rows = 1; rows <= 9; rows++) {
                check_q80(rows, gs * m, gs, 0, 0);
                check_q80(rows, gs * m, gs, 0, 1);
            }
        check_q80(5, gs * 3, gs, 2, 0);     /* unaligned scales */
        check_q80(7, gs * 2 + 3, gs, 0, 0); /* rows straddle groups */
    }
    check_q80(64, 172, 64, 0, 0);
    check_q80(288, 768, 32, 0, 0);
    check_q80(37, 768, 64, 0, 1);
    printf("%s: %d passed, %d failed\n", kernels_name, checks - failures, failures);
    return failures != 0;
}
"""


@pytest.fixture(scope="module")
def stories260k_q80() -> Path:
    return convert(MODEL, BUILD / "test-models" / "stories260K-q80.bin", "q80")


@pytest.fixture(scope="module")
def kernel_check(rv64gcv_engine) -> Path:
    """The kernel check, compiled in the toolchain chroot against the rv64gcv library."""
    out = BUILD / "test-rvv"
    out.mkdir(parents=True, exist_ok=True)
    src, binary = out / "kernel_check.c", out / "kernel_check"
    src.write_text(KERNEL_CHECK)
    t = engine.target("rv64gcv")
    lib = engine.build_dir("rv64gcv") / "libllama2.a"
    engine_src = ENGINE_SRC / "src"
    cmd = [t.cc, "-std=c11", "-Wall", "-Wextra", "-Werror", *t.cflags.split()]
    cmd += [f"-I{engine_src}", str(src), str(lib), "-static", "-lm", "-o", str(binary)]
    p = toolchain.run_in_chroot(cmd)
    assert p.returncode == 0, p.stderr
    return binary


def objdump_functions(path: Path) -> dict[str, list[str]]:
    """{function: its disassembled lines} of a riscv64 ELF or object."""
    p = toolchain.run_in_chroot([toolchain.OBJDUMP, "-d", str(path)])
    assert p.returncode == 0, p.stderr
    functions: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in p.stdout.splitlines():
        if m := FUNCTION.match(line):
            if not m["name"].startswith(".L"):  # local labels belong to their function
                lines = functions.setdefault(m["name"], [])
        else:
            lines.append(line)
    return functions


def mnemonics(lines: list[str]) -> list[str]:
    return [f[2].split()[0] for f in (line.split("\t") for line in lines) if len(f) >= 3]


def is_english(text: str) -> bool:
    words = text.split()
    common = {"the", "a", "and", "was", "to", "she", "he", "said", "her", "they", "it"}
    return (
        len(words) > 60
        and text.isascii()
        and sum(w.lower().strip('.,!?"') in common for w in words) > len(words) / 8
    )


def test_targets_use_the_rvv_kernels(rv64gcv_engine, c906_engine):
    assert engine.target("rv64gc").kernels == "portable"
    r = run(rv64gcv_engine, [], prefix=engine.runner("rv64gcv"))
    assert "Kernels: rvv\n" in r.stderr + r.stdout.decode(), r.stderr
    assert b"rvv (xtheadvector)\0" in c906_engine.read_bytes()


@pytest.mark.parametrize("cpu", RVV_CPUS)
def test_kernels_equal_the_references_under_qemu(kernel_check, cpu, capsys):
    r = run(kernel_check, [], prefix=[toolchain.QEMU, "-cpu", RVV_CPUS[cpu]])
    out = r.stdout.decode()
    assert r.returncode == 0, f"{cpu}:\n{out}{r.stderr}"
    assert re.search(r"^rvv: [1-9]\d* passed, 0 failed$", out, re.M), out
    with capsys.disabled():
        print(f"\nrvv kernels, {cpu}: {out.strip()}")


def test_stories_agree_with_the_host(rv64gcv_engine, host_engine, stories260k_q80, capsys):
    """Q8_0 is bit-identical to the reference, so its stories are the host's; the fast fp32
    path sums in another order (and fuses), so its agreement is only reported."""
    args = [["-z", str(TOKENIZER), "-t", "1.0", "-p", "0.9", "-s", str(s)] for s in SEEDS]
    cases = [[str(MODEL), *a, "-k", "fast"] for a in args]
    cases += [[str(stories260k_q80), *a] for a in args]
    host = run_many(host_engine, cases)
    got = run_many(rv64gcv_engine, cases, prefix=engine.runner("rv64gcv"))
    for r in host + got:
        assert r.returncode == 0, r.stderr
    lines = []
    for k, path in enumerate(("fast fp32", "Q8_0")):
        pairs = list(zip(got, host, strict=True))[k * len(SEEDS) : (k + 1) * len(SEEDS)]
        diffs = [first_difference(g.stdout.decode(), h.stdout.decode()) for g, h in pairs]
        same = sum(d is None for d in diffs)
        lines.append(
            f"{path}: {same}/{len(SEEDS)} stories as the host's"
            + "".join(
                f", seed {s} from char {d}"
                for s, d in zip(SEEDS, diffs, strict=True)
                if d is not None
            )
        )
    with capsys.disabled():
        print("\nrv64gcv rvv kernels vs host (stories260K, seeds 4-8):\n  " + "\n  ".join(lines))
    for s, g, h in zip(SEEDS, got[len(SEEDS) :], host[len(SEEDS) :], strict=True):
        text = g.stdout.decode()
        assert is_english(text), f"Q8_0 seed {s} is not English-like:\n{text}"
        assert g.stdout == h.stdout, f"Q8_0 seed {s} differs from the host's"


# What the C906 kernels must contain (XTheadVector mnemonics as binutils prints them), and
# what they must not: vlenb reads (spills: a CSR the C906 lacks), vector-to-scalar moves
# (th.vmv.x.s zero-extends) and the ordered fp reduction (slow)
C906_WANTS = {
    "matvec_f32_fast": {"th.vle.v", "th.vfmacc.vv", "th.vfredsum.vs"},
    "q80_pass_m2": {"th.vle.v", "th.vwmul.vv", "th.vwredsum.vs", "th.vlse.v", "th.vfadd.vv"},
    "q80_pass_m4": {"th.vle.v", "th.vwmul.vv", "th.vwredsum.vs", "th.vlse.v", "th.vfadd.vv"},
}
C906_FORBIDDEN = re.compile(r"vlenb|th\.vmv\.x\.s|th\.vfmv\.f\.s|th\.vfredosum")


def test_c906_kernels_are_xtheadvector_and_read_no_vlenb(c906_engine, capsys):
    functions = objdump_functions(c906_engine)
    kernels = {f: lines for f, lines in functions.items() if f.startswith(("matvec", "q80_"))}
    for f, wants in C906_WANTS.items():
        assert f in kernels, f"{f} not in the c906 build: {sorted(kernels)}"
        missing = wants - set(mnemonics(kernels[f]))
        assert not missing, f"{f} lacks {missing}"
    # matvec_q80 dispatches to the passes (which gcc keeps out of line)
    calls = " ".join(kernels["matvec_q80"])
    assert "<q80_pass_m2>" in calls and "<q80_pass_m4>" in calls, calls
    bad = {
        f: hits
        for f in ("matvec_f32_fast", "matvec_q80", "q80_pass_m1", "q80_pass_m2", "q80_pass_m4")
        if (hits := [ln.strip() for ln in kernels.get(f, []) if C906_FORBIDDEN.search(ln)])
    }
    assert not bad, f"forbidden instructions in the c906 kernels: {bad}"
    with capsys.disabled():
        counts = {
            f: sum(m.startswith("th.v") for m in mnemonics(kernels[f]))
            for f in sorted(kernels)
            if not f.endswith("_ref")
        }
        print(f"\nc906 th.v* instructions per kernel: {counts}")
