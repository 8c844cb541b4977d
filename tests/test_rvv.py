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

from duo_builder.build import engine, toolchain
from duo_builder.model.convert import convert
from duo_builder.paths import BUILD, ENGINE_SRC, MODELS
from engine_runner import first_difference, run, run_many

MODEL, TOKENIZER = MODELS / "stories260K.bin", MODELS / "tok512.bin"
SEEDS = (4, 5, 6, 7, 8)  # test_riscv.py takes 1-3
FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")
# QEMU CPUs for the kernel check: VLEN 128 as on the C906; wider vectors (nothing may
# assume 128); tails filled with ones (no result may depend on tail elements: the C906
# zeroes them whatever the code asks)
RVV_CPUS = {
    "vlen 128": "rv64,v=true,vlen=128,vext_spec=v1.0,Zfh=true",
    "vlen 256": "rv64,v=true,vlen=256,vext_spec=v1.0,Zfh=true",
    "vlen 1024": "rv64,v=true,vlen=1024,vext_spec=v1.0,Zfh=true",
    "vlen 128, tails all ones": "rv64,v=true,vlen=128,vext_spec=v1.0,Zfh=true,rvv_ta_all_1s=true",
}

# Each kernel of the ISA's set (kernels_isa, kernels_rvv.c) against the generic reference
# (kernels_ref, kernels_ref.c); the rvv set must override every one (else the check would
# compare the reference with itself). fp32 fast within 1e-5 of the reference; Q8_0
# bit-identical to it; none writes past out[rows - 1]. Shapes: every row count mod 4,
# columns around the vector lengths, every group size the converter makes and some it
# does not, -128 weights, unaligned scales and rows straddling groups (the fallbacks).
# Packed tiles: q8, q4 and fp32 ref (unfused) bit-identical to the references, fp32 fast
# (fused) within 1e-5; rows around tiles (one and two per pass, partial last
# tiles), columns around groups, random bf16 scales (zero and subnormal ones too), and the
# widest products (-128 / -8 weights against |x| = 127).
# quantize_q80: bit-identical q and scales over random, wide-range, tied (k + 1/2 and
# neighbours), zero and special (inf, NaN, FLT_MAX, subnormal) inputs, group sizes 1-288.
# Attention over the binary16 cache: the ISA's bit-identical to the reference's (scores
# and outputs), positions 0 to past 2 x VLMAX(e32m4) at VLEN 1024, head sizes around the
# vector lengths, strides larger than the data, caches with subnormals, zeros of both
# signs, every exponent, inf and NaN (then both NaN counts as equal), queries beyond
# 2^16 (the reference's fallback) and none written past att[pos] or out[head_size - 1].
# refine_q4a16 (the faithful path's int4 second level, one tile): bit-identical over 1-36
# groups, random and extreme nibbles (-8) and activations (-32768, 32767), random bf16 scales,
# nothing written past val[15].
KERNEL_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "ops.h"

static unsigned long long rng = 7;
static float uniform(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}
static int failures, checks;
#define FAIL(...) do { if (failures++ < 10) printf(__VA_ARGS__); } while (0)
#define ISA(type) kernels_isa.types[type] /* kernels_rvv.c */
#define REF(type) kernels_ref.types[type] /* kernels_ref.c */

