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

#include "exp_fast.h"
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

/* ---- packed tiles at VLEN 128: whole-group kernels in inline assembly ------------------
 * At VLEN 128 (the C906's) one vector register is one column of a tile (16 rows x 8 bits),
 * so one e8m8 load brings eight columns (128 bytes) into v0..v7 with one address: the
 * intrinsics above need one load, and one addi for its address, per column (gcc cannot
 * use the parts of a register group without copying them out for XTheadVector). The
 * assembly below names the registers of the group one by one instead. Same arithmetic as
 * pq8_tiles/pq4_tiles, operation for operation on the same values (exact integer sums),
 * so bit-identical; used only when vsetvlmax(e8, m1) is 16 (otherwise the intrinsics).
 * Fixed registers v0..v23 (clobbered), the int32/int16 group sums in registers gcc
 * chooses (v24..v31); where that leaves no room for the fp32 accumulators (q8, q8 x int16)
 * they stay in memory across the assembly (a stack array, not a spill: gcc's spills read
 * vlenb, which the C906 lacks); q4 clobbers only v0..v15. The two ISAs differ
 * only in mnemonics: XTheadVector's th. prefix, its untyped th.vle.v, no ta/ma. */
#if defined(__riscv_xtheadvector)
#define PQ_VI(op) "th." op " "
#define PQ_VLE "th.vle.v "
#define PQ_VSET(avl, e, m) "th.vsetvli zero,%[" avl "]," e "," m "\n\t"
#else
#define PQ_VI(op) op " "
#define PQ_VLE "vle8.v "
#define PQ_VSET(avl, e, m) "vsetvli zero,%[" avl "]," e "," m ",ta,ma\n\t"
#endif
#define PQ_CLOBBERS                                                                        \
    "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13",  \
        "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "vl", "vtype",   \
        "memory"
/* q4 needs only v0..v15: its fp32 accumulators stay in registers (v16..v31 hold them and
 * the int16 sums, with room for scale_add's temporaries between the assembly blocks). */
#define PQ_CLOBBERS16                                                                      \
    "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13",  \
        "v14", "v15", "vl", "vtype", "memory"
/* The activation bytes o+0..o+7 into x0..x7. */
#define PQ_LB8(o)                                                                          \
    "lb %[x0]," #o "+0(%[xq])\n\tlb %[x1]," #o "+1(%[xq])\n\tlb %[x2]," #o "+2(%[xq])\n\t"  \
    "lb %[x3]," #o "+3(%[xq])\n\tlb %[x4]," #o "+4(%[xq])\n\tlb %[x5]," #o "+5(%[xq])\n\t"  \
    "lb %[x6]," #o "+6(%[xq])\n\tlb %[x7]," #o "+7(%[xq])\n\t"
#define PQ_X8_OUT                                                                          \
    [x0] "=&r"(x0), [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3), [x4] "=&r"(x4),          \
        [x5] "=&r"(x5), [x6] "=&r"(x6), [x7] "=&r"(x7)

/* q8, eight columns of both tiles: columns into v0..v7 (tile 0) and v8..v15 (tile 1); two
 * int8 x int8 products summed in int16 per register pair (as pq8_tiles), into v16..v23,
 * then into v0..v3 and v8..v11 once those columns are used; then e16 for the adds. */
#define PQ8_MUL8                                                                           \
    PQ_VSET("vl8", "e8", "m8") PQ_VLE "v0,(%[p0])\n\t" PQ_VLE "v8,(%[p1])\n\t"              \
    "addi %[p0],%[p0],128\n\taddi %[p1],%[p1],128\n\t" PQ_VSET("vl", "e8", "m1")            \
    PQ_VI("vwmul.vx") "v16,v0,%[x0]\n\t" PQ_VI("vwmul.vx") "v18,v2,%[x2]\n\t"               \
    PQ_VI("vwmul.vx") "v20,v8,%[x0]\n\t" PQ_VI("vwmul.vx") "v22,v10,%[x2]\n\t"              \
    PQ_VI("vwmacc.vx") "v16,%[x1],v1\n\t" PQ_VI("vwmacc.vx") "v18,%[x3],v3\n\t"             \
    PQ_VI("vwmacc.vx") "v20,%[x1],v9\n\t" PQ_VI("vwmacc.vx") "v22,%[x3],v11\n\t"            \
    PQ_VI("vwmul.vx") "v0,v4,%[x4]\n\t" PQ_VI("vwmul.vx") "v2,v6,%[x6]\n\t"                 \
    PQ_VI("vwmul.vx") "v8,v12,%[x4]\n\t" PQ_VI("vwmul.vx") "v10,v14,%[x6]\n\t"              \
    PQ_VI("vwmacc.vx") "v0,%[x5],v5\n\t" PQ_VI("vwmacc.vx") "v2,%[x7],v7\n\t"               \
    PQ_VI("vwmacc.vx") "v8,%[x5],v13\n\t" PQ_VI("vwmacc.vx") "v10,%[x7],v15\n\t"            \
    PQ_VSET("vl", "e16", "m2")
