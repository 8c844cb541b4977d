#include <math.h>

#include "kernels.h"
#include "ops.h"

void matvec_f32_ref(float *out, const float *w, const float *x, size_t n, size_t d) {
    for (size_t i = 0; i < d; i++) {
        const float *row = w + i * n;
        float val = 0.0f;
        for (size_t j = 0; j < n; j++) val += row[j] * x[j];
        out[i] = val;
    }
}

/* max |x[i]| over len values: a quantization group's range */
static float abs_max(const float *x, size_t len) {
    float m = 0.0f;
    for (size_t i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
    }
    return m;
}

void quantize_q80(int8_t *q, float *s, const float *x, size_t n, size_t gs) {
    for (size_t g = 0, start = 0; start < n; g++, start += gs) {
        size_t len = n - start < gs ? n - start : gs;
        float scale = abs_max(x + start, len) / 127.0f;
        s[g] = scale;
        for (size_t i = 0; i < len; i++)  /* an all-zero group stays zero (runq.c: 0/0) */
            q[start + i] = scale == 0.0f ? 0 : (int8_t)roundf(x[start + i] / scale);
    }
}

void matvec_q80_ref(float *out, const Tensor *w, const Activation *x) {
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

void matvec_q80_aligned(float *out, const Tensor *w, const Activation *x) {
    size_t n = w->cols, gs = w->group_size, groups = n / gs;
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

void dequantize_row(float *out, const Tensor *w, size_t row) {
    size_t base = row * w->cols;
    for (size_t j = 0; j < w->cols; j++)
        out[j] = (float)w->q[base + j] * scale_at(w->s, (base + j) / w->group_size);
}

/* ---- packed row tiles ---------------------------------------------------------------- */

/* This file is compiled without FMA contraction: run.c's arithmetic. */
void matvec_packed_f32_ref(float *out, const Tensor *w, const float *x) {
    packed_f32_columns(out, w, x);
}

/* 4-bit two's complement nibbles of a byte, as ints. */
static inline int nibble_lo(unsigned v) { return (int)(v & 15u) - (int)((v & 8u) << 1); }
static inline int nibble_hi(unsigned v) { return (int)(v >> 4) - (int)((v & 0x80u) >> 3); }

void matvec_packed_q_ref(float *out, const Tensor *w, const Activation *x) {
    const size_t R = PACK_ROWS, G = PACK_GROUP, block = packed_block_bytes(w->type);
    const int q4 = w->type == TENSOR_PQ4;
    for (size_t t = 0; t < w->tiles; t++) {
        float acc[PACK_ROWS] = {0};
        for (size_t g = 0; g < w->groups; g++) {
            const unsigned char *b = w->p + (t * w->groups + g) * block;
            const int8_t *xq = x->q + g * G;
            int32_t isum[PACK_ROWS] = {0};
            /* two columns' products at a time fit int16 (|sum| <= 2 * 127 * 127), which
             * lets compilers work in 16-bit lanes, as the RVV kernel does */
            for (size_t j = 0; j < G; j += 2)
                for (size_t r = 0; r < R; r++) {
                    int a, c;
                    if (q4) {
                        unsigned v = b[j / 2 * R + r];
                        a = nibble_lo(v), c = nibble_hi(v);
                    } else {
                        a = (int8_t)b[j * R + r], c = (int8_t)b[(j + 1) * R + r];
                    }
                    isum[r] += (int16_t)(a * xq[j] + c * xq[j + 1]);
                }
            const unsigned char *s = b + block - 2 * R;
            for (size_t r = 0; r < R; r++) acc[r] += ((float)isum[r] * bf16_at(s, r)) * x->s[g];
        }
        for (size_t r = 0; r < tile_rows(w, t); r++) out[t * PACK_ROWS + r] = acc[r];
    }
}

void dequantize_packed_row(float *out, const Tensor *w, size_t row) {
    const size_t R = PACK_ROWS, G = PACK_GROUP, t = row / R, r = row % R;
    if (w->type == TENSOR_PF32) {
        const float *b = (const float *)(const void *)w->p + t * w->cols * R;
        for (size_t j = 0; j < w->cols; j++) out[j] = b[j * R + r];
        return;
    }
    const size_t block = packed_block_bytes(w->type);
    for (size_t j = 0; j < w->cols; j++) {
        const unsigned char *b = w->p + (t * w->groups + j / G) * block;
        size_t c = j % G;
        int q = w->type == TENSOR_PQ4
                    ? (c % 2 ? nibble_hi(b[c / 2 * R + r]) : nibble_lo(b[c / 2 * R + r]))
                    : (int8_t)b[c * R + r];
        out[j] = (float)q * bf16_at(b + block - 2 * R, r);
    }
}

/* ---- the faithful path's int8 x int16 classifier ------------------------------------ */

void quantize_a16(int16_t *q, float *s, const float *x, size_t n, size_t gs) {
    for (size_t g = 0, start = 0; start < n; g++, start += gs) {
        size_t len = n - start < gs ? n - start : gs;
        float scale = abs_max(x + start, len) / 32767.0f;
        s[g] = scale;
        /* |x / scale| <= 32767 * (1 + 2^-23) rounds to at most 32767 */
        for (size_t i = 0; i < len; i++)
            q[start + i] = scale == 0.0f ? 0 : (int16_t)roundf(x[start + i] / scale);
    }
}

void matvec_packed_q8a16_ref(float *out, const Tensor *w, const int16_t *xq, const float *xs) {
    const size_t R = PACK_ROWS, G = PACK_GROUP, block = packed_block_bytes(TENSOR_PQ8);
    for (size_t t = 0; t < w->tiles; t++) {
        float acc[PACK_ROWS] = {0};
        for (size_t g = 0; g < w->groups; g++) {
            const unsigned char *b = w->p + (t * w->groups + g) * block;
            const int16_t *xg = xq + g * G;
            int32_t isum[PACK_ROWS] = {0}; /* |sum| <= 32 * 127 * 32767 < 2^31 */
            for (size_t j = 0; j < G; j++)
                for (size_t r = 0; r < R; r++) isum[r] += (int32_t)(int8_t)b[j * R + r] * xg[j];
            const unsigned char *s = b + block - 2 * R;
            for (size_t r = 0; r < R; r++) acc[r] += ((float)isum[r] * bf16_at(s, r)) * xs[g];
        }
        for (size_t r = 0; r < tile_rows(w, t); r++) out[t * PACK_ROWS + r] = acc[r];
    }
}

/* ---- attention over the binary16 KV cache -------------------------------------------- */

void attention_f16_ref(float *out, float *att, const float *q, const uint16_t *key,
                       size_t key_stride, const uint16_t *value, size_t value_stride, int pos,
                       int head_size) {
    for (int t = 0; t <= pos; t++) {
        float score = 0.0f;
        for (int i = 0; i < head_size; i++)
            score += q[i] * half_to_float(key[(size_t)i * key_stride + (size_t)t]);
        score /= sqrtf((float)head_size);
        att[t] = score;
    }
    softmax(att, pos + 1);
    for (int i = 0; i < head_size; i++) out[i] = 0.0f;
    for (int t = 0; t <= pos; t++) {
        const uint16_t *v = value + (size_t)t * value_stride;
        float a = att[t];
        for (int i = 0; i < head_size; i++) out[i] += a * half_to_float(v[i]);
    }
}
