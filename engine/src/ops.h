/* The transformer's element-wise operations in run.c's exact arithmetic order. They are
 * compiled without FMA contraction so the fp32 reference path matches run.c bit for bit. */
#ifndef LLAMA2_OPS_H
#define LLAMA2_OPS_H

#include <stddef.h>
#include <stdint.h>

void rmsnorm(float *o, const float *x, const float *weight, int size);
void softmax(float *x, int size);
/* hb[i] = silu(hb[i]) * hb2[i] */
void swiglu(float *hb, const float *hb2, int n);
/* cos/sin of pos * freq for each pair of a head: (cos, sin) interleaved, head_size entries */
void rope_table(float *cs, int pos, int head_size);
/* Rotates q (dim) and k (kv_dim) pairwise with the table. */
void rope_rotate(float *q, float *k, const float *cs, int dim, int kv_dim, int head_size);
/* One head's attention over positions 0..pos: scores into att, weighted values into out. */
void attention_head(float *out, float *att, const float *q, const float *key_cache,
                    const float *value_cache, int pos, int head_size, size_t kv_stride);

/* IEEE binary16 <-> fp32, round to nearest even: the KV cache of the packed quantized
 * paths (half the memory and bytes read). _Float16 where the compiler has it (the C906's
 * Zfh makes it one instruction), else integer code giving the same bits. */
uint16_t half_from_float(float f);
float half_to_float(uint16_t h);
uint16_t half_from_float_soft(float f);
float half_to_float_soft(uint16_t h);

#endif
