/* The generic kernels: every entry's reference, compiled without FMA contraction (run.c's
 * and runq.c's arithmetic, the same bits on every build), and the quantizers. */
#include <float.h>
#include <math.h>

#include "exp_fast.h"
#include "kernels.h"
#include "ops.h"

/* ---- fp32 (llama2.c v0/v1) ------------------------------------------------------------ */

/* out (rows) = W (rows x cols) . x, summed left to right in fp32 exactly as run.c. */
static void f32_ref(float *out, const Tensor *w, const Activation *x) {
    const size_t n = w->cols;
    const float *xf = x->f;
    for (size_t i = 0; i < w->rows; i++) {
        const float *row = w->f + i * n;
        float val = 0.0f;
        for (size_t j = 0; j < n; j++) val += row[j] * xf[j];
        out[i] = val;
    }
}

static void f32_row(float *out, const Tensor *w, size_t row) {
    const float *r = w->f + row * w->cols;
    for (size_t j = 0; j < w->cols; j++) out[j] = r[j];
}

/* ---- Q8_0 (llama2.c v2) --------------------------------------------------------------- */

/* max |x[i]| over len values: a quantization group's range */
/* The largest |x[i]|, or NaN when the group holds a NaN or an infinity: the loaders
 * reject non-finite weights, but finite extremes can still overflow an activation, and a
 * NaN -> integer conversion is undefined behaviour. A NaN scale with zero integers
 * carries the NaN on, as the fp32 arithmetic would. */
static float abs_max(const float *x, size_t len) {
    float m = 0.0f;
    for (size_t i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        if (!(a <= FLT_MAX)) return NAN;
        if (a > m) m = a;
    }
    return m;
}

/* roundf(v) within [-lim, lim]: |x / scale| may exceed the limit only where the scale is
 * subnormal (and imprecise); every normal scale gives the same bits as runq.c. */
static float clamp_round(float v, float lim) {
    float r = roundf(v);
    return r > lim ? lim : r < -lim ? -lim : r;
}

static void quantize_q80_ref(int8_t *q, float *s, const float *x, size_t n, size_t gs) {
    for (size_t g = 0, start = 0; start < n; g++, start += gs) {
        size_t len = n - start < gs ? n - start : gs;
        float scale = abs_max(x + start, len) / 127.0f;
        s[g] = scale;
        int zero = scale == 0.0f || isnan(scale); /* runq.c: an all-zero group is 0/0 */
        for (size_t i = 0; i < len; i++)
            q[start + i] = zero ? 0 : (int8_t)clamp_round(x[start + i] / scale, 127.0f);
    }
}

/* Q8_0 weights of any shape: an integer sum over each run of values that share a weight
 * scale and an activation scale, scaled and added in order (runq.c's arithmetic where
 * rows are whole groups; correct where rows straddle groups). */
static void q80_ref(float *out, const Tensor *w, const Activation *x) {
    size_t n = w->cols, gs = w->group_size, xgs = x->group_size;
    for (size_t i = 0; i < w->rows; i++) {
        size_t base = i * n;
        float val = 0.0f;
        for (size_t j = 0; j < n;) {
            size_t wg = (base + j) / gs, xg = j / xgs;
            size_t end = (wg + 1) * gs - base;
            if ((xg + 1) * xgs < end) end = (xg + 1) * xgs;
            if (n < end) end = n;
            int32_t ival = 0;
            for (size_t k = j; k < end; k++) ival += (int32_t)x->q[k] * (int32_t)w->q[base + k];
            val += (float)ival * scale_at(w->s, wg) * x->s[xg];
            j = end;
        }
        out[i] = val;
    }
}

/* The same when every row is whole groups (cols % group_size == 0, equal group sizes):
 * runq.c's loop, vectorisable integer sums; anything else takes q80_ref. */
static void q80_fast(float *out, const Tensor *w, const Activation *x) {
    size_t n = w->cols, gs = w->group_size, groups = n / gs;
    if (n % gs != 0 || x->group_size != gs) {
        q80_ref(out, w, x);
        return;
    }
    for (size_t i = 0; i < w->rows; i++) {
        const int8_t *row = w->q + i * n;
        float val = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            int32_t ival = 0;
            const int8_t *wq = row + g * gs, *xq = x->q + g * gs;
            for (size_t k = 0; k < gs; k++) ival += (int32_t)xq[k] * (int32_t)wq[k];
            val += (float)ival * scale_at(w->s, i * groups + g) * x->s[g];
        }
        out[i] = val;
    }
}

