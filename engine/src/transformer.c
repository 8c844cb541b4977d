#include "transformer.h"

#include <stdlib.h>
#include <string.h>

#include "ops.h"

const char *path_name(ComputePath p) {
    switch (p) {
    case PATH_AUTO: return "auto";
    case PATH_REF: return "ref";
    case PATH_FAST: return "fast";
    case PATH_Q80: return "q80";
    }
    return "?";
}

static void *alloc_floats(size_t n, int *failed) {
    void *p = calloc(n ? n : 1, sizeof(float));
    if (!p) *failed = 1;
    return p;
}

int transformer_init(Transformer *t, const Model *m, ComputePath path, int max_pos, Error *err) {
    memset(t, 0, sizeof *t);
    const ModelConfig *c = &m->cfg;
    int quantized = c->format == FORMAT_Q80;
    if (path == PATH_AUTO) path = quantized ? PATH_Q80 : PATH_FAST;
    if (quantized && path != PATH_Q80)
        return fail(err, "the %s path needs an fp32 checkpoint (v0 or v1); this one is Q8_0",
                    path_name(path));
    if (!quantized && path == PATH_Q80)
        return fail(err, "the q80 path needs a Q8_0 checkpoint; convert it first");
    if (max_pos < 1 || max_pos > c->seq_len) max_pos = c->seq_len;
    t->model = m;
    t->path = path;
    t->max_pos = max_pos;

    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t kv_dim = dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    size_t widest = dim > hidden ? dim : hidden, cache;
    if (mul_size((size_t)c->n_layers * (size_t)max_pos, kv_dim, &cache) ||
        cache > ((size_t)1 << 40))
        return fail(err, "the KV cache for %d positions is too large", max_pos);
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
    s->key_cache = alloc_floats(cache, &failed);
    s->value_cache = alloc_floats(cache, &failed);
    if (quantized) {
        s->xq = calloc(widest, 1);
        s->xs = alloc_floats(widest, &failed); /* groups of >= 1 value */
        if (!s->xq) failed = 1;
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
    float *bufs[] = {s->x, s->xb, s->xb2, s->hb, s->hb2, s->q, s->att,
                     s->logits, s->rope, s->key_cache, s->value_cache, s->xs};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->xq);
    memset(s, 0, sizeof *s);
}

/* A matrix's input: quantized once when the weights are Q8_0, shared by the matrices
 * that read the same vector (wq/wk/wv, w1/w3). */
static Activation activation(Transformer *t, const float *x, size_t n) {
    Activation a = {.f = x, .n = n};
    if (t->path == PATH_Q80) {
        a.q = t->s.xq;
        a.s = t->s.xs;
        a.group_size = (size_t)t->model->cfg.group_size;
        quantize_q80(a.q, a.s, x, n, a.group_size);
    }
    return a;
}

static void matvec(Transformer *t, float *out, const Tensor *w, const Activation *a) {
    switch (t->path) {
    case PATH_REF: matvec_f32_ref(out, w->f, a->f, w->cols, w->rows); break;
    case PATH_Q80: matvec_q80(out, w, a); break;
    default: matvec_f32_fast(out, w->f, a->f, w->cols, w->rows); break;
    }
}

float *transformer_forward(Transformer *t, int token, int pos) {
    const Model *m = t->model;
    const ModelConfig *p = &m->cfg;
    RunState *s = &t->s;
    float *x = s->x;
    int dim = p->dim, hidden = p->hidden_dim, head_size = dim / p->n_heads;
    int kv_dim = head_size * p->n_kv_heads, kv_mul = p->n_heads / p->n_kv_heads;
    size_t layer_cache = (size_t)t->max_pos * (size_t)kv_dim;

    if (m->embedding.type == TENSOR_Q80)
        dequantize_row(x, &m->embedding, (size_t)token); /* one row, never the whole table */
    else
        memcpy(x, m->embedding.f + (size_t)token * (size_t)dim, (size_t)dim * sizeof *x);
    rope_table(s->rope, pos, head_size);

    for (int l = 0; l < p->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        float *key_cache = s->key_cache + (size_t)l * layer_cache;
        float *value_cache = s->value_cache + (size_t)l * layer_cache;
        float *k = key_cache + (size_t)pos * (size_t)kv_dim;
        float *v = value_cache + (size_t)pos * (size_t)kv_dim;

        rmsnorm(s->xb, x, w->rms_att, dim);
        Activation a = activation(t, s->xb, (size_t)dim);
        matvec(t, s->q, &w->wq, &a);
        matvec(t, k, &w->wk, &a);
        matvec(t, v, &w->wv, &a);
        rope_rotate(s->q, k, s->rope, dim, kv_dim, head_size);

        for (int h = 0; h < p->n_heads; h++) {
            size_t kv_off = (size_t)(h / kv_mul) * (size_t)head_size;
            attention_head(s->xb + h * head_size, s->att + (size_t)h * (size_t)t->max_pos,
                           s->q + h * head_size, key_cache + kv_off, value_cache + kv_off, pos,
                           head_size, (size_t)kv_dim);
        }
        a = activation(t, s->xb, (size_t)dim);
        matvec(t, s->xb2, &w->wo, &a);
        for (int i = 0; i < dim; i++) x[i] += s->xb2[i];

        rmsnorm(s->xb, x, w->rms_ffn, dim);
        a = activation(t, s->xb, (size_t)dim);
        matvec(t, s->hb, &w->w1, &a);
        matvec(t, s->hb2, &w->w3, &a);
        swiglu(s->hb, s->hb2, hidden);
        a = activation(t, s->hb, (size_t)hidden);
        matvec(t, s->xb, &w->w2, &a);
        for (int i = 0; i < dim; i++) x[i] += s->xb[i];
    }
    rmsnorm(x, x, m->rms_final, dim);
    Activation a = activation(t, x, (size_t)dim);
    matvec(t, s->logits, &m->classifier, &a);
    return s->logits;
}
