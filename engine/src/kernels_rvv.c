/* RISC-V vector kernels: one source for RVV 1.0 (-march=rv64gcv) and the Milk-V Duo's
 * T-Head C906 (XTheadVector, the pre-ratification "RVV 0.7.1"; gcc >= 15 maps the same
 * __riscv_ intrinsics to th.v* instructions).
 *
 * Written to the intersection of the two, which on the C906 means:
 *  - LMUL >= 1 only (XTheadVector has no fractional LMUL);
 *  - no result depends on the tail policy (the C906 zeroes tails whatever _tu asks):
 *    within one accumulation every operation uses the same vl, and lanes past it are
 *    never read;
 *  - no vector -> scalar moves (th.vmv.x.s zero-extends where gcc assumes sign extension,
 *    and moves are slow): results leave through vector stores;
 *  - no vsext/vzext, vfrec7, vlm/vsm; no vget/vlmul_trunc either: for XTheadVector gcc
 *    copies each part of a register group out with th.vmv.v.v (and a vsetvli);
 *  - spill-free kernels: gcc's vector spills read the vlenb CSR, which the C906 lacks
 *    (tests/test_rvv.py checks the c906 disassembly).
 * And for the C906's in-order pipeline, slow reductions (5-9+ cycles) and ~64-bit vector
 * datapath: four rows are worked on at once, in separate accumulators, reduced only once
 * per row (fp32) or once per row and group into an exact integer (Q8_0).
 * Nothing assumes VLEN = 128: vector lengths come from vsetvlmax (tests/test_rvv.py runs
 * them at VLEN 128 to 1024, and with tails filled with ones). */
#include <riscv_vector.h>
#include <stdint.h>

#include "kernels.h"

#if defined(__riscv_xtheadvector)
const char kernels_name[] = "rvv (xtheadvector)";
#else
const char kernels_name[] = "rvv";
#endif

#define ROWS 4 /* rows per pass: four independent chains hide the C906's latencies */

/* gcc's pre-register-allocation scheduler hoists every load of a pass to the top, runs out
 * of the 32 vector registers and spills (reading vlenb, which the C906 lacks). Without
 * it, the code keeps the order written below (loads, then multiplies, then reductions,
 * over as many rows as fit) and the post-allocation scheduler still runs. */
#if defined(__clang__)
#define NO_PRESCHED
#else
#define NO_PRESCHED __attribute__((optimize("no-schedule-insns")))
#endif

/* The row of a pass: past the last row, the last row again (computed, never stored), so
 * every pass loads four rows and the inner loops have no row cases. */
static inline size_t row_at(size_t i, size_t d) { return i < d ? i : d - 1; }

/* Element 0 of s0..s3 as elements 0..vr-1 of one vector (vr <= ROWS <= VLMAX of e32m1,
 * since VLEN >= 128): three slides, no scalar moves; offsets >= vr write nothing. (A
 * chain: as a tree, gcc surrounds XTheadVector slides with register copies.) */
#define GATHER4(T, s0, s1, s2, s3, vr)                                                     \
    __riscv_vslideup_vx_##T(                                                              \
        __riscv_vslideup_vx_##T(__riscv_vslideup_vx_##T(s0, s1, 1, vr), s2, 2, vr), s3, 3, vr)

/* ---- fp32 ------------------------------------------------------------------------------
 * Four rows per pass, LMUL 2 (8 floats at VLEN 128): each step loads x once for four
 * weight loads and four vfmacc (4 x 2 accumulator + 2 x + 8 weight registers: no spill;
 * LMUL 4 spilled). The columns that do not fill a vector (n % vl) are a separate product
 * over exactly that many elements, reduced on top of the row's sum: a partial-vl vfmacc
 * into the accumulators would lose their tails on the C906. One vfredusum per row
 * (vfredosum would be far slower), and element 0 of each stored with vl = 1. */
