/* The generic fast fp32 kernels: plain C the compiler can vectorise for any target,
 * compiled with FMA contraction (the Makefile's FAST_CFLAGS). ISA files override them. */
#include "kernels.h"

/* Eight interleaved partial sums per row: vectorisable, and a different (but fixed)
 * summation order from run.c's, so results differ from the reference in the last bits. */
static void f32_fast(float *out, const Tensor *w, const Activation *x) {
    const size_t n = w->cols;
    const float *xf = x->f;
    for (size_t i = 0; i < w->rows; i++) {
        const float *row = w->f + i * n;
        float acc[8] = {0};
        size_t j = 0;
        for (; j + 8 <= n; j += 8)
            for (int k = 0; k < 8; k++) acc[k] += row[j + k] * xf[j + k];
        float val = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; j < n; j++) val += row[j] * xf[j];
        out[i] = val;
    }
}

/* Packed fp32: the reference's loop, which the compiler may contract into FMA here. */
static void pf32_fast(float *out, const Tensor *w, const Activation *x) {
    packed_f32_columns(out, w, x->f);
}

const KernelSet kernels_fast = {
    .name = "fast",
    .types =
        {
            [TENSOR_F32] = {.matvec_fast = f32_fast},
            [TENSOR_PF32] = {.matvec_fast = pf32_fast},
        },
};