static void q80_row(float *out, const Tensor *w, size_t row) {
    size_t base = row * w->cols;
    for (size_t j = 0; j < w->cols; j++)
        out[j] = (float)w->q[base + j] * scale_at(w->s, (base + j) / w->group_size);
}

/* ---- packed fp32 ---------------------------------------------------------------------- */

/* Each row summed column by column, unfused: run.c's order, bit for bit. */
static void pf32_ref(float *out, const Tensor *w, const Activation *x) {
    packed_f32_columns(out, w, x->f);
}

static void pf32_row(float *out, const Tensor *w, size_t row) {
    const float *b = (const float *)(const void *)w->p + row / PACK_ROWS * w->cols * PACK_ROWS;
    for (size_t j = 0; j < w->cols; j++) out[j] = b[j * PACK_ROWS + row % PACK_ROWS];
}

/* ---- packed q8/q4 --------------------------------------------------------------------- */

/* 4-bit two's complement nibbles of a byte, as ints. */
static inline int nibble_lo(unsigned v) { return (int)(v & 15u) - (int)((v & 8u) << 1); }
static inline int nibble_hi(unsigned v) { return (int)(v >> 4) - (int)((v & 0x80u) >> 3); }

/* Column c of row r in a q8 or q4 block. */
static inline int q8_at(const BlockQ8 *b, size_t c, size_t r) { return b->q[c][r]; }
static inline int q4_at(const BlockQ4 *b, size_t c, size_t r) {
    return c % 2 ? nibble_hi(b->q[c / 2][r]) : nibble_lo(b->q[c / 2][r]);
}

/* Per row and group an exact integer sum, then val += ((float)isum * s_w) * s_x. Two
 * columns' products at a time fit int16 (|sum| <= 2 * 127 * 127), which lets compilers
 * work in 16-bit lanes, as the RVV kernel does. */
#define PACKED_Q_REF(name, Block, at)                                                      \
    static void name(float *out, const Tensor *w, const Activation *x) {                   \
        const Block *blocks = (const Block *)(const void *)w->p;                           \
        for (size_t t = 0; t < w->tiles; t++) {                                            \
            float acc[PACK_ROWS] = {0};                                                    \
            for (size_t g = 0; g < w->groups; g++) {                                       \
                const Block *b = &blocks[t * w->groups + g];                               \
                const int8_t *xq = x->q + g * PACK_GROUP;                                  \
                int32_t isum[PACK_ROWS] = {0};                                             \
                for (size_t j = 0; j < PACK_GROUP; j += 2)                                 \
                    for (size_t r = 0; r < PACK_ROWS; r++)                                 \
                        isum[r] += (int16_t)(at(b, j, r) * xq[j] + at(b, j + 1, r) * xq[j + 1]); \
                for (size_t r = 0; r < PACK_ROWS; r++)                                     \
                    acc[r] += ((float)isum[r] * bf16_to_float(b->scale[r])) * x->s[g];     \
            }                                                                              \
            for (size_t r = 0; r < tile_rows(w, t); r++) out[t * PACK_ROWS + r] = acc[r];  \
        }                                                                                  \
    }
PACKED_Q_REF(pq8_ref, BlockQ8, q8_at)
PACKED_Q_REF(pq4_ref, BlockQ4, q4_at)
#undef PACKED_Q_REF

#define PACKED_Q_ROW(name, Block, at)                                                      \
    static void name(float *out, const Tensor *w, size_t row) {                            \
        const Block *b = (const Block *)(const void *)w->p + row / PACK_ROWS * w->groups;  \
        const size_t r = row % PACK_ROWS;                                                  \
        for (size_t j = 0; j < w->cols; j++)                                               \
            out[j] = (float)at(&b[j / PACK_GROUP], j % PACK_GROUP, r) *                    \
                     bf16_to_float(b[j / PACK_GROUP].scale[r]);                            \
    }