#define PQ8_ADD8                                                                           \
    PQ_VI("vwadd.wv") "%[i0],%[i0],v16\n\t" PQ_VI("vwadd.wv") "%[i1],%[i1],v20\n\t"         \
    PQ_VI("vwadd.wv") "%[i0],%[i0],v18\n\t" PQ_VI("vwadd.wv") "%[i1],%[i1],v22\n\t"         \
    PQ_VI("vwadd.wv") "%[i0],%[i0],v0\n\t" PQ_VI("vwadd.wv") "%[i1],%[i1],v8\n\t"           \
    PQ_VI("vwadd.wv") "%[i0],%[i0],v2\n\t" PQ_VI("vwadd.wv") "%[i1],%[i1],v10\n\t"

static NO_PRESCHED void pq8_pass2_v128(float *out, const unsigned char *b, size_t groups,
                                       const Activation *x, size_t rows) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS), vl8 = 8 * PACK_ROWS;
    const unsigned char *b1 = b + groups * PQ8_BLOCK;
    float acc[2 * PACK_ROWS] = {0};
    for (size_t g = 0; g < groups; g++, b += PQ8_BLOCK, b1 += PQ8_BLOCK) {
        const int8_t *xq = x->q + g * PACK_GROUP;
        const unsigned char *p0 = b, *p1 = b1;
        long x0, x1, x2, x3, x4, x5, x6, x7;
        vint32m4_t i0, i1;
        __asm__ volatile(PQ_LB8(0) PQ8_MUL8
                         PQ_VI("vwadd.vv") "%[i0],v16,v18\n\t"
                         PQ_VI("vwadd.vv") "%[i1],v20,v22\n\t"
                         PQ_VI("vwadd.wv") "%[i0],%[i0],v0\n\t"
                         PQ_VI("vwadd.wv") "%[i1],%[i1],v8\n\t"
                         PQ_VI("vwadd.wv") "%[i0],%[i0],v2\n\t"
                         PQ_VI("vwadd.wv") "%[i1],%[i1],v10\n\t"
                         PQ_LB8(8) PQ8_MUL8 PQ8_ADD8 PQ_LB8(16) PQ8_MUL8 PQ8_ADD8 PQ_LB8(24)
                         PQ8_MUL8 PQ8_ADD8
                         : [i0] "=&vr"(i0), [i1] "=&vr"(i1), [p0] "+&r"(p0), [p1] "+&r"(p1),
                           PQ_X8_OUT
                         : [xq] "r"(xq), [vl] "r"(vl), [vl8] "r"(vl8)
                         : PQ_CLOBBERS);
        /* scale_add for both tiles, the e16 steps (both tiles' scales) first: two vtype
         * changes per group instead of four */
        const float xs = x->s[g];
        const uint16_t *h0 = (const uint16_t *)(const void *)(b + offsetof(BlockQ8, scale));
        const uint16_t *h1 = (const uint16_t *)(const void *)(b1 + offsetof(BlockQ8, scale));
        vuint32m4_t u0 = __riscv_vwaddu_vx_u32m4(__riscv_vle16_v_u16m2(h0, vl), 0, vl);
        vuint32m4_t u1 = __riscv_vwaddu_vx_u32m4(__riscv_vle16_v_u16m2(h1, vl), 0, vl);
        vfloat32m4_t f = __riscv_vfmul_vv_f32m4(
            __riscv_vfcvt_f_x_v_f32m4(i0, vl),
            __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vsll_vx_u32m4(u0, 16, vl)), vl);
        __riscv_vse32_v_f32m4(acc, __riscv_vfadd_vv_f32m4(__riscv_vle32_v_f32m4(acc, vl),
                                                         __riscv_vfmul_vf_f32m4(f, xs, vl), vl),
                              vl);
        f = __riscv_vfmul_vv_f32m4(
            __riscv_vfcvt_f_x_v_f32m4(i1, vl),
            __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vsll_vx_u32m4(u1, 16, vl)), vl);
        __riscv_vse32_v_f32m4(
            acc + PACK_ROWS,
            __riscv_vfadd_vv_f32m4(__riscv_vle32_v_f32m4(acc + PACK_ROWS, vl),
                                   __riscv_vfmul_vf_f32m4(f, xs, vl), vl),
            vl);
    }
    __riscv_vse32_v_f32m4(out, __riscv_vle32_v_f32m4(acc, vl), vl);
    __riscv_vse32_v_f32m4(out + PACK_ROWS, __riscv_vle32_v_f32m4(acc + PACK_ROWS, vl), rows);
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

/* q4 at VLEN 128, four bytes (eight columns) of both tiles: bytes into v0..v3 (tile 0)
 * and v4..v7 (tile 1); low nibbles (v << 4) >> 4 into v8..v15, high nibbles v >> 4 in
 * place, four registers per shift (e8m4, the loads' vtype: no vtype change); then the
 * int16 sums as pq4_tiles. */
#define PQ4_LOAD4                                                                          \
    PQ_VSET("vl4", "e8", "m4") PQ_VLE "v0,(%[p0])\n\t" PQ_VLE "v4,(%[p1])\n\t"              \
    "addi %[p0],%[p0],64\n\taddi %[p1],%[p1],64\n\t" PQ_VI("vsll.vi") "v8,v0,4\n\t"         \
    PQ_VI("vsll.vi") "v12,v4,4\n\t" PQ_VI("vsra.vi") "v8,v8,4\n\t"                          \
    PQ_VI("vsra.vi") "v12,v12,4\n\t" PQ_VI("vsra.vi") "v0,v0,4\n\t"                         \
    PQ_VI("vsra.vi") "v4,v4,4\n\t" PQ_VSET("vl", "e8", "m1")
