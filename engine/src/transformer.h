/* The forward pass: one token in, the next token's logits out. */
#ifndef LLAMA2_TRANSFORMER_H
#define LLAMA2_TRANSFORMER_H

#include "error.h"
#include "kernels.h"
#include "model.h"

typedef enum {
    PATH_AUTO, /* the fastest path for the file's format */
    PATH_REF,  /* fp32, run.c's exact arithmetic */
    PATH_FAST, /* fp32, the build's fastest kernels */
    PATH_Q80,  /* Q8_0 weights and activations (v2 files) */
} ComputePath;

typedef struct {
    float *x, *xb, *xb2, *hb, *hb2, *q, *att, *logits, *rope;
    float *key_cache, *value_cache; /* (layer, max_pos, kv_dim) */
    int8_t *xq;                      /* quantized activation, max(dim, hidden) */
    float *xs;
} RunState;

typedef struct {
    const Model *model;
    ComputePath path;
    int max_pos; /* positions the KV cache holds: the steps asked for, at most seq_len */
    RunState s;
} Transformer;

const char *path_name(ComputePath p);
/* Resolves PATH_AUTO and checks the path suits the file. */
int transformer_init(Transformer *t, const Model *m, ComputePath path, int max_pos, Error *err);
void transformer_free(Transformer *t);
/* Logits (vocab_size) for `token` at `pos` (0 <= pos < max_pos). */
float *transformer_forward(Transformer *t, int token, int pos);

#endif
