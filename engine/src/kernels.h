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

/* Packed row tiles (FORMAT.md): the lanes of a vector are PACK_ROWS output rows.
 * fp32: each row summed column by column, unfused: run.c's order, bit for bit. */
void matvec_packed_f32_ref(float *out, const Tensor *w, const float *x);
/* q8/q4: per row and group an exact integer sum, then val += ((float)isum * s_w) * s_x. */
void matvec_packed_q_ref(float *out, const Tensor *w, const Activation *x);
/* Row `row` of a packed matrix in fp32 (the embedding of one token). */
void dequantize_packed_row(float *out, const Tensor *w, size_t row);
/* The faithful path's approximate classifier (faithful.c): packed q8 weights times an
 * int16 activation, quantized per group of PACK_GROUP values (quantize_a16; xq padded with
 * zeros to whole groups). Per row and group an exact int32 sum, then
 * val += ((float)isum * s_w) * s_x in group order. Other builds may sum the groups in any
 * order and fuse: the certified error bound covers any of them. */
void matvec_packed_q8a16_ref(float *out, const Tensor *w, const int16_t *xq, const float *xs);
/* Symmetric int16 per group of gs values (the last group may be short): scale max|x|/32767,
 * q = round(x / scale), 0 where the scale is 0. */
void quantize_a16(int16_t *q, float *s, const float *x, size_t n, size_t gs);

/* Per-ISA kernels: the same results as above for Q8_0 and packed q8/q4; fp32 may sum in
 * another order (matvec_packed_f32 with fused = 0 may not: it is the reference's result). */
void matvec_f32_fast(float *out, const float *w, const float *x, size_t n, size_t d);
void matvec_q80(float *out, const Tensor *w, const Activation *x);
void matvec_packed_f32(float *out, const Tensor *w, const float *x, int fused);
/* Bit-identical to matvec_packed_q8a16_ref. */
void matvec_packed_q8a16(float *out, const Tensor *w, const int16_t *xq, const float *xs);
void matvec_packed_q(float *out, const Tensor *w, const Activation *x);
/* One head's attention over positions 0..pos with the KV cache in binary16 (the packed
 * q8/q4 paths): scores into att (pos + 1 floats), the weighted sum of values into out
 * (head_size floats). Keys are transposed, positions contiguous per dimension: dimension
 * i of position t at key[i * key_stride + t]; values by position: value[t * value_stride
 * + i]. The reference's arithmetic (attention_head's order): score = sum over i ascending
 * of q[i] * k, unfused, from 0; score /= sqrtf(head_size); softmax (ops.c); out[i] = sum
 * over t ascending of att[t] * v, unfused, from 0. attention_f16 gives its results bit for
 * bit on every build. */
void attention_f16_ref(float *out, float *att, const float *q, const uint16_t *key,
                       size_t key_stride, const uint16_t *value, size_t value_stride, int pos,
                       int head_size);
void attention_f16(float *out, float *att, const float *q, const uint16_t *key,
                   size_t key_stride, const uint16_t *value, size_t value_stride, int pos,
                   int head_size);
/* The name of the kernel set compiled in, for --version and benchmarks. */
extern const char kernels_name[];

static inline float scale_at(const unsigned char *s, size_t i) {
    float v;
    __builtin_memcpy(&v, s + 4 * i, 4);
    return v;
}

/* Rows in packed tile t (the last tile may be short). */
static inline size_t tile_rows(const Tensor *w, size_t t) {
    size_t left = w->rows - t * PACK_ROWS;
    return left < PACK_ROWS ? left : PACK_ROWS;
}

/* A packed fp32 matrix times x, each row summed column by column: the one loop behind
 * matvec_packed_f32_ref (kernels_ref.c, no FMA: run.c's order) and the portable fused
 * kernel (kernels_portable.c, compiled with contraction). Inline, so each file's flags
 * decide. */
static inline void packed_f32_columns(float *out, const Tensor *w, const float *x) {
    const size_t n = w->cols;
    for (size_t t = 0; t < w->tiles; t++) {
        const float *b = (const float *)(const void *)w->p + t * n * PACK_ROWS;
        float acc[PACK_ROWS] = {0};
        for (size_t j = 0; j < n; j++)
            for (size_t r = 0; r < PACK_ROWS; r++) acc[r] += b[j * PACK_ROWS + r] * x[j];
        for (size_t r = 0; r < tile_rows(w, t); r++) out[t * PACK_ROWS + r] = acc[r];
    }
}

/* A packed bf16 scale (the upper half of an fp32) as a float. */
static inline float bf16_at(const unsigned char *s, size_t i) {
    uint16_t h;
    __builtin_memcpy(&h, s + 2 * i, 2);
    uint32_t bits = (uint32_t)h << 16;
    float v;
    __builtin_memcpy(&v, &bits, 4);
    return v;
}

#endif