static void check_f32(size_t n, size_t d) {
    float *w = malloc(n * d * sizeof *w), *x = malloc(n * sizeof *x);
    float *a = malloc(d * sizeof *a), *b = malloc((d + 1) * sizeof *b);
    for (size_t i = 0; i < n * d; i++) w[i] = uniform();
    for (size_t j = 0; j < n; j++) x[j] = uniform();
    b[d] = 12345.0f;
    Tensor t = {.type = TENSOR_F32, .rows = d, .cols = n, .f = w};
    Activation xa = {.f = x, .n = n};
    REF(TENSOR_F32).matvec_ref(a, &t, &xa);
    ISA(TENSOR_F32).matvec_fast(b, &t, &xa);
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
    ISA(TENSOR_Q80).matvec_fast(out, &t, &a);
    REF(TENSOR_Q80).matvec_ref(ref, &t, &a);
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

/* ---- packed row tiles (FORMAT.md), laid out as duo_builder/model/packed.py writes them: the
 * last tile's missing rows and the last group's missing columns are zeros. Activations as
 * the engine's: runq.c's quantization, whole groups (values past cols are left-over
 * junk there, which the zero columns cancel). */
static unsigned rnd(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(rng >> 33);
}
static unsigned char *alloc16(size_t n) { /* as the mapping: 16-byte aligned */
    unsigned char *p = aligned_alloc(16, (n + 15) / 16 * 16);
    memset(p, 0, (n + 15) / 16 * 16);
    return p;
}
/* A bf16 scale: mostly normal, sometimes zero (an all-zero group) or subnormal. */
static uint16_t random_bf16(void) {
    unsigned k = rnd() % 16;
    if (k == 0) return 0;
    if (k == 1) return (uint16_t)(1 + rnd() % 0x7f); /* subnormal */
    float f = (0.5f + (float)(rnd() % 1000) / 1000.0f) * ldexpf(1.0f, (int)(rnd() % 24) - 16);
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return (uint16_t)(bits >> 16);
}

/* extreme: the widest products the kernels must hold (-128 or -8 weights, |x| = 127) */
static void check_packed_q(TensorType type, size_t rows, size_t cols, int extreme) {
    const size_t R = PACK_ROWS, G = PACK_GROUP, tiles = (rows + R - 1) / R;
    const size_t groups = (cols + G - 1) / G, block = packed_block_bytes(type);
    const int q4 = type == TENSOR_PQ4;
    unsigned char *p = alloc16(tiles * groups * block);
    for (size_t t = 0; t < tiles; t++)
        for (size_t g = 0; g < groups; g++) {
            unsigned char *b = p + (t * groups + g) * block;
            for (size_t r = 0; r < R; r++) {
                int live = t * R + r < rows;
                for (size_t c = 0; c < G; c++) {
                    int real = live && g * G + c < cols;
                    int v = !real ? 0
                          : q4 ? (extreme ? ((c + r) % 3 ? -8 : 7) : (int)(rnd() % 16) - 8)
                               : (extreme ? ((c + r) % 3 ? -128 : 127) : (int)(rnd() % 256) - 128);
                    if (q4)
                        b[c / 2 * R + r] |= (unsigned char)((v & 15) << (c % 2 ? 4 : 0));
                    else
                        b[c * R + r] = (unsigned char)(int8_t)v;
                }
                uint16_t s = live ? random_bf16() : 0;
                memcpy(b + block - 2 * R + 2 * r, &s, 2);
            }
        }
    float *x = malloc(cols * sizeof *x), *xs = malloc(groups * sizeof *xs);
    int8_t *xq = malloc(groups * G);
    for (size_t j = 0; j < cols; j++) x[j] = uniform() * 3.0f;
    for (size_t j = 0; j < groups * G; j++) xq[j] = (int8_t)((int)(rnd() % 255) - 127);
    quantize_q80(xq, xs, x, cols, G);
    if (extreme)
        for (size_t j = 0; j < cols; j++) xq[j] = (j % 2) ? -127 : 127;
    Tensor w = {.type = type, .rows = rows, .cols = cols, .group_size = G, .p = p,
                .tiles = tiles, .groups = groups};
    Activation a = {.f = x, .q = xq, .s = xs, .n = cols, .group_size = G};
    float *out = malloc((rows + 1) * sizeof *out), *ref = malloc(rows * sizeof *ref);
    out[rows] = 12345.0f;
    ISA(type).matvec_fast(out, &w, &a);
    REF(type).matvec_ref(ref, &w, &a);
    for (size_t i = 0; i < rows; i++) {
        checks++;
        if (memcmp(&out[i], &ref[i], sizeof(float)) != 0)
            FAIL("p%s %zux%zu%s row %zu: %.9g vs %.9g\n", q4 ? "q4" : "q8", rows, cols,
                 extreme ? " extreme" : "", i, out[i], ref[i]);
    }
    checks++;
    if (out[rows] != 12345.0f)
        FAIL("p%s %zux%zu: wrote past the end\n", q4 ? "q4" : "q8", rows, cols);
    if (!q4) { /* the faithful classifier's int8 x int16 product, on the same weights */
        int16_t *x16 = malloc(groups * G * sizeof *x16);
        for (size_t j = 0; j < groups * G; j++)
            x16[j] = extreme ? (int16_t)(j % 2 ? -32767 : 32767)
                             : (int16_t)((int)(rnd() % 65535) - 32767);
        out[rows] = 12345.0f;
        ISA(TENSOR_PQ8).matvec_a16(out, &w, x16, xs);
        REF(TENSOR_PQ8).matvec_a16(ref, &w, x16, xs);
        for (size_t i = 0; i < rows; i++) {
            checks++;
            if (memcmp(&out[i], &ref[i], sizeof(float)) != 0)
                FAIL("pq8a16 %zux%zu row %zu: %.9g vs %.9g\n", rows, cols, i, out[i], ref[i]);
        }
        checks++;
        if (out[rows] != 12345.0f) FAIL("pq8a16 %zux%zu: wrote past the end\n", rows, cols);
        free(x16);
    }
    free(p); free(x); free(xs); free(xq); free(out); free(ref);
}

/* fp32: unfused bit for bit; fused within rounding of the reference. */
static void check_packed_f32(size_t rows, size_t cols) {
    const size_t R = PACK_ROWS, tiles = (rows + R - 1) / R;
    float *p = (float *)(void *)alloc16(tiles * cols * R * sizeof(float));
    float *x = malloc(cols * sizeof *x);
    for (size_t t = 0; t < tiles; t++)
        for (size_t j = 0; j < cols; j++)
            for (size_t r = 0; r < R; r++)
                p[(t * cols + j) * R + r] = t * R + r < rows ? uniform() : 0.0f;
    for (size_t j = 0; j < cols; j++) x[j] = uniform();
    Tensor w = {.type = TENSOR_PF32, .rows = rows, .cols = cols,
                .p = (const unsigned char *)p, .tiles = tiles};
    Activation a = {.f = x, .n = cols};
    float *out = malloc((rows + 1) * sizeof *out), *ref = malloc(rows * sizeof *ref);
    REF(TENSOR_PF32).matvec_ref(ref, &w, &a);
    for (int fused = 0; fused <= 1; fused++) {
        out[rows] = 12345.0f;
        (fused ? ISA(TENSOR_PF32).matvec_fast : ISA(TENSOR_PF32).matvec_ref)(out, &w, &a);
        for (size_t i = 0; i < rows; i++) {
            double mag = 0;
            for (size_t j = 0; j < cols; j++)
                mag += fabs((double)p[(i / R * cols + j) * R + i % R] * x[j]);
            checks++;
            if (fused ? !(fabs((double)out[i] - ref[i]) <= 1e-5 * (1 + mag))
                      : memcmp(&out[i], &ref[i], sizeof(float)) != 0)
                FAIL("pf32 %s %zux%zu row %zu: %.9g vs %.9g\n", fused ? "fused" : "unfused",
                     rows, cols, i, out[i], ref[i]);
        }
        checks++;
        if (out[rows] != 12345.0f) FAIL("pf32 %zux%zu: wrote past the end\n", rows, cols);
    }
    free(p); free(x); free(out); free(ref);
}

static void check_packed(size_t rows, size_t cols) {
    check_packed_f32(rows, cols);
    for (int extreme = 0; extreme <= 1; extreme++) {
        check_packed_q(TENSOR_PQ8, rows, cols, extreme);
        check_packed_q(TENSOR_PQ4, rows, cols, extreme);
    }
}

/* ---- the faithful path's int4 second level x int16, one tile (refine_q4a16) ---- */
/* kind 0: random nibbles and activations; 1: the widest sums (-8 nibbles, |x| = 32768 and
 * 32767 alternating); 2: random nibbles, activations only -32768 and 32767 */
static void check_refine(size_t groups, int kind) {
    const size_t R = PACK_ROWS, G = PACK_GROUP;
    unsigned char *nib = alloc16(groups * R * G / 2);
    BlockQ8 *scales = (BlockQ8 *)(void *)alloc16(groups * sizeof(BlockQ8));
    int16_t *x16 = malloc(groups * G * sizeof *x16);
    float *xs = malloc(groups * sizeof *xs), out[PACK_ROWS + 1], ref[PACK_ROWS];
    for (size_t i = 0; i < groups * R * G / 2; i++)
        nib[i] = kind == 1 ? 0x88 : (unsigned char)rnd();
    for (size_t g = 0; g < groups; g++) {
        for (size_t r = 0; r < R; r++) scales[g].scale[r] = random_bf16();
        xs[g] = uniform() * 1e-4f;
        for (size_t j = 0; j < G; j++)
            x16[g * G + j] = kind == 0   ? (int16_t)((int)(rnd() % 65536) - 32768)
                           : kind == 1 ? (int16_t)(j % 2 ? 32767 : -32768)
                                       : (int16_t)(rnd() % 2 ? 32767 : -32768);
    }
    out[R] = 12345.0f;
    kernels_isa.refine_q4a16(out, nib, scales, groups, x16, xs);
    kernels_ref.refine_q4a16(ref, nib, scales, groups, x16, xs);
    for (size_t r = 0; r < R; r++) {
        checks++;
        if (memcmp(&out[r], &ref[r], sizeof(float)) != 0)
            FAIL("refine %zu groups kind %d row %zu: %.9g vs %.9g\n", groups, kind, r, out[r],
                 ref[r]);
    }
    checks++;
    if (out[R] != 12345.0f) FAIL("refine %zu groups: wrote past the end\n", groups);
    free(nib); free(scales); free(x16); free(xs);
}

/* ---- attention over the binary16 cache ---- */
static int same(float a, float b) { return memcmp(&a, &b, 4) == 0 || (isnan(a) && isnan(b)); }

/* A binary16 value: mostly a rounded small number, else any bit pattern (subnormals, both
 * zeros, every exponent); inf and NaN only when specials. */
static uint16_t random_half(int specials) {
    unsigned k = rnd() % 16;
    if (k < 9) return half_from_float_soft(uniform() * (k < 6 ? 2.0f : 0.01f));
    if (k == 9) return (uint16_t)(rnd() % 0x400 | (rnd() % 2) << 15); /* subnormal, zero */
    if (k == 10) return (uint16_t)((rnd() % 2) << 15);                /* +-0 */
    uint16_t h = (uint16_t)rnd();
    if (!specials && (h & 0x7c00u) == 0x7c00u) h &= 0xbfffu; /* exponent 15 instead */
    return h;
}

/* specials: 1 inf and NaN among the values (a key's make most scores NaN), 2 in both;
 * kind 0: ordinary queries; 1: tiny and subnormal ones too; 2: one beyond 2^16 */
static void check_attention(int pos, int head_size, int specials, int kind) {
    const size_t n = (size_t)pos + 1, hs = (size_t)head_size;
    const size_t key_stride = n + rnd() % 5, value_stride = hs + rnd() % 7;
    uint16_t *key = malloc(hs * key_stride * 2), *value = malloc(n * value_stride * 2);
    for (size_t i = 0; i < hs * key_stride; i++) key[i] = random_half(specials == 2);
    for (size_t i = 0; i < n * value_stride; i++) value[i] = random_half(specials != 0);
    float *q = malloc(hs * sizeof *q);
    for (size_t i = 0; i < hs; i++) q[i] = uniform() * 2.0f;
    if (kind == 1)
        for (size_t i = 0; i < hs; i += 3) q[i] *= i % 2 ? 1e-39f : 1e-20f;
    if (kind == 2) q[rnd() % hs] = (rnd() % 2 ? 1.0f : -1.0f) * 0x1p16f;
    float *att = malloc((n + 1) * sizeof *att), *out = malloc((hs + 1) * sizeof *out);
    float *ratt = malloc(n * sizeof *ratt), *rout = malloc(hs * sizeof *rout);
    att[n] = 12345.0f, out[hs] = 12345.0f;
    kernels_ref.attention_f16(rout, ratt, q, key, key_stride, value, value_stride, pos, head_size);
    kernels_isa.attention_f16(out, att, q, key, key_stride, value, value_stride, pos, head_size);
    int bad = 0;
    for (size_t t = 0; t < n; t++) bad += !same(att[t], ratt[t]);
    for (size_t i = 0; i < hs; i++) bad += !same(out[i], rout[i]);
    checks += (int)(n + hs);
    if (bad) FAIL("attention pos %d head %d specials %d kind %d: %d values differ\n", pos,
                  head_size, specials, kind, bad);
    checks++;
    if (att[n] != 12345.0f || out[hs] != 12345.0f)
        FAIL("attention pos %d head %d: wrote past the end\n", pos, head_size);
    free(key); free(value); free(q); free(att); free(out); free(ratt); free(rout);
}

/* quantize_q80: the ISA's q and scales bit-identical to the reference's, kind by kind:
 * 0 random, 1 random over magnitudes 2^-140..2^120, 2 exact ties (scale a power of two, x
 * = (k + 1/2) scale) and their neighbours, 3 zeros of both signs with whole zero groups,
 * 4 specials (FLT_MAX, inf, NaN, subnormals: zero, subnormal and huge-quotient scales);
 * nothing written past q[n - 1] or s[groups - 1]. */
static float pick(int kind, size_t i, size_t gs) {
    float u = uniform();
    switch (kind) {
    case 1: return ldexpf(u, (int)(rng >> 33) % 261 - 140);
    case 2: {
        float scale = ldexpf(1.0f, (int)(i / gs % 7) * 9 - 30);
        if (i % gs == 0) return (i / gs % 2 ? -127.0f : 127.0f) * scale;
        float k = floorf(u * 127.0f) + 0.5f;
        float v = (i % 3 == 0) ? nextafterf(k, 0.0f) : (i % 3 == 1) ? k : nextafterf(k, 1e9f);
        return v * scale;
    }
    case 3: return (i / gs) % 3 == 1 ? ((i & 1) ? -0.0f : 0.0f) : u;
    case 4: {
        const float sp[] = {0x1.fffffep127f, -0x1.fffffep127f, INFINITY, -INFINITY, NAN,
                            0x1p-149f, -0x1p-149f, 0x1p-126f, 5e-45f, 3e-39f, 0.5f, -2.5f};
        unsigned r = (unsigned)(rng >> 35);
        if (r % 5 == 0) return sp[r / 5 % (sizeof sp / sizeof sp[0])];
        return (i / gs) % 2 ? ldexpf(u, -140) : u;
    }
    default: return u;
    }
}

static void check_quantize(size_t n, size_t gs, int kind) {
    size_t groups = (n + gs - 1) / gs;
    float *x = malloc(n * sizeof *x), *rs = malloc(groups * sizeof *rs);
    float *is = malloc((groups + 1) * sizeof *is);
    int8_t *rq = malloc(n), *iq = malloc(n + 1);
    for (size_t i = 0; i < n; i++) x[i] = pick(kind, i, gs);
    memset(iq, 0x55, n + 1);
    is[groups] = 12345.0f;
    kernels_ref.quantize_q80(rq, rs, x, n, gs);
    kernels_isa.quantize_q80(iq, is, x, n, gs);
    int bad = memcmp(rq, iq, n) != 0 || memcmp(rs, is, groups * sizeof *rs) != 0;
    checks++;
    if (bad) {
        size_t i = 0;
        while (i < n && rq[i] == iq[i]) i++;
        FAIL("quantize n %zu gs %zu kind %d: q[%zu] %d vs %d (x %a, scale %a vs %a)\n", n, gs,
             kind, i, i < n ? iq[i] : 0, i < n ? rq[i] : 0, i < n ? x[i] : 0.0,
             i < n ? is[i / gs] : 0.0, i < n ? rs[i / gs] : 0.0);
    }
    checks++;
    if (iq[n] != 0x55 || is[groups] != 12345.0f)
        FAIL("quantize n %zu gs %zu: wrote past the end\n", n, gs);
    free(x); free(rs); free(is); free(rq); free(iq);
}

/* swiglu_fast: the ISA's bits the reference's (NaN: both NaN), kind 0 the FFN's range,
 * 1 magnitudes 2^-140..2^120 (exp_fast's clamps at -86.5 and 88 and both sides of them),
 * 2 specials (+-inf, NaN, +-0, FLT_MAX, subnormals, the clamp edges) in a and b; every
 * tail length; nothing written past hb[n - 1]. */
static float pick_swiglu(int kind) {
    const float sp[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 0x1.fffffep127f,
                        -0x1.fffffep127f, 0x1p-149f, -3e-39f, 86.5f, -86.5f, 88.0f, -88.0f,
                        86.50001f, -88.00001f, 1e30f, -1e30f};
    float u = uniform();
    unsigned r = (unsigned)(rng >> 35);
    if (kind == 1) return ldexpf(u, (int)(r % 261) - 140);
    if (kind == 2 && r % 3 == 0) return sp[r / 3 % (sizeof sp / sizeof sp[0])];
    return u * 12.0f;
}

static void check_swiglu(size_t n, int kind) {
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    float *r = malloc(n * sizeof *r), *v = malloc((n + 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) a[i] = pick_swiglu(kind), b[i] = pick_swiglu(kind);
    memcpy(r, a, n * sizeof *a);
    memcpy(v, a, n * sizeof *a);
    v[n] = 12345.0f;
    kernels_ref.swiglu_fast(r, b, n);
    kernels_isa.swiglu_fast(v, b, n);
    for (size_t i = 0; i < n; i++) {
        checks++;
        if (memcmp(&r[i], &v[i], sizeof(float)) != 0 && !(isnan(r[i]) && isnan(v[i])))
            FAIL("swiglu n %zu kind %d [%zu] (%a, %a): %a vs %a\n", n, kind, i, a[i], b[i],
                 v[i], r[i]);
    }
    checks++;
    if (v[n] != 12345.0f) FAIL("swiglu n %zu: wrote past the end\n", n);
    free(a); free(b); free(r); free(v);
}

int main(void) {
    if (!kernels_isa.quantize_q80) FAIL("the ISA set lacks quantize_q80\n");
    if (!kernels_isa.swiglu_fast) FAIL("the ISA set lacks swiglu_fast\n");
    for (size_t n = 1; n <= 70; n++)
        for (int kind = 0; kind < 3; kind++) check_swiglu(n, kind);
    for (int kind = 0; kind < 3; kind++)
        for (int rep = 0; rep < 8; rep++) check_swiglu(768, kind); /* stories15M's hidden */
    size_t qgs[] = {1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 48, 64, 100, 288};
    size_t qn[] = {1, 5, 31, 32, 33, 64, 100, 288, 768, 1000};
    for (size_t a = 0; a < sizeof qgs / sizeof qgs[0]; a++)
        for (size_t b = 0; b < sizeof qn / sizeof qn[0]; b++)
            for (int kind = 0; kind < 5; kind++)
                for (int rep = 0; rep < 4; rep++) check_quantize(qn[b], qgs[a], kind);
    const TensorType q[] = {TENSOR_F32, TENSOR_Q80, TENSOR_PF32, TENSOR_PQ8, TENSOR_PQ4};
    for (size_t k = 0; k < sizeof q / sizeof q[0]; k++)
        if (!ISA(q[k]).matvec_fast) FAIL("no ISA matvec_fast for tensor type %d\n", (int)q[k]);
    if (!ISA(TENSOR_PF32).matvec_ref || !ISA(TENSOR_PQ8).matvec_a16 || !kernels_isa.attention_f16)
        FAIL("the ISA set lacks packed fp32 ref, q8 x int16 or binary16 attention\n");
    int heads[] = {1, 8, 17, 48, 64, 100};
    int far[] = {63, 64, 65, 127, 128, 129, 255, 256, 257, 300};
    for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
        for (int pos = 0; pos <= 40; pos++)
            for (int specials = 0; specials < 3; specials++)
                check_attention(pos, heads[h], specials, pos % 3);
        for (size_t k = 0; k < sizeof far / sizeof far[0]; k++)
            for (int kind = 0; kind < 3; kind++)
                check_attention(far[k], heads[h], (int)k % 3, kind);
    }
    size_t pr[] = {1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 69};
    size_t pc[] = {1, 7, 8, 9, 15, 31, 32, 33, 63, 64, 65, 100, 288};
    for (size_t i = 0; i < sizeof pr / sizeof pr[0]; i++)
        for (size_t k = 0; k < sizeof pc / sizeof pc[0]; k++) check_packed(pr[i], pc[k]);
    if (!kernels_isa.refine_q4a16) FAIL("the ISA set lacks refine_q4a16\n");
    size_t rg[] = {1, 2, 3, 4, 5, 8, 9, 17, 24, 36};
    for (size_t k = 0; k < sizeof rg / sizeof rg[0]; k++)
        for (int kind = 0; kind < 3; kind++)
            for (int rep = 0; rep < 3; rep++) check_refine(rg[k], kind);
    check_packed(288, 768); /* stories15M's shapes */
    check_packed(768, 288);
    check_packed(1000, 288);
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
    printf("%s: %d passed, %d failed\n", kernels_name(), checks - failures, failures);
    return failures != 0;
}
"""


@pytest.fixture(scope="module")
def stories260k_q80() -> Path:
    return convert(MODEL, BUILD / "test-models" / "stories260K-q80.bin", "q80")


@pytest.fixture(scope="module")
def kernel_check(rv64gcv_engine) -> Path:
    """The kernel check, compiled in the toolchain chroot against the rv64gcv library's
    modules (llama2-internal.o: libllama2.a exports only the public API)."""
    out = BUILD / "test-rvv"
    out.mkdir(parents=True, exist_ok=True)
    src, binary = out / "kernel_check.c", out / "kernel_check"
    src.write_text(KERNEL_CHECK)
    t = engine.target("rv64gcv")
    lib = engine.build_dir("rv64gcv") / "obj" / "lib" / "llama2-internal.o"
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
    "f32_fast_rvv": {"th.vle.v", "th.vfmacc.vv", "th.vfredsum.vs"},
    "q80_pass_m2": {"th.vle.v", "th.vwmul.vv", "th.vwredsum.vs", "th.vlse.v", "th.vfadd.vv"},
    "q80_pass_m4": {"th.vle.v", "th.vwmul.vv", "th.vwredsum.vs", "th.vlse.v", "th.vfadd.vv"},
}
# The packed kernels (FORMAT.md): lanes are rows, no reductions; the bf16 scales widened
# with th.vwcvtu (vwaddu.vx 0), the scaling as separate vfmul, vfmul, vfadd
PACKED_Q_SCALING = {"th.vwcvtu.x.x.v", "th.vsll.vi", "th.vfmul.vv", "th.vfmul.vf", "th.vfadd.vv"}
PACKED_WANTS = {
    **{
        f"pq8_pass{n}": {
            "th.vle.v",
            "th.vwmul.vx",
            "th.vwmacc.vx",
            "th.vwadd.wv",
            "th.vfcvt.f.x.v",
            "th.vse.v",
            *PACKED_Q_SCALING,
        }
        for n in (1, 2)
    },
    **{
        f"pq4_pass{n}": {
            "th.vle.v",
            "th.vsll.vi",
            "th.vsra.vi",
            "th.vwmul.vx",
            "th.vwmacc.vx",
            "th.vfwcvt.f.x.v",
            "th.vse.v",
            *PACKED_Q_SCALING,
        }
        for n in (1, 2)
    },
    # VLEN 128's whole-group assembly (eight columns per load; lanes past vl never read)
    "pq8_pass2_v128": {"th.vle.v", "th.vwmul.vx", "th.vwmacc.vx", "th.vwadd.wv", "th.vse.v"},
    "pq4_pass2_v128": {"th.vle.v", "th.vsll.vi", "th.vsra.vi", "th.vwmacc.vx", "th.vse.v"},
    **{f"pf32_pass{n}": {"th.vle.v", "th.vfmul.vf", "th.vfadd.vv", "th.vse.v"} for n in (1, 2)},
    **{f"pf32_fused{n}": {"th.vle.v", "th.vfmacc.vf", "th.vse.v"} for n in (1, 2)},
    # the faithful classifier: int8 weights sign-extended (vwadd.vx 0 = th.vwcvt), times
    # the int16 activation into int32 sums
    "pq8_a16_rvv": {
        "th.vle.v",
        "th.vwcvt.x.x.v",
        "th.vwmacc.vx",
        "th.vfcvt.f.x.v",
        "th.vse.v",
        *PACKED_Q_SCALING,
    },  # fmt: skip
}
C906_WANTS |= PACKED_WANTS
# the faithful path's int4 second level: bytes sign-extended (th.vwcvt), nibbles by shifts
# at e16, times the int16 activation into int32 sums, the scaling as the packed kernels'
REFINE_WANTS = {
    "refine_q4a16_rvv": {
        "th.vle.v",
        "th.vwcvt.x.x.v",
        "th.vsll.vi",
        "th.vsra.vi",
        "th.vwmacc.vx",
        "th.vfcvt.f.x.v",
        "th.vse.v",
        *PACKED_Q_SCALING,
    },
}
C906_WANTS |= REFINE_WANTS
# Attention over the binary16 cache: lanes are positions (scores) or dimensions (values),
# binary16 -> fp32 by integer ops (th.vwmul by 2^13, th.vand, th.vmsgtu for inf/NaN, a
# masked th.vor), products and sums unfused, no reductions
HALF_LANES = {"th.vle.v", "th.vwmul.vx", "th.vsll.vi", "th.vmsgtu.vx", "th.vand.vx", "th.vor.vx"}
ATTENTION_WANTS = {
    "f16_scores": {*HALF_LANES, "th.vfmul.vf", "th.vfadd.vv", "th.vfdiv.vf", "th.vse.v"},
    "f16_values": {*HALF_LANES, "th.vfmul.vf", "th.vfadd.vv", "th.vse.v"},
}
C906_WANTS |= ATTENTION_WANTS
# Attention over the fp32 cache (-k ref, faithful, Q8_0): the same lanes, fp32 loads, run.c's
# roundings (products and sums unfused)
F32_ATTENTION_WANTS = {
    "f32_scores": {"th.vle.v", "th.vfmul.vf", "th.vfadd.vv", "th.vfdiv.vf", "th.vse.v"},
    "f32_values": {"th.vle.v", "th.vfmul.vf", "th.vfadd.vv", "th.vse.v"},
}
C906_WANTS |= F32_ATTENTION_WANTS
# ... and run.c's softmax there: the max by th.vfredmax per strip (exact), expf scalar, the
# division a vector one
C906_WANTS["f32_softmax"] = {"th.vle.v", "th.vfredmax.vs", "th.vfdiv.vf", "th.vse.v"}
# quantize_q80: the max by one reduction per chunk, the division kept (correctly rounded as
# the scalar one), roundf by converts in the default rounding mode, int16 then int8
C906_WANTS["quantize_q80_rvv"] = {
    "th.vfredmax.vs",
    "th.vfdiv.vf",
    "th.vfcvt.x.f.v",
    "th.vfncvt.x.f.v",
    "th.vse.v",
}
# swiglu_fast (the packed q8/q4 paths): exp_fast lane by lane, unfused, the clamps by
# th.vfmax/th.vfmin and merges, 1 / (1 + e) by th.vfrdiv (correctly rounded), no libm call
C906_WANTS["swiglu_fast_rvv"] = {
    "th.vle.v",
    "th.vfneg.v",
    "th.vfmax.vf",
    "th.vfmin.vf",
    "th.vfmerge.vfm",
    "th.vfrdiv.vf",
    "th.vfmul.vv",
    "th.vse.v",
}
C906_FORBIDDEN = re.compile(r"vlenb|th\.vmv\.x\.s|th\.vfmv\.f\.s|th\.vfredosum")
# ... and in the packed kernels no reduction at all; where they must be bit-identical to the
# references (q8, q4, unfused fp32) no fused multiply-add either
PACKED_FORBIDDEN = re.compile(r"th\.v[fw]?red")
FUSED = re.compile(r"th\.vfn?m(acc|add|sac|sub)\.")


def test_c906_kernels_are_xtheadvector_and_read_no_vlenb(c906_engine, capsys):
    functions = objdump_functions(c906_engine)
    kernels = {
        f: lines
        for f, lines in functions.items()
        if f.startswith(
            (
                "f32_",
                "q80_",
                "pq_",
                "pq8_",
                "pq4_",
                "pf32_",
                "attention_f",
                "f16_",
                "quantize_",
                "refine_",
                "swiglu_",
            )
        )
    }
    for f, wants in C906_WANTS.items():
        assert f in kernels, f"{f} not in the c906 build: {sorted(kernels)}"
        missing = wants - set(mnemonics(kernels[f]))
        assert not missing, f"{f} lacks {missing}"
    # the Q8_0 and packed entry points dispatch to the passes (kept out of line)
    calls = " ".join(kernels["q80_fast_rvv"])
    assert "<q80_pass_m2>" in calls and "<q80_pass_m4>" in calls, calls
    calls = " ".join(kernels["pq_fast_rvv"] + kernels["pf32_ref_rvv"] + kernels["pf32_fast_rvv"])
    for f in PACKED_WANTS:
        if f != "pq8_a16_rvv":  # the faithful classifier is its own entry point
            assert f"<{f}>" in calls, f"{f} is not called: {calls}"
    calls = " ".join(kernels["attention_f16_rvv"])
    for f in ATTENTION_WANTS:
        assert f"<{f}>" in calls, f"{f} is not called: {calls}"
    calls = " ".join(kernels["attention_f32_rvv"])
    for f in (*F32_ATTENTION_WANTS, "f32_softmax"):
        assert f"<{f}>" in calls, f"{f} is not called: {calls}"
    own = (
        "f32_fast_rvv",
        "q80_fast_rvv",
        "q80_pass_m1",
        "q80_pass_m2",
        "q80_pass_m4",
        "pq_fast_rvv",
        "pf32_ref_rvv",
        "pf32_fast_rvv",
        *PACKED_WANTS,
        *REFINE_WANTS,
        "attention_f16_rvv",
        *ATTENTION_WANTS,
        "attention_f32_rvv",
        *F32_ATTENTION_WANTS,
        "f32_softmax",
        "quantize_q80_rvv",
        "swiglu_fast_rvv",
    )
    bad = {
        f: hits
        for f in own
        if (hits := [ln.strip() for ln in kernels.get(f, []) if C906_FORBIDDEN.search(ln)])
    }
    assert not bad, f"forbidden instructions in the c906 kernels: {bad}"
    bad = {
        f: hits
        for f in (
            *PACKED_WANTS,
            *REFINE_WANTS,
            "pf32_ref_rvv",
            "attention_f16_rvv",
            *ATTENTION_WANTS,
            "attention_f32_rvv",
            *F32_ATTENTION_WANTS,
            "swiglu_fast_rvv",
        )
        if (
            hits := [
                ln.strip()
                for ln in kernels[f]
                if PACKED_FORBIDDEN.search(ln) or (FUSED.search(ln) and "fused" not in f)
            ]
        )
    }
    assert not bad, f"reductions or fused multiply-adds in the packed or attention kernels: {bad}"
    calls = {"call", "jal", "jalr", "tail"} & set(mnemonics(kernels["swiglu_fast_rvv"]))
    assert not calls, f"swiglu_fast_rvv calls out (libm's expf?): {calls}"
    with capsys.disabled():
        counts = {
            f: sum(m.startswith("th.v") for m in mnemonics(kernels[f]))
            for f in sorted(kernels)
            if not f.endswith("_ref")
        }
        print(f"\nc906 th.v* instructions per kernel: {counts}")