void matvec_f32_fast(float *out, const float *w, const float *x, size_t n, size_t d) {
    const size_t vl = __riscv_vsetvlmax_e32m2(), vl1 = __riscv_vsetvlmax_e32m1();
    const size_t full = n - n % vl, rest = n - full;
    const vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, vl1);
    for (size_t i = 0; i < d; i += ROWS) {
        const size_t vr = d - i < ROWS ? d - i : ROWS;
        const float *w0 = w + row_at(i, d) * n, *w1 = w + row_at(i + 1, d) * n;
        const float *w2 = w + row_at(i + 2, d) * n, *w3 = w + row_at(i + 3, d) * n;
        vfloat32m2_t a0 = __riscv_vfmv_v_f_f32m2(0.0f, vl), a1 = a0, a2 = a0, a3 = a0;
        for (size_t j = 0; j < full; j += vl) {
            vfloat32m2_t xv = __riscv_vle32_v_f32m2(x + j, vl);
            a0 = __riscv_vfmacc_vv_f32m2(a0, __riscv_vle32_v_f32m2(w0 + j, vl), xv, vl);
            a1 = __riscv_vfmacc_vv_f32m2(a1, __riscv_vle32_v_f32m2(w1 + j, vl), xv, vl);
            a2 = __riscv_vfmacc_vv_f32m2(a2, __riscv_vle32_v_f32m2(w2 + j, vl), xv, vl);
            a3 = __riscv_vfmacc_vv_f32m2(a3, __riscv_vle32_v_f32m2(w3 + j, vl), xv, vl);
        }
        vfloat32m1_t r0 = __riscv_vfredusum_vs_f32m2_f32m1(a0, zero, vl);
        vfloat32m1_t r1 = __riscv_vfredusum_vs_f32m2_f32m1(a1, zero, vl);
        vfloat32m1_t r2 = __riscv_vfredusum_vs_f32m2_f32m1(a2, zero, vl);
        vfloat32m1_t r3 = __riscv_vfredusum_vs_f32m2_f32m1(a3, zero, vl);
        if (rest) {
            vfloat32m2_t xv = __riscv_vle32_v_f32m2(x + full, rest);
#define TAIL(r, wr)                                                                        \
    r = __riscv_vfredusum_vs_f32m2_f32m1(                                                \
        __riscv_vfmul_vv_f32m2(__riscv_vle32_v_f32m2((wr) + full, rest), xv, rest), r, rest)
            TAIL(r0, w0);
            TAIL(r1, w1);
            TAIL(r2, w2);
            TAIL(r3, w3);
#undef TAIL
        }
        /* (stores rather than GATHER4: here gcc would surround the slides with copies) */
        __riscv_vse32_v_f32m1(out + i, r0, 1);
        if (vr > 1) __riscv_vse32_v_f32m1(out + i + 1, r1, 1);
        if (vr > 2) __riscv_vse32_v_f32m1(out + i + 2, r2, 1);
        if (vr > 3) __riscv_vse32_v_f32m1(out + i + 3, r3, 1);
    }
}

/* ---- Q8_0 ------------------------------------------------------------------------------
 * Rows that are whole groups (n % gs == 0, one group size, 4-byte aligned scales) and
 * groups a multiple of the e8m1 vector (16 bytes at VLEN 128); anything else takes
 * matvec_q80_ref. Bit-identical to matvec_q80_ref (so to runq.c and the host's stories).
 *
 * A pass takes four rows; the lanes of its fp32 accumulator are those rows. Per group:
 *   int8 x int8 -> int16 products (vwmul; any int8 product fits), one chunk of the group
 *     at a time, the chunk as wide as divides the group (at VLEN 128: LMUL 4 = 64 bytes
 *     for gs 64, LMUL 2 for gs 32), their sum in int32 by one vwredsum per row and chunk
 *     (chained through its scalar operand when a group has several): exact integers;
 *   the four rows' sums gathered into one vector (GATHER4), converted to fp32, times the
 *     four rows' weight scales (one strided load), times the activation's scale, added
 *     to the accumulator: separate vfmul, vfmul, vfadd, so each lane does matvec_q80_ref's
 *     arithmetic for its row in its order, val += ((float)sum * s_w) * s_x.
 * So there is one integer reduction per row and chunk, on whole register groups, and no
 * fp32 reduction: the accumulator is stored as the four outputs. Splitting register
 * groups (vget, to fold int16 products in vector lanes instead) is free on RVV 1.0 but
 * makes gcc emit a th.vmv.v.v and a vsetvli per part on XTheadVector. */

/* Row wr's chunk c: its bytes, their int16 products with x's, and the int32 sum of
 * those plus init (in element 0). */
#define Q80_LOAD(L, wr) __riscv_vle8_v_i8m##L((wr) + c, vc)
#define Q80_MUL(L, L2, wv) __riscv_vwmul_vv_i16m##L2(wv, xv, vc)
#define Q80_SUM(L2, p, init) __riscv_vwredsum_vs_i16m##L2##_i32m1(p, init, vc)

/* One chunk of the four rows, s_r = I_r + row r's sum: loads, multiplies, reductions, in
 * that order over as many rows as the registers allow (four at LMUL 1, two at LMUL 2,
 * one at LMUL 4, whose e16m8 products take 8 registers), so the in-order pipeline has
 * independent work between a result and its use. */
#define Q80_STEP_1(I0, I1, I2, I3)                                                         \
    do {                                                                                   \
        vint8m1_t v0 = Q80_LOAD(1, w0), v1 = Q80_LOAD(1, w1);                              \
        vint8m1_t v2 = Q80_LOAD(1, w2), v3 = Q80_LOAD(1, w3);                              \
        vint16m2_t p0 = Q80_MUL(1, 2, v0), p1 = Q80_MUL(1, 2, v1);                         \
        vint16m2_t p2 = Q80_MUL(1, 2, v2), p3 = Q80_MUL(1, 2, v3);                         \
        s0 = Q80_SUM(2, p0, I0), s1 = Q80_SUM(2, p1, I1);                                  \
        s2 = Q80_SUM(2, p2, I2), s3 = Q80_SUM(2, p3, I3);                                  \
    } while (0)
