#include "transformer.h"

#include <stdlib.h>
#include <string.h>

#include "ops.h"

const char *path_name(Llama2Path p) {
    switch (p) {
    case LLAMA2_PATH_AUTO: return "auto";
    case LLAMA2_PATH_REF: return "ref";
    case LLAMA2_PATH_FAST: return "fast";
    case LLAMA2_PATH_QUANT: return "quant";
    case LLAMA2_PATH_FAITHFUL: return "faithful";
    }
    return "?";
}

static void *alloc_floats(size_t n, int *failed) {
    void *p = calloc(n ? n : 1, sizeof(float));
    if (!p) *failed = 1;
    return p;
}

int transformer_init(Transformer *t, const Model *m, Llama2Path path, int max_pos, Error *err) {
    memset(t, 0, sizeof *t);
    const ModelConfig *c = &m->cfg;
    int quantized = c->format == FORMAT_Q80 || c->format == FORMAT_PACKED_Q8 ||
                    c->format == FORMAT_PACKED_Q4;
    int faithful = c->format == FORMAT_PACKED_FAITHFUL;
    if (path == LLAMA2_PATH_AUTO)
        path = quantized ? LLAMA2_PATH_QUANT : faithful ? LLAMA2_PATH_FAITHFUL : LLAMA2_PATH_FAST;
    if (path == LLAMA2_PATH_FAITHFUL && !faithful)
        return fail(err, "the faithful path needs a faithful file; this one is %s (convert it "
                    "with `invoke convert --format faithful`)", format_name(c->format));
    if (quantized && path != LLAMA2_PATH_QUANT)
        return fail(err, "the %s path needs an fp32 checkpoint; this one is %s",
                    path_name(path), format_name(c->format));
    if (!quantized && path == LLAMA2_PATH_QUANT)
        return fail(err, "the quantized path needs a q8/q4/Q8_0 checkpoint; this one is %s "
                    "(convert it with `invoke convert --format q8`)", format_name(c->format));
    if (max_pos < 1 || max_pos > c->seq_len) max_pos = c->seq_len;
    t->model = m;
    t->path = path;
    t->max_pos = max_pos;
    /* quantized weights: matvec_fast is bit-identical to matvec_ref */
    t->matvec = path == LLAMA2_PATH_REF || path == LLAMA2_PATH_FAITHFUL ? matvec_ref : matvec_fast;

    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t widest = dim > hidden ? dim : hidden, cache = kv_cache_elements(c, max_pos);
    if (cache == 0) return fail(err, "the KV cache for %d positions is too large", max_pos);
    RunState *s = &t->s;
    int failed = 0;
    s->x = alloc_floats(dim, &failed);
    s->xb = alloc_floats(dim, &failed);
    s->xb2 = alloc_floats(dim, &failed);
    s->hb = alloc_floats(hidden, &failed);
    s->hb2 = alloc_floats(hidden, &failed);
    s->q = alloc_floats(dim, &failed);
    s->att = alloc_floats((size_t)c->n_heads * (size_t)max_pos, &failed);
    s->logits = alloc_floats((size_t)c->vocab_size, &failed);
    s->rope = alloc_floats(dim / (size_t)c->n_heads, &failed);
    if (kv_cache_init(&t->kv, c, max_pos) != 0) failed = 1;
    if (quantized) {
        /* packed matrices read whole groups: the activation is padded to them */
        size_t padded = (widest + PACK_GROUP - 1) / PACK_GROUP * PACK_GROUP;
        s->xq = calloc(padded, 1);
        s->xs = alloc_floats(widest, &failed); /* groups of >= 1 value */
        if (!s->xq) failed = 1;
    }
    if (path == LLAMA2_PATH_FAITHFUL && !failed) {
        t->faithful = faithful_new(m, err);
        if (!t->faithful) {
            transformer_free(t);
            return -1;
        }
    }
    if (failed) {
        transformer_free(t);
        return fail(err, "out of memory for the run state (%d positions, KV cache %zu MB)",
                    max_pos, 2 * cache * 4 >> 20);
    }
    return 0;
}

void transformer_free(Transformer *t) {
    RunState *s = &t->s;
    float *bufs[] = {s->x, s->xb, s->xb2, s->hb, s->hb2, s->q, s->att, s->logits, s->rope, s->xs};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->xq);
    memset(s, 0, sizeof *s);
    kv_cache_free(&t->kv);
    faithful_free(t->faithful);
    t->faithful = NULL;
}

/* A matrix's input: quantized once when the weights are quantized, shared by the matrices
 * that read the same vector (wq/wk/wv, w1/w3). */