#define PQ4_BYTE(xa, xb, r0, r1, l0, l1)                                                   \
    PQ_VI("vwmacc.vx") "%[s0],%[" xa "]," l0 "\n\t" PQ_VI("vwmacc.vx") "%[s1],%[" xa "]," l1  \
    "\n\t" PQ_VI("vwmacc.vx") "%[s0],%[" xb "]," r0 "\n\t" PQ_VI("vwmacc.vx") "%[s1],%[" xb   \
    "]," r1 "\n\t"
#define PQ4_REST4                                                                          \
    PQ4_BYTE("x2", "x3", "v1", "v5", "v9", "v13")                                          \
    PQ4_BYTE("x4", "x5", "v2", "v6", "v10", "v14")                                         \
    PQ4_BYTE("x6", "x7", "v3", "v7", "v11", "v15")
#define PQ4_PHASE(o) PQ_LB8(o) PQ4_LOAD4 PQ4_BYTE("x0", "x1", "v0", "v4", "v8", "v12") PQ4_REST4

static NO_PRESCHED void pq4_pass2_v128(float *out, const unsigned char *b, size_t groups,
                                       const Activation *x, size_t rows) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS), vl4 = 4 * PACK_ROWS,
                 vl8 = 8 * PACK_ROWS;
    const unsigned char *b1 = b + groups * PQ4_BLOCK;
    vfloat32m4_t a0 = __riscv_vfmv_v_f_f32m4(0.0f, vl), a1 = a0;
    for (size_t g = 0; g < groups; g++, b += PQ4_BLOCK, b1 += PQ4_BLOCK) {
        const int8_t *xq = x->q + g * PACK_GROUP;
        const unsigned char *p0 = b, *p1 = b1;
        long x0, x1, x2, x3, x4, x5, x6, x7;
        vint16m2_t s0, s1;
        __asm__ volatile(PQ_LB8(0) PQ4_LOAD4
                         PQ_VI("vwmul.vx") "%[s0],v8,%[x0]\n\t"
                         PQ_VI("vwmul.vx") "%[s1],v12,%[x0]\n\t"
                         PQ_VI("vwmacc.vx") "%[s0],%[x1],v0\n\t"
                         PQ_VI("vwmacc.vx") "%[s1],%[x1],v4\n\t"
                         PQ4_REST4 PQ4_PHASE(8) PQ4_PHASE(16) PQ4_PHASE(24)
                         : [s0] "=&vr"(s0), [s1] "=&vr"(s1), [p0] "+&r"(p0), [p1] "+&r"(p1),
                           PQ_X8_OUT
                         : [xq] "r"(xq), [vl] "r"(vl), [vl4] "r"(vl4), [vl8] "r"(vl8)
                         : PQ_CLOBBERS16);
        /* scale_add for both tiles, the e16 steps of both first: two vtype changes */
        const float xs = x->s[g];
        const uint16_t *h0 = (const uint16_t *)(const void *)(b + offsetof(BlockQ4, scale));
        const uint16_t *h1 = (const uint16_t *)(const void *)(b1 + offsetof(BlockQ4, scale));
        vfloat32m4_t f0 = __riscv_vfwcvt_f_x_v_f32m4(s0, vl);
        vfloat32m4_t f1 = __riscv_vfwcvt_f_x_v_f32m4(s1, vl);
        vuint32m4_t u0 = __riscv_vwaddu_vx_u32m4(__riscv_vle16_v_u16m2(h0, vl), 0, vl);
        vuint32m4_t u1 = __riscv_vwaddu_vx_u32m4(__riscv_vle16_v_u16m2(h1, vl), 0, vl);
        f0 = __riscv_vfmul_vv_f32m4(
            f0, __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vsll_vx_u32m4(u0, 16, vl)), vl);
        f1 = __riscv_vfmul_vv_f32m4(
            f1, __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vsll_vx_u32m4(u1, 16, vl)), vl);
        a0 = __riscv_vfadd_vv_f32m4(a0, __riscv_vfmul_vf_f32m4(f0, xs, vl), vl);
        a1 = __riscv_vfadd_vv_f32m4(a1, __riscv_vfmul_vf_f32m4(f1, xs, vl), vl);
    }
    __riscv_vse32_v_f32m4(out, a0, vl);
    __riscv_vse32_v_f32m4(out + PACK_ROWS, a1, rows);
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
    const int v128 = __riscv_vsetvlmax_e8m1() == PACK_ROWS; /* the assembly's VLEN */
    size_t t = 0;
    for (; t + 2 <= w->tiles; t += 2) {
        const size_t left = w->rows - (t + 1) * PACK_ROWS;
        const size_t rows = left < PACK_ROWS ? left : PACK_ROWS; /* of the second tile */
        if (q4 && v128)
            pq4_pass2_v128(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
        else if (q4)
            pq4_pass2(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
        else if (v128)
            pq8_pass2_v128(out + t * PACK_ROWS, w->p + t * tile, w->groups, x, rows);
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

/* The same at VLEN 128 for two tiles, in assembly (see pq8_pass2_v128): four columns of
 * each tile per load (v0..v3, v4..v7), sign-extended four at a time (e8m4 -> e16m8: v8..v15,
 * v16..v23), then vwmacc.vx by the columns' int16 activations (loaded once for both). */
#define PQA16_LH4(o)                                                                       \
    "lh %[x0],2*" #o "+0(%[xq])\n\tlh %[x1],2*" #o "+2(%[xq])\n\tlh %[x2],2*" #o             \
    "+4(%[xq])\n\tlh %[x3],2*" #o "+6(%[xq])\n\t"
#define PQA16_LOAD4                                                                        \
    PQ_VSET("vl4", "e8", "m4") PQ_VLE "v0,(%[p0])\n\t" PQ_VLE "v4,(%[p1])\n\t"              \
    "addi %[p0],%[p0],64\n\taddi %[p1],%[p1],64\n\t" PQ_VI("vwadd.vx") "v8,v0,zero\n\t"      \
    PQ_VI("vwadd.vx") "v16,v4,zero\n\t" PQ_VSET("vl", "e16", "m2")
#define PQA16_MACC4                                                                        \
    PQ_VI("vwmacc.vx") "%[i0],%[x0],v8\n\t" PQ_VI("vwmacc.vx") "%[i1],%[x0],v16\n\t"         \
    PQ_VI("vwmacc.vx") "%[i0],%[x1],v10\n\t" PQ_VI("vwmacc.vx") "%[i1],%[x1],v18\n\t"        \
    PQ_VI("vwmacc.vx") "%[i0],%[x2],v12\n\t" PQ_VI("vwmacc.vx") "%[i1],%[x2],v20\n\t"        \
    PQ_VI("vwmacc.vx") "%[i0],%[x3],v14\n\t" PQ_VI("vwmacc.vx") "%[i1],%[x3],v22\n\t"
#define PQA16_PHASE(o) PQA16_LH4(o) PQA16_LOAD4 PQA16_MACC4

static NO_PRESCHED void pq8a16_pass2_v128(float *out, const unsigned char *b, size_t groups,
                                          const int16_t *xq, const float *xs, size_t rows) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS), vl4 = 4 * PACK_ROWS;
    const unsigned char *b1 = b + groups * PQ8_BLOCK;
    float acc[2 * PACK_ROWS] = {0};
    for (size_t g = 0; g < groups; g++, b += PQ8_BLOCK, b1 += PQ8_BLOCK) {
        const int16_t *xg = xq + g * PACK_GROUP;
        const unsigned char *p0 = b, *p1 = b1;
        long x0, x1, x2, x3;
        vint32m4_t i0, i1;
        __asm__ volatile(PQA16_LH4(0) PQA16_LOAD4
                         PQ_VI("vwmul.vx") "%[i0],v8,%[x0]\n\t"
                         PQ_VI("vwmul.vx") "%[i1],v16,%[x0]\n\t"
                         PQ_VI("vwmacc.vx") "%[i0],%[x1],v10\n\t"
                         PQ_VI("vwmacc.vx") "%[i1],%[x1],v18\n\t"
                         PQ_VI("vwmacc.vx") "%[i0],%[x2],v12\n\t"
                         PQ_VI("vwmacc.vx") "%[i1],%[x2],v20\n\t"
                         PQ_VI("vwmacc.vx") "%[i0],%[x3],v14\n\t"
                         PQ_VI("vwmacc.vx") "%[i1],%[x3],v22\n\t"
                         PQA16_PHASE(4) PQA16_PHASE(8) PQA16_PHASE(12) PQA16_PHASE(16)
                         PQA16_PHASE(20) PQA16_PHASE(24) PQA16_PHASE(28)
                         : [i0] "=&vr"(i0), [i1] "=&vr"(i1), [p0] "+&r"(p0), [p1] "+&r"(p1),
                           [x0] "=&r"(x0), [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3)
                         : [xq] "r"(xg), [vl] "r"(vl), [vl4] "r"(vl4)
                         : PQ_CLOBBERS);
        vfloat32m4_t a0 = __riscv_vle32_v_f32m4(acc, vl);
        a0 = scale_add(a0, __riscv_vfcvt_f_x_v_f32m4(i0, vl), b + offsetof(BlockQ8, scale),
                       xs[g], vl);
        __riscv_vse32_v_f32m4(acc, a0, vl);
        vfloat32m4_t a1 = __riscv_vle32_v_f32m4(acc + PACK_ROWS, vl);
        a1 = scale_add(a1, __riscv_vfcvt_f_x_v_f32m4(i1, vl), b1 + offsetof(BlockQ8, scale),
                       xs[g], vl);
        __riscv_vse32_v_f32m4(acc + PACK_ROWS, a1, vl);
    }
    __riscv_vse32_v_f32m4(out, __riscv_vle32_v_f32m4(acc, vl), vl);
    __riscv_vse32_v_f32m4(out + PACK_ROWS, __riscv_vle32_v_f32m4(acc + PACK_ROWS, vl), rows);
}

static NO_PRESCHED void pq8_a16_rvv(float *out, const Tensor *w, const int16_t *xq,
                                      const float *xs) {
    const size_t tile = w->groups * PQ8_BLOCK;
    size_t t = 0;
    if (__riscv_vsetvlmax_e8m1() == PACK_ROWS) /* the assembly's VLEN */
        for (; t + 2 <= w->tiles; t += 2) {
            const size_t left = w->rows - (t + 1) * PACK_ROWS;
            pq8a16_pass2_v128(out + t * PACK_ROWS, w->p + t * tile, w->groups, xq, xs,
                              left < PACK_ROWS ? left : PACK_ROWS);
        }
    for (; t < w->tiles; t++) {
        const size_t left = w->rows - t * PACK_ROWS;
        pq8a16_tile(out + t * PACK_ROWS, w->p + t * tile, w->groups, xq, xs,
                    left < PACK_ROWS ? left : PACK_ROWS);
    }
}

/* ---- int4 x int16 (the faithful path's second level, one tile: kernels.h) ---------------
 * refine_q4a16_ref's arithmetic, rows as lanes (vl = 16, as the packed kernels above). Per
 * group, four bytes columns (eight columns) at a time: the 16 bytes of each sign-extended
 * to int16 (a widening add of 0: XTheadVector has no vsext), its high nibble w >> 4 and
 * its low one (w << 12) >> 12 (arithmetic shifts at e16: the nibbles' two's complement),
 * times the columns' int16 activations by vwmacc.vx into two int32 sums, the low and the
 * high columns' (|16 x 8 x 32768| < 2^31), added at the group's end: the exact integer
 * sum q2 . xq, the reference's sum u xq - 8 sum xq. Then scale_add: (float)isum (exact),
 * times the bf16 scale, times xs[g], added, each its own rounding. All e8 work of four
 * byte columns, then the e16: two vtype changes per four. */
static NO_PRESCHED void refine_q4a16_rvv(float *val, const unsigned char *nib,
                                         const BlockQ8 *scales, size_t groups,
                                         const int16_t *xq, const float *xs) {
    const size_t vl = __riscv_vsetvl_e8m1(PACK_ROWS);
    vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    for (size_t g = 0; g < groups; g++, nib += PACK_GROUP / 2 * PACK_ROWS) {
        const int16_t *xg = xq + g * PACK_GROUP;
        vint32m4_t lo, hi; /* set by the first byte column's vwmul */
#define RQ4_WIDE(p)                                                                        \
    __riscv_vwadd_vx_i16m2(                                                                \
        __riscv_vle8_v_i8m1((const int8_t *)(const void *)(nib + (p) * PACK_ROWS), vl), 0, vl)
#define RQ4_MACC(w, p)                                                                     \
    do {                                                                                   \
        vint16m2_t l = __riscv_vsra_vx_i16m2(__riscv_vsll_vx_i16m2(w, 12, vl), 12, vl);    \
        vint16m2_t h = __riscv_vsra_vx_i16m2(w, 4, vl);                                    \
        if ((p) == 0) {                                                                    \
            lo = __riscv_vwmul_vx_i32m4(l, xg[0], vl);                                     \
            hi = __riscv_vwmul_vx_i32m4(h, xg[1], vl);                                     \
        } else {                                                                           \
            lo = __riscv_vwmacc_vx_i32m4(lo, xg[2 * (p)], l, vl);                          \
            hi = __riscv_vwmacc_vx_i32m4(hi, xg[2 * (p) + 1], h, vl);                      \
        }                                                                                  \
    } while (0)
#pragma GCC unroll 4
        for (size_t p = 0; p < PACK_GROUP / 2; p += 4) {
            vint16m2_t w0 = RQ4_WIDE(p), w1 = RQ4_WIDE(p + 1);
            vint16m2_t w2 = RQ4_WIDE(p + 2), w3 = RQ4_WIDE(p + 3);
            RQ4_MACC(w0, p);
            RQ4_MACC(w1, p + 1);
            RQ4_MACC(w2, p + 2);
            RQ4_MACC(w3, p + 3);
        }
#undef RQ4_WIDE
#undef RQ4_MACC
        acc = scale_add(acc, __riscv_vfcvt_f_x_v_f32m4(__riscv_vadd_vv_i32m4(lo, hi, vl), vl),
                        (const unsigned char *)(const void *)&scales[g] +
                            offsetof(BlockQ8, scale),
                        xs[g], vl);
    }
    __riscv_vse32_v_f32m4(val, acc, vl);
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
 * is softmax_fast_rvv (softmax_fast_ref's bits, as attention_f16_ref uses).
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

static NO_PRESCHED void softmax_fast_rvv(float *x, int size);

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
    softmax_fast_rvv(att, pos + 1);
    f16_values(out, att, value, value_stride, n, hs);
}

/* ---- attention over the fp32 KV cache ----------------------------------------------
 * attention_f32_ref's arithmetic (run.c's), lane by lane, as the binary16 kernels above:
 * the scores with positions as lanes (keys transposed), acc + q[i] * k over i ascending
 * from 0; the values with dimensions as lanes, acc + att[t] * v over t ascending from 0;
 * vfmul then vfadd, never fused (no vfmacc: kernels_rvv.c is compiled with contraction,
 * but gcc does not fuse the intrinsics; tests/test_rvv.py checks the disassembly); each
 * accumulation one vl from its first operation to its store, so no tail is read; the
 * division by sqrtf(head_size) a vector divide (correctly rounded, as the scalar one). The
 * softmax is ops.c's arithmetic with libm's expf (f32_softmax). LMUL 8: 32 lanes at VLEN 128, 3 x 8 registers, no
 * conversion, so no spill; fewer strips, fewer instructions. The inner loops go four steps
 * at a time (the same chain, in order: only the loop's counting is shared). Any value
 * (inf, NaN, any q) takes the reference's operations: no fallback. */
#define F32_STEP(acc, p, w, vl) \
    acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(p, vl), w, vl), vl)

