/* The KV cache: every layer's keys and values of the positions seen so far.
 *
 * Two element types, one layout: per layer, keys transposed, [kv_dim][max_pos] (one
 * dimension's positions contiguous: vector lanes for the scores, each lane summing its
 * head's dimensions in order), values [max_pos][kv_dim] (one position's dimensions
 * contiguous: lanes for the weighted sum over positions in order). fp32 (llama2.c's files
 * and the faithful path: run.c's and runq.c's arithmetic, attention_f32 in kernels.h, bit
 * for bit run.c's, whose keys are [max_pos][kv_dim]: only the memory order differs).
 * binary16 (the packed q8/q4 files): with 8- or 4-bit weights the cache is a large part of
 * the memory and of the bytes read per token (3.5 MB and ~1.8 MB/token in fp32 for
 * stories15M's 256 positions), so it is kept in half the bytes (attention_f16). */
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
    float *k, *v;              /* this position's key (both) and value (binary16) in fp32 */
} KvCache;

/* Elements of each of the key and value caches (n_layers * max_pos * kv_dim), or 0 when
 * that would be absurdly large (more than 2^40). */
size_t kv_cache_elements(const ModelConfig *c, int max_pos);
/* Allocates the cache for max_pos positions, in binary16 for packed q8/q4 files; -1 when
 * out of memory (kv_cache_free then releases what was allocated). */
int kv_cache_init(KvCache *kv, const ModelConfig *c, int max_pos);
void kv_cache_free(KvCache *kv);

/* Where layer l's matrices write the key and value of position pos: kv->k for the key
 * (kv_cache_store then transposes it into the cache), the cache itself for an fp32 value,
 * kv->v for a binary16 one (kv_cache_store converts both then). */
float *kv_cache_key(KvCache *kv, int l, int pos);
float *kv_cache_value(KvCache *kv, int l, int pos);
void kv_cache_store(KvCache *kv, int l, int pos);

/* Head h's attention over positions 0..pos of layer l, its query q, keys and values from
 * kv_head: scores into att (pos + 1 floats), the weighted sum of values into out
 * (head_size floats). run.c's arithmetic in both element types. */
void kv_cache_attention(const KvCache *kv, int l, int kv_head, float *out, float *att,
                        const float *q, int pos, int head_size);

#endif
