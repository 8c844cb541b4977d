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
#include <math.h>
#include <riscv_vector.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "ops.h"


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
static void f32_fast_rvv(float *out, const Tensor *wt, const Activation *xa) {
    const float *w = wt->f, *x = xa->f;
    const size_t n = wt->cols, d = wt->rows;
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
 * the reference (kernels_ref.c). Bit-identical to it (so to runq.c and the host's stories).
 *
 * A pass takes four rows; the lanes of its fp32 accumulator are those rows. Per group:
 *   int8 x int8 -> int16 products (vwmul; any int8 product fits), one chunk of the group
 *     at a time, the chunk as wide as divides the group (at VLEN 128: LMUL 4 = 64 bytes
 *     for gs 64, LMUL 2 for gs 32), their sum in int32 by one vwredsum per row and chunk
 *     (chained through its scalar operand when a group has several): exact integers;
 *   the four rows' sums gathered into one vector (GATHER4), converted to fp32, times the
 *     four rows' weight scales (one strided load), times the activation's scale, added
 *     to the accumulator: separate vfmul, vfmul, vfadd, so each lane does q80_ref's
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

static void q80_fast_rvv(float *out, const Tensor *w, const Activation *x) {
    const size_t n = w->cols, gs = w->group_size, v = __riscv_vsetvlmax_e8m1();
    if (gs == 0 || n % gs != 0 || x->group_size != gs || gs % v != 0 ||
        (uintptr_t)w->s % sizeof(float) != 0) {
        /* rows straddle groups, small groups, unaligned scales */
        kernels_ref.types[TENSOR_Q80].matvec_ref(out, w, x);
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

/* ---- packed row tiles (FORMAT.md) ----------------------------------------------------
 * A tile's 16 rows are the 16 lanes of every vector: vl = PACK_ROWS, set once (AVL 16;
 * VLEN >= 128 holds it at e8m1, so e16m2 and e32m4 too: one SEW/LMUL ratio, one vl). One
 * column of a tile is one vector load, times one scalar of x, accumulated lane-wise:
 * no reductions, no vector -> scalar moves; outputs leave through one vector store per
 * tile, with vl = the tile's real rows (the zero rows padding the last tile are computed,
 * never stored). At VLEN > 128 the same vl = 16 uses part of each register group; lanes
 * past vl are never read.
 *
 * Two tiles per pass where there are two (one pass for a last odd tile): the scalar loads
 * of x and the loop overhead are shared by both, and the two tiles' chains of dependent
 * vector operations interleave for the in-order pipeline. Every function below is
 * spill-free at VLEN 128 (tests/test_rvv.py checks the c906 disassembly for vlenb). */

#define PQ8_BLOCK sizeof(BlockQ8) /* tensor.h */
#define PQ4_BLOCK sizeof(BlockQ4)
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* The 16 bf16 scales at s as fp32 lanes: zero-extended to 32 bits by a widening add of 0
 * (XTheadVector has no vzext), shifted into the upper half. */
static ALWAYS_INLINE vfloat32m4_t bf16_lanes(const unsigned char *s, size_t vl) {
    vuint16m2_t h = __riscv_vle16_v_u16m2((const uint16_t *)(const void *)s, vl);
    vuint32m4_t u = __riscv_vwaddu_vx_u32m4(h, 0, vl);
    return __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vsll_vx_u32m4(u, 16, vl));
}

/* One tile-group's integer sums (exact int32) to fp32, scaled and added to the tile's
 * accumulator as pq8_ref (kernels_ref.c) does, lane by lane: acc + (((float)isum * s_w) * s_x),
 * each step rounded on its own (separate vfmul, vfmul, vfadd: never fused). */
static ALWAYS_INLINE vfloat32m4_t scale_add(vfloat32m4_t acc, vfloat32m4_t sums,
                                            const unsigned char *block_scales, float xs,
                                            size_t vl) {
    vfloat32m4_t f = __riscv_vfmul_vv_f32m4(sums, bf16_lanes(block_scales, vl), vl);
    return __riscv_vfadd_vv_f32m4(acc, __riscv_vfmul_vf_f32m4(f, xs, vl), vl);
}

/* ---- q8 --------------------------------------------------------------------------------
 * Per tile and group, four columns at a time: two int8 x int8 products summed in int16
 * (vwmul then vwmacc: |2 x -128 x 127| = 32512 fits; the activation is runq.c's, within
 * +-127), twice, both widened onto the group's int32 sums (vwadd.wv; the first four
 * columns start them with vwadd.vv). All e8 work of the four columns (both tiles), then
 * the e16 adds: two vtype changes per four columns. The two vwmul come before the two
 * vwmacc: in the order mul, macc, mul, macc gcc (15, XTheadVector) keeps the first sum in
 * one register group, computes its vwmacc in another and copies it there and back. */
static ALWAYS_INLINE NO_PRESCHED void pq8_tiles(float *out, const unsigned char *b,
                                                size_t groups, const Activation *x,
                                                size_t rows, const int two) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS);
    const unsigned char *b1 = b + groups * PQ8_BLOCK; /* the second tile, when two */
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0;
    for (size_t g = 0; g < groups; g++, b += PQ8_BLOCK, b1 += PQ8_BLOCK) {
        const int8_t *xq = x->q + g * PACK_GROUP;
        vint32m4_t i0 = __riscv_vmv_v_x_i32m4(0, vl), i1 = i0;
#define PQ8_COL(bt, c) __riscv_vle8_v_i8m1((const int8_t *)(const void *)((bt) + (c) * PACK_ROWS), vl)
#pragma GCC unroll 8
        for (size_t c = 0; c < PACK_GROUP; c += 4) {
            vint8m1_t u0 = PQ8_COL(b, c), v0 = PQ8_COL(b, c + 2), u1 = u0, v1 = v0;
            if (two) u1 = PQ8_COL(b1, c), v1 = PQ8_COL(b1, c + 2);
            vint16m2_t p0 = __riscv_vwmul_vx_i16m2(u0, xq[c], vl), p1 = p0;
            vint16m2_t q0 = __riscv_vwmul_vx_i16m2(v0, xq[c + 2], vl), q1 = q0;
            if (two) {
                p1 = __riscv_vwmul_vx_i16m2(u1, xq[c], vl);
                q1 = __riscv_vwmul_vx_i16m2(v1, xq[c + 2], vl);
            }
            u0 = PQ8_COL(b, c + 1), v0 = PQ8_COL(b, c + 3);
            if (two) u1 = PQ8_COL(b1, c + 1), v1 = PQ8_COL(b1, c + 3);
            p0 = __riscv_vwmacc_vx_i16m2(p0, xq[c + 1], u0, vl);
            q0 = __riscv_vwmacc_vx_i16m2(q0, xq[c + 3], v0, vl);
            if (two) {
                p1 = __riscv_vwmacc_vx_i16m2(p1, xq[c + 1], u1, vl);
                q1 = __riscv_vwmacc_vx_i16m2(q1, xq[c + 3], v1, vl);
            }
            if (c == 0) {
                i0 = __riscv_vwadd_vv_i32m4(p0, q0, vl);
                if (two) i1 = __riscv_vwadd_vv_i32m4(p1, q1, vl);
            } else {
                i0 = __riscv_vwadd_wv_i32m4(__riscv_vwadd_wv_i32m4(i0, p0, vl), q0, vl);
                if (two) i1 = __riscv_vwadd_wv_i32m4(__riscv_vwadd_wv_i32m4(i1, p1, vl), q1, vl);
            }
        }
#undef PQ8_COL
        const float xs = x->s[g];
        a0 = scale_add(a0, __riscv_vfcvt_f_x_v_f32m4(i0, vl), b + offsetof(BlockQ8, scale), xs, vl);
        if (two)
            a1 = scale_add(a1, __riscv_vfcvt_f_x_v_f32m4(i1, vl), b1 + offsetof(BlockQ8, scale),
                           xs, vl);
    }
    if (two) {
        __riscv_vse32_v_f32m4(out, a0, vl);
        __riscv_vse32_v_f32m4(out + PACK_ROWS, a1, rows);
    } else {
        __riscv_vse32_v_f32m4(out, a0, rows);
    }
}

/* ---- q4 --------------------------------------------------------------------------------
 * A byte holds two columns: lo = (v << 4) >> 4 and hi = v >> 4 (arithmetic shifts: the
 * nibbles' two's complement). |q| <= 8 and |x| <= 127, so a whole group's 32 products sum
 * in int16 (<= 32512): one vwmul, then vwmacc, per tile and group, all at e8 (no vtype
 * change in the loop); the int16 sums go to fp32 by one exact widening convert. */
static ALWAYS_INLINE NO_PRESCHED void pq4_tiles(float *out, const unsigned char *b,
                                                size_t groups, const Activation *x,
                                                size_t rows, const int two) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS);
    const unsigned char *b1 = b + groups * PQ4_BLOCK;
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0;
    for (size_t g = 0; g < groups; g++, b += PQ4_BLOCK, b1 += PQ4_BLOCK) {
        const int8_t *xq = x->q + g * PACK_GROUP;
        vint16m2_t s0 = __riscv_vmv_v_x_i16m2(0, vl), s1 = s0;
#define PQ4_BYTES(bt, p) __riscv_vle8_v_i8m1((const int8_t *)(const void *)((bt) + (p) * PACK_ROWS), vl)
#define PQ4_LO(v) __riscv_vsra_vx_i8m1(__riscv_vsll_vx_i8m1(v, 4, vl), 4, vl)
#define PQ4_HI(v) __riscv_vsra_vx_i8m1(v, 4, vl)
#pragma GCC unroll 16
        for (size_t p = 0; p < PACK_GROUP / 2; p++) {
            const int8_t xa = xq[2 * p], xb = xq[2 * p + 1];
            vint8m1_t v0 = PQ4_BYTES(b, p), v1;
            if (two) v1 = PQ4_BYTES(b1, p);
            if (p == 0) {
                s0 = __riscv_vwmul_vx_i16m2(PQ4_LO(v0), xa, vl);
                if (two) s1 = __riscv_vwmul_vx_i16m2(PQ4_LO(v1), xa, vl);
            } else {
                s0 = __riscv_vwmacc_vx_i16m2(s0, xa, PQ4_LO(v0), vl);
                if (two) s1 = __riscv_vwmacc_vx_i16m2(s1, xa, PQ4_LO(v1), vl);
            }
            s0 = __riscv_vwmacc_vx_i16m2(s0, xb, PQ4_HI(v0), vl);
            if (two) s1 = __riscv_vwmacc_vx_i16m2(s1, xb, PQ4_HI(v1), vl);
        }
#undef PQ4_BYTES
#undef PQ4_LO
#undef PQ4_HI
        const float xs = x->s[g];
        a0 = scale_add(a0, __riscv_vfwcvt_f_x_v_f32m4(s0, vl), b + offsetof(BlockQ4, scale),
                       xs, vl);
        if (two)
            a1 = scale_add(a1, __riscv_vfwcvt_f_x_v_f32m4(s1, vl),
                           b1 + offsetof(BlockQ4, scale), xs, vl);
    }
    if (two) {
        __riscv_vse32_v_f32m4(out, a0, vl);
        __riscv_vse32_v_f32m4(out + PACK_ROWS, a1, rows);
    } else {
        __riscv_vse32_v_f32m4(out, a0, rows);
    }
}