/* acc + w[j] x (the vl floats at p + j x stride), j from 0 to m - 1 in order */
static ALWAYS_INLINE vfloat32m8_t f32_chain(vfloat32m8_t acc, const float *p, size_t stride,
                                            const float *w, size_t m, size_t vl) {
    size_t j = 0;
    for (; j + 4 <= m; j += 4, p += 4 * stride) {
        F32_STEP(acc, p, w[j], vl);
        F32_STEP(acc, p + stride, w[j + 1], vl);
        F32_STEP(acc, p + 2 * stride, w[j + 2], vl);
        F32_STEP(acc, p + 3 * stride, w[j + 3], vl);
    }
    for (; j < m; j++, p += stride) F32_STEP(acc, p, w[j], vl);
    return acc;
}

/* att[t] for t < n: strips of up to VLMAX(e32m8) positions, head_size dimensions each. */
static NO_PRESCHED void f32_scores(float *att, const float *q, const float *key,
                                   size_t key_stride, size_t n, size_t head_size) {
    const float root = sqrtf((float)head_size);
    for (size_t t = 0, vl; t < n; t += vl) {
        vl = __riscv_vsetvl_e32m8(n - t);
        vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        acc = f32_chain(acc, key + t, key_stride, q, head_size, vl);
        __riscv_vse32_v_f32m8(att + t, __riscv_vfdiv_vf_f32m8(acc, root, vl), vl);
    }
}