static Activation activation(Transformer *t, const float *x, size_t n) {
    Activation a = {.f = x, .n = n};
    if (t->path == LLAMA2_PATH_QUANT) {
        a.q = t->s.xq;
        a.s = t->s.xs;
        a.group_size = (size_t)t->model->cfg.group_size;
        quantize_q80(a.q, a.s, x, n, a.group_size);
    }
    return a;
}

/* x += dx: a residual connection */
static void residual(float *x, const float *dx, int n) {
    for (int i = 0; i < n; i++) x[i] += dx[i];
}

/* run.c's forward(), step by step; the kernels (t->matvec) keep the path's arithmetic. */
float *transformer_forward(Transformer *t, int token, int pos) {
    const Model *m = t->model;
    const ModelConfig *p = &m->cfg;
    RunState *s = &t->s;
    float *x = s->x;
    int dim = p->dim, hidden = p->hidden_dim, head_size = dim / p->n_heads;
    int kv_dim = head_size * p->n_kv_heads;
    int kv_mul = p->n_heads / p->n_kv_heads; /* query heads per key/value head (GQA) */

    /* copy the token embedding into x (one row, never the whole table dequantized; the
     * faithful path reads it from the file like its recomputed tiles: see faithful.c) */
    if (t->path == LLAMA2_PATH_FAITHFUL) faithful_embed(t->faithful, m, token, x);
    else dequantize_row(x, &m->embedding, (size_t)token);
    /* this position's RoPE rotations, the same for every layer */
    rope_table(s->rope, pos, head_size);

    /* forward all the layers */
    for (int l = 0; l < p->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];

        /* attention rmsnorm */
        rmsnorm(s->xb, x, w->rms_att, dim);

        /* qkv matmuls for this position; key and value go where the cache wants them */
        float *k = kv_cache_key(&t->kv, l, pos), *v = kv_cache_value(&t->kv, l, pos);
        Activation a = activation(t, s->xb, (size_t)dim);
        t->matvec(s->q, &w->wq, &a);
        t->matvec(k, &w->wk, &a);
        t->matvec(v, &w->wv, &a);

        /* RoPE relative positional encoding: rotate q and k in each head */
        rope_rotate(s->q, k, s->rope, dim, kv_dim, head_size);

        /* store this position's key and value in the cache */
        kv_cache_store(&t->kv, l, pos);

        /* multihead attention over positions 0..pos, into xb */
        for (int h = 0; h < p->n_heads; h++)
            kv_cache_attention(&t->kv, l, h / kv_mul, s->xb + h * head_size,
                               s->att + (size_t)h * (size_t)t->max_pos, s->q + h * head_size,
                               pos, head_size);

        /* final matmul to get the output of the attention */
        a = activation(t, s->xb, (size_t)dim);
        t->matvec(s->xb2, &w->wo, &a);

        /* residual connection back into x */
        residual(x, s->xb2, dim);

        /* ffn rmsnorm */
        rmsnorm(s->xb, x, w->rms_ffn, dim);

        /* w1(x) and w3(x) */
        a = activation(t, s->xb, (size_t)dim);
        t->matvec(s->hb, &w->w1, &a);
        t->matvec(s->hb2, &w->w3, &a);

        /* SwiGLU non-linearity: silu(w1(x)) * w3(x); the packed q8/q4 paths' stories are
         * not run.c's: exp_fast's, vectorised (kernels.h) */
        if (t->path == LLAMA2_PATH_QUANT && p->format != FORMAT_Q80)
            swiglu_fast(s->hb, s->hb2, (size_t)hidden);
        else
            swiglu(s->hb, s->hb2, hidden);

        /* final matmul to get the output of the ffn */
        a = activation(t, s->hb, (size_t)hidden);
        t->matvec(s->xb, &w->w2, &a);

        /* residual connection */
        residual(x, s->xb, dim);
    }

    /* final rmsnorm */
    rmsnorm(x, x, m->rms_final, dim);

    /* classifier into logits (the faithful path: int8 logits and their bounds) */
    if (t->path == LLAMA2_PATH_FAITHFUL) {
        faithful_classify(t->faithful, m, x, s->logits);
    } else {
        Activation a = activation(t, x, (size_t)dim);
        t->matvec(s->logits, &m->classifier, &a);
    }
    return s->logits;
}

int transformer_sample(Transformer *t, Sampler *s, float *logits) {
    if (t->path == LLAMA2_PATH_FAITHFUL) return faithful_sample(t->faithful, t->model, s, logits);
    /* the quantized path's logits are not run.c's: a vectorised softmax (kernels.h) */
    if (t->path == LLAMA2_PATH_QUANT) return sampler_sample_fast(s, logits);
    return sampler_sample(s, logits);
}