#define Q80_STEP_2(I0, I1, I2, I3)                                                         \
    do {                                                                                   \
        vint8m2_t v0 = Q80_LOAD(2, w0), v1 = Q80_LOAD(2, w1);                              \
        vint16m4_t p0 = Q80_MUL(2, 4, v0), p1 = Q80_MUL(2, 4, v1);                         \
        s0 = Q80_SUM(4, p0, I0), s1 = Q80_SUM(4, p1, I1);                                  \
        vint8m2_t v2 = Q80_LOAD(2, w2), v3 = Q80_LOAD(2, w3);                              \
        vint16m4_t p2 = Q80_MUL(2, 4, v2), p3 = Q80_MUL(2, 4, v3);                         \
        s2 = Q80_SUM(4, p2, I2), s3 = Q80_SUM(4, p3, I3);                                  \
    } while (0)
#define Q80_STEP_4(I0, I1, I2, I3)                                                         \
    do {                                                                                   \
        s0 = Q80_SUM(8, Q80_MUL(4, 8, Q80_LOAD(4, w0)), I0);                               \
        s1 = Q80_SUM(8, Q80_MUL(4, 8, Q80_LOAD(4, w1)), I1);                               \
        s2 = Q80_SUM(8, Q80_MUL(4, 8, Q80_LOAD(4, w2)), I2);                               \
        s3 = Q80_SUM(8, Q80_MUL(4, 8, Q80_LOAD(4, w3)), I3);                               \
    } while (0)

/* Rows i .. i + 3 (row_at past the end), chunks of LMUL L: the largest that divides gs. */
#define Q80_PASS(L)                                                                        \
    static NO_PRESCHED void q80_pass_m##L(float *out, const Tensor *w, const Activation *x, \
                                          size_t i) {                                      \
        const size_t n = w->cols, gs = w->group_size, groups = n / gs, d = w->rows;        \
        const size_t vc = __riscv_vsetvlmax_e8m##L(); /* bytes per chunk */                \
        const size_t vr = d - i < ROWS ? d - i : ROWS; /* rows stored by this pass */      \
        const int8_t *w0 = w->q + row_at(i, d) * n, *w1 = w->q + row_at(i + 1, d) * n;     \
        const int8_t *w2 = w->q + row_at(i + 2, d) * n, *w3 = w->q + row_at(i + 3, d) * n; \
        /* row i + r's scale of group g is ws[r * groups + g]: a strided load, rows < d */  \
        const float *ws = (const float *)(const void *)w->s + i * groups;                  \
        const ptrdiff_t stride = (ptrdiff_t)(groups * sizeof(float));                      \
        const vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, __riscv_vsetvlmax_e32m1());       \
        vfloat32m1_t acc = __riscv_vfmv_v_f_f32m1(0.0f, vr);                               \
        for (size_t g = 0, off = 0; g < groups; g++, off += gs) {                          \
            vint32m1_t s0, s1, s2, s3;                                                     \
            size_t c = off; /* the first chunk starts the sums from zero */                \
            vint8m##L##_t xv = __riscv_vle8_v_i8m##L(x->q + c, vc);                        \
            Q80_STEP_##L(zero, zero, zero, zero);                                          \
            for (c += vc; c < off + gs; c += vc) {                                         \
                xv = __riscv_vle8_v_i8m##L(x->q + c, vc);                                  \
                Q80_STEP_##L(s0, s1, s2, s3);                                              \
            }                                                                              \
            vint32m1_t sums = GATHER4(i32m1, s0, s1, s2, s3, vr);                          \
            vfloat32m1_t t = __riscv_vfmul_vv_f32m1(__riscv_vfcvt_f_x_v_f32m1(sums, vr),    \
                                                    __riscv_vlse32_v_f32m1(ws + g, stride, vr), \
                                                    vr);                                   \
            acc = __riscv_vfadd_vv_f32m1(acc, __riscv_vfmul_vf_f32m1(t, x->s[g], vr), vr);  \
        }                                                                                  \
        __riscv_vse32_v_f32m1(out + i, acc, vr);                                           \
    }
Q80_PASS(1)
Q80_PASS(2)
Q80_PASS(4)

void matvec_q80(float *out, const Tensor *w, const Activation *x) {
    const size_t n = w->cols, gs = w->group_size, v = __riscv_vsetvlmax_e8m1();
    if (gs == 0 || n % gs != 0 || x->group_size != gs || gs % v != 0 ||
        (uintptr_t)w->s % sizeof(float) != 0) {
        matvec_q80_ref(out, w, x); /* rows straddle groups, small groups, unaligned scales */
        return;
    }
    for (size_t i = 0; i < w->rows; i += ROWS) {
        if (gs % (4 * v) == 0)
            q80_pass_m4(out, w, x, i); /* gs 64 at VLEN 128 */
        else if (gs % (2 * v) == 0)
            q80_pass_m2(out, w, x, i); /* gs 32: stories15M-shaped models */
        else
            q80_pass_m1(out, w, x, i);
    }
}