/* out[i] for i < head_size: strips of up to VLMAX(e32m8) dimensions, n positions each. */
static NO_PRESCHED void f32_values(float *out, const float *att, const float *value,
                                   size_t value_stride, size_t n, size_t head_size) {
    for (size_t i = 0, vl; i < head_size; i += vl) {
        vl = __riscv_vsetvl_e32m8(head_size - i);
        vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        acc = f32_chain(acc, value + i, value_stride, att, n, vl);
        __riscv_vse32_v_f32m8(out + i, acc, vl);
    }
}

/* ops.c's softmax (run.c's) over x[0..n-1]: the max by vector reductions (vfredmax per
 * strip into element 0, which starts as x[0]: exact, and whatever NaN or signed zero it
 * meets, every output is the same: NaN anywhere makes run.c's sum, so every output, NaN;
 * x - (+0) and x - (-0) have the same exp), expf and the sum scalar in order, the division
 * a vector divide (correctly rounded, as the scalar one). */
static NO_PRESCHED void f32_softmax(float *x, size_t n) {
    vfloat32m1_t m = __riscv_vle32_v_f32m1(x, 1);
    for (size_t t = 0, vl; t < n; t += vl) {
        vl = __riscv_vsetvl_e32m8(n - t);
        m = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vle32_v_f32m8(x + t, vl), m, vl);
    }
    float max_val, sum = 0.0f;
    __riscv_vse32_v_f32m1(&max_val, m, 1);
    for (size_t t = 0; t < n; t++) {
        x[t] = expf(x[t] - max_val);
        sum += x[t];
    }
    for (size_t t = 0, vl; t < n; t += vl) {
        vl = __riscv_vsetvl_e32m8(n - t);
        __riscv_vse32_v_f32m8(x + t, __riscv_vfdiv_vf_f32m8(__riscv_vle32_v_f32m8(x + t, vl), sum, vl), vl);
    }
}

