/* Matrix-vector kernels behind one interface. kernels_ref.c holds the portable references
 * (run.c's fp32 summation order; the general Q8_0 product); each kernels_<isa>.c provides
 * the fastest versions for one instruction set, chosen at build time (KERNELS=...). */
#ifndef LLAMA2_KERNELS_H
#define LLAMA2_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* An input vector, with its Q8_0 quantization when the weights need one. */
typedef struct {
    const float *f;
    int8_t *q;
    float *s;
    size_t n, group_size;
} Activation;

/* out (d) = W (d x n) . x, summed left to right in fp32 exactly as run.c. */
void matvec_f32_ref(float *out, const float *w, const float *x, size_t n, size_t d);
/* Symmetric int8 per group of gs values (the last group may be short), as runq.c. */
void quantize_q80(int8_t *q, float *s, const float *x, size_t n, size_t gs);
/* out = W . x for Q8_0 weights of any shape: an integer sum over each run of values that
 * share a weight scale and an activation scale, scaled and added in order (runq.c's
 * arithmetic where rows are whole groups; correct where rows straddle groups). */
void matvec_q80_ref(float *out, const Tensor *w, const Activation *x);
/* The same when every row is whole groups (cols % group_size == 0, equal group sizes):
 * runq.c's loop, vectorisable integer sums. */
void matvec_q80_aligned(float *out, const Tensor *w, const Activation *x);
/* Row `row` of a Q8_0 matrix in fp32 (the embedding of one token). */
void dequantize_row(float *out, const Tensor *w, size_t row);

/* Per-ISA kernels: the same results as above for Q8_0; fp32 may sum in another order. */
void matvec_f32_fast(float *out, const float *w, const float *x, size_t n, size_t d);
void matvec_q80(float *out, const Tensor *w, const Activation *x);
/* The name of the kernel set compiled in, for --version and benchmarks. */
extern const char kernels_name[];

static inline float scale_at(const unsigned char *s, size_t i) {
    float v;
    __builtin_memcpy(&v, s + 4 * i, 4);
    return v;
}

#endif
