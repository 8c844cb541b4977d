/* Portable fast kernels: plain C the compiler can vectorise for any target. */
#include "kernels.h"

const char kernels_name[] = "portable";

/* Eight interleaved partial sums per row: vectorisable, and a different (but fixed)
 * summation order from run.c's, so results differ from the reference in the last bits. */
void matvec_f32_fast(float *out, const float *w, const float *x, size_t n, size_t d) {
    for (size_t i = 0; i < d; i++) {
        const float *row = w + i * n;
        float acc[8] = {0};
        size_t j = 0;
        for (; j + 8 <= n; j += 8)
            for (int k = 0; k < 8; k++) acc[k] += row[j + k] * x[j + k];
        float val = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; j < n; j++) val += row[j] * x[j];
        out[i] = val;
    }
}

/* Q8_0 sums integers exactly; its per-group scaling stays in kernels_ref.c, compiled
 * without FMA contraction, so every build gives runq.c's result bit for bit. */
void matvec_q80(float *out, const Tensor *w, const Activation *x) {
    if (w->cols % w->group_size != 0 || x->group_size != w->group_size)
        matvec_q80_ref(out, w, x); /* rows straddle groups: the general path */
    else
        matvec_q80_aligned(out, w, x);
}

/* Packed fp32: the reference's loop, which the compiler may contract into FMA here. */
void matvec_packed_f32(float *out, const Tensor *w, const float *x, int fused) {
    if (!fused) {
        matvec_packed_f32_ref(out, w, x);
        return;
    }
    packed_f32_columns(out, w, x); /* this file is compiled with contraction */
}

/* Packed q8/q4: integer sums vectorise as they are; the scaling must not fuse. */
void matvec_packed_q(float *out, const Tensor *w, const Activation *x) {
    matvec_packed_q_ref(out, w, x);
}

/* Attention over the binary16 cache: the reference (its conversions and order). */
void attention_f16(float *out, float *att, const float *q, const uint16_t *key,
                   size_t key_stride, const uint16_t *value, size_t value_stride, int pos,
                   int head_size) {
    attention_f16_ref(out, att, q, key, key_stride, value, value_stride, pos, head_size);
}

/* The faithful path's int8 x int16 classifier: the reference's exact integer sums. */
void matvec_packed_q8a16(float *out, const Tensor *w, const int16_t *xq, const float *xs) {
    matvec_packed_q8a16_ref(out, w, xq, xs);
}