static void attention_f32_rvv(float *out, float *att, const float *q, const float *key,
                              size_t key_stride, const float *value, size_t value_stride,
                              int pos, int head_size) {
    const size_t n = (size_t)pos + 1, hs = (size_t)head_size;
    f32_scores(att, q, key, key_stride, n, hs);
    f32_softmax(att, n);
    f32_values(out, att, value, value_stride, n, hs);
}

/* ---- softmax_fast, exp_fast (kernels.h, exp_fast.h) ----------------------------------
 * exp_fast_core's operations lane by lane, each its own rounding (vfmul then vfadd, never
 * fused), then the same special cases: the same bits as the scalar code. The softmax keeps
 * SOFTMAX_LANES lanes whatever VLEN (vl = 16 at e32m4), and adds the last n % 16 values
 * to the stored lanes in scalar code, as softmax_fast_ref does. */
static ALWAYS_INLINE vfloat32m4_t exp_fast_lanes(vfloat32m4_t x, size_t vl) {
    const float magic = EXP_FAST_MAGIC;
    int32_t magic_bits;
    memcpy(&magic_bits, &magic, 4);
    vfloat32m4_t c = __riscv_vfmin_vf_f32m4(__riscv_vfmax_vf_f32m4(x, EXP_FAST_MIN, vl),
                                            EXP_FAST_MAX, vl);
    vfloat32m4_t t = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vf_f32m4(c, EXP_FAST_LOG2E, vl),
                                            EXP_FAST_MAGIC, vl);
    vfloat32m4_t n = __riscv_vfsub_vf_f32m4(t, EXP_FAST_MAGIC, vl);
    vfloat32m4_t r = __riscv_vfsub_vv_f32m4(c, __riscv_vfmul_vf_f32m4(n, EXP_FAST_C1, vl), vl);
    r = __riscv_vfsub_vv_f32m4(r, __riscv_vfmul_vf_f32m4(n, EXP_FAST_C2, vl), vl);
    vfloat32m4_t p = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vf_f32m4(r, EXP_FAST_P0, vl),
                                            EXP_FAST_P1, vl);
    p = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vv_f32m4(p, r, vl), EXP_FAST_P2, vl);
    p = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vv_f32m4(p, r, vl), EXP_FAST_P3, vl);
    p = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vv_f32m4(p, r, vl), EXP_FAST_P4, vl);
    p = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vv_f32m4(p, r, vl), EXP_FAST_P5, vl);
    vfloat32m4_t y = __riscv_vfmul_vv_f32m4(p, __riscv_vfmul_vv_f32m4(r, r, vl), vl);
    y = __riscv_vfadd_vf_f32m4(__riscv_vfadd_vv_f32m4(y, r, vl), 1.0f, vl);
    vint32m4_t e = __riscv_vsll_vx_i32m4(
        __riscv_vsub_vx_i32m4(__riscv_vreinterpret_v_f32m4_i32m4(t), magic_bits, vl), 23, vl);
    y = __riscv_vreinterpret_v_i32m4_f32m4(
        __riscv_vadd_vv_i32m4(__riscv_vreinterpret_v_f32m4_i32m4(y), e, vl));
    y = __riscv_vfmerge_vfm_f32m4(y, 0.0f, __riscv_vmflt_vf_f32m4_b8(x, EXP_FAST_MIN, vl), vl);
    y = __riscv_vfmerge_vfm_f32m4(y, INFINITY, __riscv_vmfgt_vf_f32m4_b8(x, EXP_FAST_MAX, vl),
                                  vl);
    return __riscv_vmerge_vvm_f32m4(y, x, __riscv_vmfne_vv_f32m4_b8(x, x, vl), vl);
}

