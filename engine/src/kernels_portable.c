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
