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

void matvec_q80(float *out, const Tensor *w, const Activation *x) {
    size_t n = w->cols, gs = w->group_size;
    if (n % gs != 0 || x->group_size != gs) {
        matvec_q80_ref(out, w, x); /* rows straddle groups: the general path */
        return;
    }
    size_t groups = n / gs;
    for (size_t i = 0; i < w->rows; i++) {
        const int8_t *row = w->q + i * n;
        size_t g0 = i * groups;
        float val = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            int32_t ival = 0;
            const int8_t *wq = row + g * gs, *xq = x->q + g * gs;
            for (size_t k = 0; k < gs; k++) ival += (int32_t)xq[k] * (int32_t)wq[k];
            val += (float)ival * scale_at(w->s, g0 + g) * x->s[g];
        }
        out[i] = val;
    }
}