static NO_PRESCHED void exp_fast_rvv(float *y, const float *x, size_t n) {
    for (size_t i = 0, vl; i < n; i += vl) {
        vl = __riscv_vsetvl_e32m4(n - i);
        __riscv_vse32_v_f32m4(y + i, exp_fast_lanes(__riscv_vle32_v_f32m4(x + i, vl), vl), vl);
    }
}

static NO_PRESCHED void softmax_fast_rvv(float *x, int size) {
    if (size <= 0) return;
    const size_t n = (size_t)size, vl = __riscv_vsetvl_e32m4(SOFTMAX_LANES);
    const size_t full = n - n % SOFTMAX_LANES, rest = n - full;
    float lanes[SOFTMAX_LANES];
    /* the max, NaN ignored (vfmax returns the other operand) */
    vfloat32m4_t m = __riscv_vfmv_v_f_f32m4(-INFINITY, vl);
    for (size_t i = 0; i < full; i += SOFTMAX_LANES)
        m = __riscv_vfmax_vv_f32m4(m, __riscv_vle32_v_f32m4(x + i, vl), vl);
    __riscv_vse32_v_f32m4(lanes, m, vl);
    float max = -INFINITY;
    for (size_t k = 0; k < SOFTMAX_LANES; k++)
        if (lanes[k] > max) max = lanes[k];
    for (size_t i = full; i < n; i++)
        if (x[i] > max) max = x[i];
    /* the exponentials and their lane sums */
    vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    for (size_t i = 0; i < full; i += SOFTMAX_LANES) {
        vfloat32m4_t e = exp_fast_lanes(
            __riscv_vfsub_vf_f32m4(__riscv_vle32_v_f32m4(x + i, vl), max, vl), vl);
        __riscv_vse32_v_f32m4(x + i, e, vl);
        acc = __riscv_vfadd_vv_f32m4(acc, e, vl);
    }
    __riscv_vse32_v_f32m4(lanes, acc, vl);
    if (rest) {
        vfloat32m4_t e = exp_fast_lanes(
            __riscv_vfsub_vf_f32m4(__riscv_vle32_v_f32m4(x + full, rest), max, rest), rest);
        __riscv_vse32_v_f32m4(x + full, e, rest);
        for (size_t k = 0; k < rest; k++) lanes[k] += x[full + k];
    }
    const float inv = 1.0f / softmax_lanes_sum(lanes);
    for (size_t i = 0, v; i < n; i += v) {
        v = __riscv_vsetvl_e32m4(n - i);
        __riscv_vse32_v_f32m4(x + i, __riscv_vfmul_vf_f32m4(__riscv_vle32_v_f32m4(x + i, v), inv, v),
                              v);
    }
}

/* ---- swiglu_fast (kernels.h) -----------------------------------------------------------
 * swiglu_fast_ref's operations lane by lane, each its own rounding: exp_fast_lanes of -a
 * (vfneg: exact), + 1, 1 / that (vfrdiv: correctly rounded, as the scalar division), * a,
 * * b. e32m4 strips, the last one short (no tail lane is read). */
