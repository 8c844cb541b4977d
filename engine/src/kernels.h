/* The matrix kernels, one traits table per tensor type (ggml-cpu's type_traits, in small).
 *
 * Each entry names its arithmetic contract:
 *   matvec_ref   the reference: fp32 summed left to right with no FMA, exactly as run.c;
 *                quantized types exact integer sums per group, then the group's scales in
 *                fp32 (runq.c's arithmetic). The same bits on every build.
 *   matvec_fast  the build's fastest: fp32 in any fixed order, maybe fused (results differ
 *                from the reference in the last bits); quantized types bit-identical to
 *                matvec_ref.
 *   matvec_a16   packed q8 only: times an int16 activation (the faithful classifier);
 *                bit-identical on every build.
 *   row          one row in fp32 (the embedding of one token).
 *
 * Three kernel sets fill the table: kernels_ref.c (generic, compiled without FMA
 * contraction: every entry's reference), kernels_fast.c (generic fp32 kernels compiled
 * with contraction) and kernels_<isa>.c (the ISA's overrides, chosen at build time with
 * KERNELS=...). An entry comes from the first set that has it, ISA first: an ISA file
 * defines only what it does better, and everything else falls back to the generic one. */
#ifndef LLAMA2_KERNELS_H
#define LLAMA2_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* An input vector, with its int8 quantization (per group) when the weights need one. */
typedef struct {
    const float *f;
    int8_t *q;
    float *s;
    size_t n, group_size;
} Activation;

typedef void (*MatvecFn)(float *out, const Tensor *w, const Activation *x);
typedef void (*MatvecA16Fn)(float *out, const Tensor *w, const int16_t *xq, const float *xs);
typedef void (*RowFn)(float *out, const Tensor *w, size_t row);
/* One head's attention over the binary16 KV cache (kv_cache.h has the layout). */
typedef void (*AttentionF16Fn)(float *out, float *att, const float *q, const uint16_t *key,
                               size_t key_stride, const uint16_t *value, size_t value_stride,
                               int pos, int head_size);
/* One head's attention over the fp32 KV cache (kv_cache.h has the layout). */
typedef void (*AttentionF32Fn)(float *out, float *att, const float *q, const float *key,
                               size_t key_stride, const float *value, size_t value_stride,
                               int pos, int head_size);

typedef struct {
    MatvecFn matvec_ref, matvec_fast;
    MatvecA16Fn matvec_a16;
    RowFn row;
} TensorTraits;

typedef void (*SoftmaxFn)(float *x, int n);
typedef void (*QuantizeQ80Fn)(int8_t *q, float *s, const float *x, size_t n, size_t gs);
typedef void (*ExpArrayFn)(float *y, const float *x, size_t n);
typedef void (*SwigluFn)(float *hb, const float *hb2, size_t n);
typedef void (*RefineQ4A16Fn)(float *val, const unsigned char *nib, const BlockQ8 *scales,
                              size_t groups, const int16_t *xq, const float *xs);

/* A kernel set: NULL entries are the next set's. */
typedef struct {
    const char *name;
    TensorTraits types[TENSOR_TYPES];
    AttentionF16Fn attention_f16; /* attention_f16_ref's bits */
    AttentionF32Fn attention_f32; /* attention_f32_ref's bits: run.c's */
    SoftmaxFn softmax_fast;       /* softmax_fast's bits (exp_fast.h) */
    ExpArrayFn exp_fast;          /* exp_fast's bits, element by element */
    SwigluFn swiglu_fast;         /* swiglu_fast_ref's bits (exp_fast.h) */
    QuantizeQ80Fn quantize_q80;   /* quantize_q80_ref's bits (kernels_ref.c) */
    RefineQ4A16Fn refine_q4a16;   /* refine_q4a16_ref's bits (kernels_ref.c) */
} KernelSet;

extern const KernelSet kernels_ref;  /* kernels_ref.c: complete */
extern const KernelSet kernels_fast; /* kernels_fast.c: fp32 and packed fp32 fast */
extern const KernelSet kernels_isa;  /* kernels_$(KERNELS).c */

/* The kernels, each resolved through the sets (kernels.c). */
void matvec_ref(float *out, const Tensor *w, const Activation *x);
void matvec_fast(float *out, const Tensor *w, const Activation *x);
void dequantize_row(float *out, const Tensor *w, size_t row);
/* Packed q8 weights times an int16 activation quantized per group of PACK_GROUP values
 * (quantize_a16; xq padded with zeros to whole groups). Per row and group an exact int32
 * sum, then val += ((float)isum * s_w) * s_x in group order. */
