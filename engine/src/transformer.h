/* The forward pass: one token in, the next token's logits out. */
#ifndef LLAMA2_TRANSFORMER_H
#define LLAMA2_TRANSFORMER_H

#include "error.h"
#include "faithful.h"
#include "kernels.h"
#include "kv_cache.h"
#include "model.h"
#include "sampler.h"

/* Activations of the current position (run.c's RunState without the cache). */
typedef struct {
    float *x;      /* the residual stream (dim) */
    float *xb;     /* inside a residual branch (dim) */
    float *xb2;    /* another (dim) */
    float *hb;     /* the FFN's hidden layer (hidden_dim) */
    float *hb2;    /* another (hidden_dim) */
    float *q;      /* the query (dim) */
    float *att;    /* attention scores (n_heads, max_pos) */
    float *logits; /* the output (vocab_size) */
    float *rope;   /* this position's RoPE cos/sin (head_size) */
    int8_t *xq;    /* quantized activation, max(dim, hidden) padded to whole groups */
    float *xs;     /* its scales */
} RunState;

typedef struct {
    const Model *model;
    Llama2Path path;
    int max_pos; /* positions the KV cache holds: the steps asked for, at most seq_len */
    /* the matrix kernels' contract: matvec_ref (run.c's arithmetic: -k ref and the
     * faithful path's layers) or matvec_fast (-k fast, quant) */
    void (*matvec)(float *out, const Tensor *w, const Activation *x);
    KvCache kv;
    Faithful *faithful; /* LLAMA2_PATH_FAITHFUL: the classifier's bounds, the certified sampler */
    RunState s;
} Transformer;

const char *path_name(Llama2Path p);
/* Resolves LLAMA2_PATH_AUTO and checks the path suits the file. */
int transformer_init(Transformer *t, const Model *m, Llama2Path path, int max_pos, Error *err);
void transformer_free(Transformer *t);
/* Logits (vocab_size) for `token` at `pos` (0 <= pos < max_pos). On the faithful path:
 * int8 approximations; run.c's token comes from transformer_sample. */
float *transformer_forward(Transformer *t, int token, int pos);
/* The next token from the logits the last forward pass returned: run.c's sampler, or on
 * the faithful path the certified decision (which may recompute rows exactly). */
int transformer_sample(Transformer *t, Sampler *s, float *logits);

#endif
