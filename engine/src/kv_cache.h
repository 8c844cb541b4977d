/* The KV cache: every layer's keys and values of the positions seen so far.
 *
 * Two layouts. fp32 (llama2.c's files: run.c's and runq.c's arithmetic), per layer
 * [max_pos][kv_dim] for keys and values alike, as run.c. binary16 (the packed q8/q4
 * files): with 8- or 4-bit weights the cache is a large part of the memory and of the
 * bytes read per token (3.5 MB and ~1.8 MB/token in fp32 for stories15M's 256 positions),
 * so it is kept in half the bytes; per layer, keys are transposed, [kv_dim][max_pos] (one
 * dimension's positions contiguous: vector lanes for the scores), values [max_pos][kv_dim]
 * (attention_f16 in kernels.h). */
#ifndef LLAMA2_KV_CACHE_H
#define LLAMA2_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    int half;                  /* the binary16 layout */
    size_t max_pos, kv_dim;
    size_t layer;              /* elements per layer: max_pos * kv_dim */
    float *key, *value;        /* fp32 */
    uint16_t *key16, *value16; /* binary16 */
    float *k, *v;              /* binary16: this position's key and value in fp32 */
} KvCache;

/* Elements of each of the key and value caches (n_layers * max_pos * kv_dim), or 0 when
 * that would be absurdly large (more than 2^40). */
size_t kv_cache_elements(const ModelConfig *c, int max_pos);
/* Allocates the cache for max_pos positions, in binary16 for packed q8/q4 files; -1 when
 * out of memory (kv_cache_free then releases what was allocated). */
int kv_cache_init(KvCache *kv, const ModelConfig *c, int max_pos);
void kv_cache_free(KvCache *kv);

/* Where layer l's matrices write the key and value of position pos: the cache itself in
 * fp32, kv->k and kv->v in binary16 (kv_cache_store then converts them into the cache). */
float *kv_cache_key(KvCache *kv, int l, int pos);
float *kv_cache_value(KvCache *kv, int l, int pos);
void kv_cache_store(KvCache *kv, int l, int pos);

/* Head h's attention over positions 0..pos of layer l, its query q, keys and values from
 * kv_head: scores into att (pos + 1 floats), the weighted sum of values into out
 * (head_size floats). run.c's arithmetic in both layouts. */
void kv_cache_attention(const KvCache *kv, int l, int kv_head, float *out, float *att,
                        const float *q, int pos, int head_size);

#endif