PACKED_Q_ROW(pq8_row, BlockQ8, q8_at)
PACKED_Q_ROW(pq4_row, BlockQ4, q4_at)
#undef PACKED_Q_ROW

/* ---- the faithful path's int8 x int16 classifier -------------------------------------- */

void quantize_a16(int16_t *q, float *s, const float *x, size_t n, size_t gs) {
    for (size_t g = 0, start = 0; start < n; g++, start += gs) {
        size_t len = n - start < gs ? n - start : gs;
        float scale = abs_max(x + start, len) / 32767.0f;
        s[g] = scale;
        /* |x / scale| <= 32767 * (1 + 2^-23) rounds to at most 32767 */
        int zero = scale == 0.0f || isnan(scale);
        for (size_t i = 0; i < len; i++)
            q[start + i] = zero ? 0 : (int16_t)clamp_round(x[start + i] / scale, 32767.0f);
    }
}

static void pq8_a16_ref(float *out, const Tensor *w, const int16_t *xq, const float *xs) {
    const BlockQ8 *blocks = (const BlockQ8 *)(const void *)w->p;
    for (size_t t = 0; t < w->tiles; t++) {
        float acc[PACK_ROWS] = {0};
        for (size_t g = 0; g < w->groups; g++) {
            const BlockQ8 *b = &blocks[t * w->groups + g];
            const int16_t *xg = xq + g * PACK_GROUP;
            int32_t isum[PACK_ROWS] = {0}; /* |sum| <= 32 * 127 * 32767 < 2^31 */
            for (size_t j = 0; j < PACK_GROUP; j++)
                for (size_t r = 0; r < PACK_ROWS; r++) isum[r] += (int32_t)b->q[j][r] * xg[j];
            for (size_t r = 0; r < PACK_ROWS; r++)
                acc[r] += ((float)isum[r] * bf16_to_float(b->scale[r])) * xs[g];
        }
        for (size_t r = 0; r < tile_rows(w, t); r++) out[t * PACK_ROWS + r] = acc[r];
    }
}

/* The faithful path's int4 second level, one tile (kernels.h): q2 = u - 8 with u = the
 * nibble ^ 8 in 0..15, so sum q2 xq = sum u xq - 8 sum xq, exact in int32 (|u| <= 15,
 * |xq| <= 32767, 32 terms); the result is below 2^24, so (float)isum is exact too. */
static void refine_q4a16_ref(float *val, const unsigned char *nib, const BlockQ8 *scales,
                             size_t groups, const int16_t *xq, const float *xs) {
    const size_t half = PACK_GROUP / 2;
    for (size_t r = 0; r < PACK_ROWS; r++) val[r] = 0.0f;
    for (size_t g = 0; g < groups; g++, nib += half * PACK_ROWS) {
        const int16_t *xg = xq + g * PACK_GROUP;
        int32_t isum[PACK_ROWS] = {0}, xsum = 0;
        for (size_t j = 0; j < PACK_GROUP; j++) xsum += xg[j];
        for (size_t p = 0; p < half; p++) {
            const int32_t x0 = xg[2 * p], x1 = xg[2 * p + 1];
            for (size_t r = 0; r < PACK_ROWS; r++) {
                unsigned u = nib[p * PACK_ROWS + r] ^ 0x88u;
                isum[r] += (int32_t)(u & 15u) * x0 + (int32_t)(u >> 4) * x1;
            }
        }
        for (size_t r = 0; r < PACK_ROWS; r++)
            val[r] += ((float)(isum[r] - 8 * xsum) * bf16_to_float(scales[g].scale[r])) * xs[g];
    }
}

/* ---- attention over the binary16 KV cache --------------------------------------------- */

static void softmax_fast_ref(float *x, int n);

/* The softmax is softmax_fast's (the packed q8/q4 paths only: their stories are not
 * run.c's), as attention_f16_rvv's. */
static void attention_f16_ref(float *out, float *att, const float *q, const uint16_t *key,
                              size_t key_stride, const uint16_t *value, size_t value_stride,
                              int pos, int head_size) {
    for (int t = 0; t <= pos; t++) {
        float score = 0.0f;
        for (int i = 0; i < head_size; i++)
            score += q[i] * half_to_float(key[(size_t)i * key_stride + (size_t)t]);
        score /= sqrtf((float)head_size);
        att[t] = score;
    }
    softmax_fast_ref(att, pos + 1);
    for (int i = 0; i < head_size; i++) out[i] = 0.0f;
    for (int t = 0; t <= pos; t++) {
        const uint16_t *v = value + (size_t)t * value_stride;
        float a = att[t];
        for (int i = 0; i < head_size; i++) out[i] += a * half_to_float(v[i]);
    }
}