static NO_PRESCHED void swiglu_fast_rvv(float *hb, const float *hb2, size_t n) {
    for (size_t i = 0, vl; i < n; i += vl) {
        vl = __riscv_vsetvl_e32m4(n - i);
        vfloat32m4_t a = __riscv_vle32_v_f32m4(hb + i, vl);
        vfloat32m4_t e = exp_fast_lanes(__riscv_vfneg_v_f32m4(a, vl), vl);
        vfloat32m4_t s = __riscv_vfrdiv_vf_f32m4(__riscv_vfadd_vf_f32m4(e, 1.0f, vl), 1.0f, vl);
        vfloat32m4_t v = __riscv_vfmul_vv_f32m4(a, s, vl);
        v = __riscv_vfmul_vv_f32m4(v, __riscv_vle32_v_f32m4(hb2 + i, vl), vl);
        __riscv_vse32_v_f32m4(hb + i, v, vl);
    }
}

/* ---- quantize_q80 (kernels.h) ---------------------------------------------------------
 * quantize_q80_ref's bits (kernels_ref.c), one group at a time, e32m4 chunks:
 *   max|x|: vfabs, lanes that are not <= FLT_MAX (NaN, inf) made inf, one vfredmax per
 *     chunk (no NaN ever reaches the reduction: its NaN rules differ between RVV 1.0 and
 *     XTheadVector); the result leaves through a store (no th.vfmv.f.s), then the scalar
 *     code's own scale (inf -> NaN, / 127.0f) and its zero/NaN test;
 *   q: x / scale by vfdiv (correctly rounded, as the scalar division), clamped to +-127
 *     first (the same as clamping roundf's result: round is monotonic and +-127 are
 *     integers); roundf of |v| <= 127 as r = convert to integer and back (nearest, in the
 *     default rounding mode: frm is never changed), plus 1 where |v| - r >= 0.5 (exact:
 *     both within 2^7, and that difference is representable), the sign copied back from
 *     v (vfsgnj); then to int16 (vfncvt, exact: an integer) and int8 (vncvt).
 * Both vector ISAs have these converts (th.vfcvt.x.f.v, th.vfncvt.x.f.v, th.vnsrl.vx);
 * neither needs a static rounding mode, which XTheadVector lacks. */
static NO_PRESCHED void quantize_q80_rvv(int8_t *q, float *s, const float *x, size_t n,
                                         size_t gs) {
    const size_t vl1 = __riscv_vsetvlmax_e32m1();
    for (size_t g = 0, start = 0; start < n; g++, start += gs) {
        const size_t len = n - start < gs ? n - start : gs;
        const float *xg = x + start;
        int8_t *qg = q + start;
        vfloat32m1_t m = __riscv_vfmv_v_f_f32m1(0.0f, vl1);
        for (size_t i = 0, vl; i < len; i += vl) {
            vl = __riscv_vsetvl_e32m4(len - i);
            vfloat32m4_t a = __riscv_vfabs_v_f32m4(__riscv_vle32_v_f32m4(xg + i, vl), vl);
            vbool8_t bad = __riscv_vmnot_m_b8(__riscv_vmfle_vf_f32m4_b8(a, 0x1.fffffep127f, vl),
                                              vl);
            a = __riscv_vfmerge_vfm_f32m4(a, INFINITY, bad, vl);
            m = __riscv_vfredmax_vs_f32m4_f32m1(a, m, vl);
        }
        float mx;
        __riscv_vse32_v_f32m1(&mx, m, 1);
        const float scale = (mx <= 0x1.fffffep127f ? mx : NAN) / 127.0f;
        s[g] = scale;
        if (scale == 0.0f || isnan(scale)) { /* runq.c: an all-zero group is 0/0 */
            for (size_t i = 0; i < len; i++) qg[i] = 0;
            continue;
        }
        for (size_t i = 0, vl; i < len; i += vl) {
            vl = __riscv_vsetvl_e32m4(len - i);
            vfloat32m4_t v = __riscv_vfdiv_vf_f32m4(__riscv_vle32_v_f32m4(xg + i, vl), scale, vl);
            v = __riscv_vfmin_vf_f32m4(__riscv_vfmax_vf_f32m4(v, -127.0f, vl), 127.0f, vl);
            vfloat32m4_t a = __riscv_vfabs_v_f32m4(v, vl);
            vfloat32m4_t r = __riscv_vfcvt_f_x_v_f32m4(__riscv_vfcvt_x_f_v_i32m4(a, vl), vl);
            vbool8_t up = __riscv_vmfge_vf_f32m4_b8(__riscv_vfsub_vv_f32m4(a, r, vl), 0.5f, vl);
            r = __riscv_vmerge_vvm_f32m4(r, __riscv_vfadd_vf_f32m4(r, 1.0f, vl), up, vl);
            r = __riscv_vfsgnj_vv_f32m4(r, v, vl);
            vint16m2_t h = __riscv_vfncvt_x_f_w_i16m2(r, vl);
            __riscv_vse8_v_i8m1(qg + i, __riscv_vncvt_x_x_w_i8m1(h, vl), vl);
        }
    }
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
    .attention_f32 = attention_f32_rvv,
    .softmax_fast = softmax_fast_rvv,
    .exp_fast = exp_fast_rvv,
    .swiglu_fast = swiglu_fast_rvv,
    .quantize_q80 = quantize_q80_rvv,
    .refine_q4a16 = refine_q4a16_rvv,
};