void matvec_packed_q8a16(float *out, const Tensor *w, const int16_t *xq, const float *xs);
/* One tile of the faithful path's int4 second level (FORMAT.md section 11 part 4) times the
 * int16 activation: nib holds groups x PACK_ROWS x PACK_GROUP / 2 bytes (per group, byte
 * p x PACK_ROWS + r: row r's column 2p in its low nibble, 2p + 1 in its high nibble, two's
 * complement), scales[g] the q8 blocks whose bf16 scales it uses (only those). Per row and
 * group the exact int32 sum of q2 x xq, then val[r] += ((float)isum * s_w) * s_x in group
 * order from val[r] = 0, each step rounded (unfused): the same bits on every build. */
void refine_q4a16(float *val, const unsigned char *nib, const BlockQ8 *scales, size_t groups,
                  const int16_t *xq, const float *xs);
/* One head's attention over positions 0..pos with the KV cache in binary16: scores into
 * att (pos + 1 floats), the weighted sum of values into out (head_size floats). Keys are
 * transposed: dimension i of position t at key[i * key_stride + t]; values by position:
 * value[t * value_stride + i]. Arithmetic (attention_head's order): score = sum over i
 * ascending of q[i] * k, unfused, from 0; score /= sqrtf(head_size); softmax_fast (below:
 * only the packed q8/q4 paths use this, their stories are not run.c's); out[i] = sum over
 * t ascending of att[t] * v, unfused, from 0. */
void attention_f16(float *out, float *att, const float *q, const uint16_t *key,
                   size_t key_stride, const uint16_t *value, size_t value_stride, int pos,
                   int head_size);
/* The same over the fp32 KV cache (the llama2.c files and the faithful path), the same
 * layout and arithmetic but ops.c's softmax: run.c's attention bit for bit (its keys by
 * position, ours transposed: only the memory order differs, every score and output is the
 * same chain of roundings). */
void attention_f32(float *out, float *att, const float *q, const float *key,
                   size_t key_stride, const float *value, size_t value_stride, int pos,
                   int head_size);
/* The name of the ISA kernel set compiled in, for --version and benchmarks. */
/* The quantized path's softmax (its sampler; run.c's exact one is ops.c's): max, then x[i]
 * = exp_fast(x[i] - max) (exp_fast.h: within 2 ulp of e^x) summed in SOFTMAX_LANES lanes
 * (lane i % SOFTMAX_LANES, each left to right; the lanes then in softmax_lanes_sum's
 * order), then x[i] * (1 / sum). The same bits on every build. */
void softmax_fast(float *x, int n);
/* y[i] = exp_fast(x[i]) for i < n (y may be x): the same bits on every build. */
void exp_fast_array(float *y, const float *x, size_t n);
/* The packed q8/q4 paths' SwiGLU (their stories are not run.c's; -k ref/fast/faithful and
 * Q8_0 keep ops.c's swiglu): hb[i] = (a * (1.0f / (1.0f + exp_fast(-a)))) * hb2[i] with a
 * = hb[i], each operation rounded once (unfused). The same bits on every build. */
void swiglu_fast(float *hb, const float *hb2, size_t n);
const char *kernels_name(void);

/* Packed fp32 weights times x in run.c's arithmetic (the faithful path's exact rows). */
static inline void matvec_packed_f32_ref(float *out, const Tensor *w, const float *x) {
    const Activation a = {.f = x, .n = w->cols};
    matvec_ref(out, w, &a);
}

/* Symmetric int8 per group of gs values (the last group may be short), as runq.c: scale
 * max|x| / 127, q = roundf(x / scale) (0 where the scale is 0 or NaN). The same bits on
 * every build (resolved through the kernel sets, kernels.c). */
void quantize_q80(int8_t *q, float *s, const float *x, size_t n, size_t gs);
/* Symmetric int16 per group of gs values (the last group may be short): scale
 * max|x|/32767, q = round(x / scale), 0 where the scale is 0. */
void quantize_a16(int16_t *q, float *s, const float *x, size_t n, size_t gs);

/* A packed fp32 matrix times x, each row summed column by column: the one loop behind the
 * reference (kernels_ref.c, no FMA: run.c's order) and the generic fast kernel
 * (kernels_fast.c, compiled with contraction). Inline, so each file's flags decide. */
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

#endif