static NO_PRESCHED void pq8_pass1(float *out, const unsigned char *b, size_t groups,
                                  const Activation *x, size_t rows) {
    pq8_tiles(out, b, groups, x, rows, 0);
}
static NO_PRESCHED void pq8_pass2(float *out, const unsigned char *b, size_t groups,
                                  const Activation *x, size_t rows) {
    pq8_tiles(out, b, groups, x, rows, 1);
}
static NO_PRESCHED void pq4_pass1(float *out, const unsigned char *b, size_t groups,
                                  const Activation *x, size_t rows) {
    pq4_tiles(out, b, groups, x, rows, 0);
}
static NO_PRESCHED void pq4_pass2(float *out, const unsigned char *b, size_t groups,
                                  const Activation *x, size_t rows) {
    pq4_tiles(out, b, groups, x, rows, 1);
}

/* Bit-identical to the reference: exact integer sums, the same fp32 steps per lane.
 * Reads whole groups of x->q (the engine pads the activation to them; the weights' padding
 * columns are zero). */
static void pq_fast_rvv(float *out, const Tensor *w, const Activation *x) {
    const int q4 = w->type == TENSOR_PQ4;
    const size_t block = q4 ? PQ4_BLOCK : PQ8_BLOCK, tile = w->groups * block;
    size_t t = 0;
    for (; t + 2 <= w->tiles; t += 2) {
        const size_t left = w->rows - (t + 1) * PACK_ROWS;
        const size_t rows = left < PACK_ROWS ? left : PACK_ROWS; /* of the second tile */
        if (q4)
            pq4_pass2(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
        else
            pq8_pass2(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
    }
    if (t < w->tiles) {
        const size_t rows = w->rows - t * PACK_ROWS;
        if (q4)
            pq4_pass1(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
        else
            pq8_pass1(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
    }
}

/* ---- q8 x int16 (the faithful path's classifier) ----------------------------------------
 * Per tile and group, column by column: the 16 int8 weights sign-extended to int16 (a
 * widening add of 0: XTheadVector has no vsext), then vwmacc.vx by the column's int16
 * activation into the group's int32 sums (|32 x 127 x 32767| < 2^31: exact). Group end as
 * pq8_ref: bit-identical to pq8_a16_ref (kernels_ref.c). */
static ALWAYS_INLINE NO_PRESCHED void pq8a16_tile(float *out, const unsigned char *b,
                                                  size_t groups, const int16_t *xq,
                                                  const float *xs, size_t rows) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS);
    vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    for (size_t g = 0; g < groups; g++, b += PQ8_BLOCK) {
        const int16_t *xg = xq + g * PACK_GROUP;
        vint32m4_t isum = __riscv_vmv_v_x_i32m4(0, vl);
        for (size_t j = 0; j < PACK_GROUP; j += 4) {
            const int8_t *c = (const int8_t *)(const void *)(b + j * PACK_ROWS);
            vint16m2_t w0 = __riscv_vwadd_vx_i16m2(__riscv_vle8_v_i8m1(c, vl), 0, vl);
            vint16m2_t w1 = __riscv_vwadd_vx_i16m2(__riscv_vle8_v_i8m1(c + 16, vl), 0, vl);
            vint16m2_t w2 = __riscv_vwadd_vx_i16m2(__riscv_vle8_v_i8m1(c + 32, vl), 0, vl);
            vint16m2_t w3 = __riscv_vwadd_vx_i16m2(__riscv_vle8_v_i8m1(c + 48, vl), 0, vl);
            isum = __riscv_vwmacc_vx_i32m4(isum, xg[j], w0, vl);
            isum = __riscv_vwmacc_vx_i32m4(isum, xg[j + 1], w1, vl);
            isum = __riscv_vwmacc_vx_i32m4(isum, xg[j + 2], w2, vl);
            isum = __riscv_vwmacc_vx_i32m4(isum, xg[j + 3], w3, vl);
        }
        acc = scale_add(acc, __riscv_vfcvt_f_x_v_f32m4(isum, vl), b + offsetof(BlockQ8, scale),
                        xs[g], vl);
    }
    __riscv_vse32_v_f32m4(out, acc, rows);
}

static NO_PRESCHED void pq8_a16_rvv(float *out, const Tensor *w, const int16_t *xq,
                                      const float *xs) {
    const size_t tile = w->groups * PQ8_BLOCK;
    for (size_t t = 0; t < w->tiles; t++) {
        const size_t left = w->rows - t * PACK_ROWS;
        pq8a16_tile(out + t * PACK_ROWS, w->p + t * tile, w->groups, xq, xs,
                    left < PACK_ROWS ? left : PACK_ROWS);
    }
}

/* ---- fp32 ------------------------------------------------------------------------------
 * Per column, one vector load per tile and one scalar of x for both: fused, vfmacc.vf;
 * unfused, vfmul.vf then vfadd.vv, pf32_ref's acc += w * x, bit for bit.
 * Eight columns per iteration (immediate offsets for x and the column addresses). */
static ALWAYS_INLINE NO_PRESCHED void pf32_tiles(float *out, const float *b, size_t n,
                                                 const float *x, size_t rows, const int two,
                                                 const int fused) {
    const size_t vl = __riscv_vsetvl_e32m4(PACK_ROWS);
    const float *b1 = b + n * PACK_ROWS;
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0;
#define PF32_STEP(k)                                                                       \
    do {                                                                                   \
        const float xj = x[k];                                                             \
        vfloat32m4_t w0 = __riscv_vle32_v_f32m4(b + (k) * PACK_ROWS, vl), w1;              \
        if (two) w1 = __riscv_vle32_v_f32m4(b1 + (k) * PACK_ROWS, vl);                     \
        if (fused) {                                                                       \
            a0 = __riscv_vfmacc_vf_f32m4(a0, xj, w0, vl);                                  \
            if (two) a1 = __riscv_vfmacc_vf_f32m4(a1, xj, w1, vl);                         \
        } else {                                                                           \
            a0 = __riscv_vfadd_vv_f32m4(a0, __riscv_vfmul_vf_f32m4(w0, xj, vl), vl);       \
            if (two) a1 = __riscv_vfadd_vv_f32m4(a1, __riscv_vfmul_vf_f32m4(w1, xj, vl), vl); \
        }                                                                                  \
    } while (0)
    size_t j = 0;
    for (; j + 8 <= n; j += 8, x += 8, b += 8 * PACK_ROWS, b1 += 8 * PACK_ROWS) {
#pragma GCC unroll 8
        for (size_t k = 0; k < 8; k++) PF32_STEP(k);
    }
    for (; j < n; j++, x++, b += PACK_ROWS, b1 += PACK_ROWS) PF32_STEP(0);
#undef PF32_STEP
    if (two) {
        __riscv_vse32_v_f32m4(out, a0, vl);
        __riscv_vse32_v_f32m4(out + PACK_ROWS, a1, rows);
    } else {
        __riscv_vse32_v_f32m4(out, a0, rows);
    }
}

#define PF32_PASS(name, two, fused)                                                        \
    static NO_PRESCHED void name(float *out, const float *b, size_t n, const float *x,     \
                                 size_t rows) {                                            \
        pf32_tiles(out, b, n, x, rows, two, fused);                                        \
    }
PF32_PASS(pf32_pass1, 0, 0)
PF32_PASS(pf32_pass2, 1, 0)
PF32_PASS(pf32_fused1, 0, 1)
PF32_PASS(pf32_fused2, 1, 1)
#undef PF32_PASS

static ALWAYS_INLINE void pf32_matvec(float *out, const Tensor *w, const float *x,
                                      const int fused) {
    const size_t n = w->cols, tile = n * PACK_ROWS;
    const float *p = (const float *)(const void *)w->p;
    size_t t = 0;
    for (; t + 2 <= w->tiles; t += 2) {
        const size_t left = w->rows - (t + 1) * PACK_ROWS;
        const size_t rows = left < PACK_ROWS ? left : PACK_ROWS;
        if (fused)
            pf32_fused2(out + t * PACK_ROWS, p + t * tile, n, x, rows);
        else
            pf32_pass2(out + t * PACK_ROWS, p + t * tile, n, x, rows);
    }
    if (t < w->tiles) {
        const size_t rows = w->rows - t * PACK_ROWS;
        if (fused)
            pf32_fused1(out + t * PACK_ROWS, p + t * tile, n, x, rows);
        else
            pf32_pass1(out + t * PACK_ROWS, p + t * tile, n, x, rows);
    }
}

/* unfused: the reference's bits */
static void pf32_ref_rvv(float *out, const Tensor *w, const Activation *x) {
    pf32_matvec(out, w, x->f, 0);
}
static void pf32_fast_rvv(float *out, const Tensor *w, const Activation *x) {
    pf32_matvec(out, w, x->f, 1);
}

/* ---- attention over the binary16 KV cache ----------------------------------------------
 * attention_f16_ref's arithmetic, lane by lane: the scores with positions as lanes (the
 * keys are transposed: one dimension's positions are contiguous), acc + q[i] * k over i
 * ascending; the values with dimensions as lanes, acc + att[t] * v over t ascending; every
 * product and sum its own rounding (vfmul then vfadd, never fused), each accumulation one
 * vl from start to store, the division by sqrtf(head_size) a vector divide. The softmax
 * (expf) stays the scalar one of ops.c.
 *
 * No vector fp16 (QEMU 7.2 has no Zvfh; one source for both ISAs): the binary16 bits are
 * placed under fp32's exponent and mantissa by integer operations, as half_to_float_soft
 * does, but the exact rescaling by 2^112 moves to the scalar factor: with b the fp32
 * number those bits make (value x 2^-112 exactly: binary16 subnormals are fp32 subnormals
 * then), (s x 2^112) x b is the same real number as s x value, so rounds to the same fp32,
 * wherever s x 2^112 is exact and finite, |s| < 2^16. The softmax weights are <= 1; a
 * query with a larger |q[i]| (or inf, NaN) takes the reference. Inf and NaN keys and
 * values (exponent all ones) get fp32's all-ones exponent, so stay inf and NaN. */
#define HALF_SCALE 0x1p112f

/* vl binary16 values at h as above: lanes whose h << 1 > 0xf7ff (exponent all ones) are
 * inf or NaN (the mask made at e16m2 for the e32m4 lanes: one SEW/LMUL ratio, one mask
 * layout); vwmul by 2^13 sign-extends h << 13 (the sign in bits 28-31, the other 15 bits
 * in 13-27; XTheadVector has no vsext), the and keeps bit 31 of the sign, inf and NaN
 * lanes get the fp32 exponent 255. All e16 work first, vwmul before the shift (the other
 * way gcc copies the loaded register for XTheadVector): two vtype changes per call. */
static ALWAYS_INLINE vfloat32m4_t half_lanes(const uint16_t *h, size_t vl) {
    vint16m2_t x = __riscv_vle16_v_i16m2((const int16_t *)(const void *)h, vl);
    vint32m4_t w = __riscv_vwmul_vx_i32m4(x, 1 << 13, vl);
    vbool8_t special = __riscv_vmsgtu_vx_u16m2_b8(
        __riscv_vsll_vx_u16m2(__riscv_vreinterpret_v_i16m2_u16m2(x), 1, vl), 0xf7ffu, vl);
    vuint32m4_t b = __riscv_vand_vx_u32m4(__riscv_vreinterpret_v_i32m4_u32m4(w), 0x8fffe000u, vl);
    b = __riscv_vor_vx_u32m4_mu(special, b, b, 0x7f800000u, vl);
    return __riscv_vreinterpret_v_u32m4_f32m4(b);
}

/* att[t] for t < n: strips of up to VLMAX(e32m4) positions, head_size dimensions each. */
static NO_PRESCHED void f16_scores(float *att, const float *q, const uint16_t *key,
                                   size_t key_stride, size_t n, size_t head_size) {
    const float root = sqrtf((float)head_size);
    for (size_t t = 0, vl; t < n; t += vl) {
        vl = __riscv_vsetvl_e32m4(n - t);
        const uint16_t *k = key + t;
        vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
        for (size_t i = 0; i < head_size; i++, k += key_stride)
            acc = __riscv_vfadd_vv_f32m4(
                acc, __riscv_vfmul_vf_f32m4(half_lanes(k, vl), q[i] * HALF_SCALE, vl), vl);
        __riscv_vse32_v_f32m4(att + t, __riscv_vfdiv_vf_f32m4(acc, root, vl), vl);
    }
}

/* out[i] for i < head_size: strips of up to VLMAX(e32m4) dimensions, n positions each. */
static NO_PRESCHED void f16_values(float *out, const float *att, const uint16_t *value,
                                   size_t value_stride, size_t n, size_t head_size) {
    for (size_t i = 0, vl; i < head_size; i += vl) {
        vl = __riscv_vsetvl_e32m4(head_size - i);
        const uint16_t *v = value + i;
        vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
        for (size_t t = 0; t < n; t++, v += value_stride)
            acc = __riscv_vfadd_vv_f32m4(
                acc, __riscv_vfmul_vf_f32m4(half_lanes(v, vl), att[t] * HALF_SCALE, vl), vl);
        __riscv_vse32_v_f32m4(out + i, acc, vl);
    }
}

static void attention_f16_rvv(float *out, float *att, const float *q, const uint16_t *key,
                              size_t key_stride, const uint16_t *value, size_t value_stride,
                              int pos, int head_size) {
    const size_t n = (size_t)pos + 1, hs = (size_t)head_size;
    for (size_t i = 0; i < hs; i++)
        if (!(fabsf(q[i]) < 0x1p16f)) { /* q[i] x 2^112 would not be exact */
            kernels_ref.attention_f16(out, att, q, key, key_stride, value, value_stride, pos,
                                      head_size);
            return;
        }
    f16_scores(att, q, key, key_stride, n, hs);
    softmax(att, pos + 1);
    f16_values(out, att, value, value_stride, n, hs);
}

const KernelSet kernels_isa = {
#if defined(__riscv_xtheadvector)
    .name = "rvv (xtheadvector)",
#else
    .name = "rvv",
#endif
    .types =
        {
            [TENSOR_F32] = {.matvec_fast = f32_fast_rvv},
            [TENSOR_Q80] = {.matvec_fast = q80_fast_rvv},
            [TENSOR_PF32] = {.matvec_ref = pf32_ref_rvv, .matvec_fast = pf32_fast_rvv},
            [TENSOR_PQ8] = {.matvec_fast = pq_fast_rvv, .matvec_a16 = pq8_a16_rvv},
            [TENSOR_PQ4] = {.matvec_fast = pq_fast_rvv},
        },
    .attention_f16 = attention_f16_rvv,
};
