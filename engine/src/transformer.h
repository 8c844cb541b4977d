/* The forward pass: one token in, the next token's logits out. */
#ifndef LLAMA2_TRANSFORMER_H
#define LLAMA2_TRANSFORMER_H

#include "error.h"
#include "faithful.h"
#include "kernels.h"
#include "model.h"

typedef enum {
    PATH_AUTO, /* the fastest path for the file's format */
    PATH_REF,  /* fp32, run.c's exact arithmetic */
    PATH_FAST, /* fp32, the build's fastest kernels */
    PATH_QUANT, /* int8 activations x quantized weights (v2 Q8_0, packed q8/q4 files) */
    PATH_FAITHFUL, /* faithful files: run.c's layers, int8 classifier, certified sampler */
} ComputePath;

typedef struct {
    float *x, *xb, *xb2, *hb, *hb2, *q, *att, *logits, *rope;
    float *key_cache, *value_cache; /* (layer, max_pos, kv_dim) */
    /* packed q8/q4 files: the cache in binary16 instead, keys transposed (layer, kv_dim,
     * max_pos), values (layer, max_pos, kv_dim); k, v: this position's, in fp32 */
    uint16_t *key_cache16, *value_cache16;
    float *k, *v;
    int8_t *xq;                      /* quantized activation, max(dim, hidden) */
    float *xs;
} RunState;

typedef struct {
    const Model *model;
    ComputePath path;
    int max_pos; /* positions the KV cache holds: the steps asked for, at most seq_len */
    Faithful *faithful; /* PATH_FAITHFUL: the classifier's bounds and the certified sampler */
    RunState s;
} Transformer;

const char *path_name(ComputePath p);
/* Resolves PATH_AUTO and checks the path suits the file. */
int transformer_init(Transformer *t, const Model *m, ComputePath path, int max_pos, Error *err);
void transformer_free(Transformer *t);
/* Logits (vocab_size) for `token` at `pos` (0 <= pos < max_pos). PATH_FAITHFUL: int8
 * approximations; run.c's token comes from transformer_sample. */
float *transformer_forward(Transformer *t, int token, int pos);
/* The next token from the logits the last forward pass returned: run.c's sampler, or on
 * PATH_FAITHFUL the certified decision (which may recompute rows exactly). */
int transformer_sample(Transformer *t, Sampler *s, float *logits);

#endif