/* ---- attention over the fp32 KV cache ------------------------------------------------
 * run.c's attention: score t = ((0 + q[0] k[0][t]) + q[1] k[1][t]) + ... over the head's
 * dimensions in order, each product and sum rounded (no FMA: this file is compiled without
 * contraction), divided by sqrtf(head_size); run.c's softmax (ops.c); out[i] = ((0 +
 * att[0] v[0][i]) + att[1] v[1][i]) + ... over positions in order. The scores are computed
 * dimension by dimension, every position's chain advanced one step at a time: the same
 * chains, contiguous keys (the compiler may vectorise both loops: lanes never mix). */
static void attention_f32_ref(float *out, float *att, const float *q, const float *key,
                              size_t key_stride, const float *value, size_t value_stride,
                              int pos, int head_size) {
    const size_t n = (size_t)pos + 1, hs = (size_t)head_size;
    for (size_t t = 0; t < n; t++) att[t] = 0.0f;
    for (size_t i = 0; i < hs; i++) {
        const float *k = key + i * key_stride, qi = q[i];
        for (size_t t = 0; t < n; t++) att[t] += qi * k[t];
    }
    const float root = sqrtf((float)head_size);
    for (size_t t = 0; t < n; t++) att[t] /= root;
    softmax(att, pos + 1);
    for (size_t i = 0; i < hs; i++) out[i] = 0.0f;
    for (size_t t = 0; t < n; t++) {
        const float *v = value + t * value_stride, a = att[t];
        for (size_t i = 0; i < hs; i++) out[i] += a * v[i];
    }
}

/* Q8_0's fast kernel is here, not in kernels_fast.c: its per-group scaling must not fuse. */
/* ---- softmax_fast, exp_fast (kernels.h, exp_fast.h) ---------------------------------- */

static void exp_fast_ref(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = exp_fast(x[i]);
}

/* The max ignores NaN (as vfmax does): NaN logits stay NaN probabilities. */
static void softmax_fast_ref(float *x, int n) {
    if (n <= 0) return;
    const size_t N = (size_t)n;
    float max = -INFINITY;
    for (size_t i = 0; i < N; i++)
        if (x[i] > max) max = x[i];
    float lanes[SOFTMAX_LANES] = {0};
    for (size_t i = 0; i < N; i++) {
        x[i] = exp_fast(x[i] - max);
        lanes[i % SOFTMAX_LANES] += x[i];
    }
    const float inv = 1.0f / softmax_lanes_sum(lanes);
    for (size_t i = 0; i < N; i++) x[i] *= inv;
}

/* ---- swiglu_fast (kernels.h) ----------------------------------------------------------- */
static void swiglu_fast_ref(float *hb, const float *hb2, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float val = hb[i];
        val *= 1.0f / (1.0f + exp_fast(-val));
        hb[i] = val * hb2[i];
    }
}

const KernelSet kernels_ref = {
    .name = "ref",
    .types =
        {
            [TENSOR_F32] = {.matvec_ref = f32_ref, .row = f32_row},
            [TENSOR_Q80] = {.matvec_ref = q80_ref, .matvec_fast = q80_fast, .row = q80_row},
            [TENSOR_PF32] = {.matvec_ref = pf32_ref, .row = pf32_row},
            [TENSOR_PQ8] = {.matvec_ref = pq8_ref, .matvec_a16 = pq8_a16_ref, .row = pq8_row},
            [TENSOR_PQ4] = {.matvec_ref = pq4_ref, .row = pq4_row},
        },
    .attention_f16 = attention_f16_ref,
    .attention_f32 = attention_f32_ref,
    .softmax_fast = softmax_fast_ref,
    .exp_fast = exp_fast_ref,
    .swiglu_fast = swiglu_fast_ref,
    .quantize_q80 = quantize_q80_ref,
    .refine_q4a16 = refine_q4a16_ref,
};
