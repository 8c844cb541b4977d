#include "transformer.h"

#include <stdlib.h>
#include <string.h>

#include "ops.h"

const char *path_name(ComputePath p) {
    switch (p) {
    case PATH_AUTO: return "auto";
    case PATH_REF: return "ref";
    case PATH_FAST: return "fast";
    case PATH_QUANT: return "quant";
    case PATH_FAITHFUL: return "faithful";
    }
    return "?";
}

/* The packed quantized formats keep the KV cache in binary16: with 8- or 4-bit weights
 * the cache is a large part of the memory and of the bytes read per token (3.5 MB and
 * ~1.8 MB/token in fp32 for stories15M's 256 positions). llama2.c's formats keep fp32,
 * so their paths stay run.c's and runq.c's. Per layer, keys are transposed
 * ([kv_dim][max_pos]: one dimension's positions contiguous, vector lanes for the scores),
 * values are [max_pos][kv_dim] (kernels.h, attention_f16). */
static int half_kv_cache(const ModelConfig *c) {
    return c->format == FORMAT_PACKED_Q8 || c->format == FORMAT_PACKED_Q4;
}

static void *alloc_floats(size_t n, int *failed) {
    void *p = calloc(n ? n : 1, sizeof(float));
    if (!p) *failed = 1;
    return p;
}

int transformer_init(Transformer *t, const Model *m, ComputePath path, int max_pos, Error *err) {
    memset(t, 0, sizeof *t);
    const ModelConfig *c = &m->cfg;
    int quantized = c->format == FORMAT_Q80 || c->format == FORMAT_PACKED_Q8 ||
                    c->format == FORMAT_PACKED_Q4;
    int faithful = c->format == FORMAT_PACKED_FAITHFUL;
    if (path == PATH_AUTO) path = quantized ? PATH_QUANT : faithful ? PATH_FAITHFUL : PATH_FAST;
    if (path == PATH_FAITHFUL && !faithful)
        return fail(err, "the faithful path needs a faithful file; this one is %s (convert it "
                    "with `invoke convert --format faithful`)", format_name(c->format));
    if (quantized && path != PATH_QUANT)
        return fail(err, "the %s path needs an fp32 checkpoint; this one is %s",
                    path_name(path), format_name(c->format));
    if (!quantized && path == PATH_QUANT)
        return fail(err, "the quantized path needs a q8/q4/Q8_0 checkpoint; this one is %s "
                    "(convert it with `invoke convert --format q8`)", format_name(c->format));
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
    if (half_kv_cache(c)) {
        s->key_cache16 = calloc(cache ? cache : 1, sizeof(uint16_t));
        s->value_cache16 = calloc(cache ? cache : 1, sizeof(uint16_t));
        s->k = alloc_floats(kv_dim, &failed);
        s->v = alloc_floats(kv_dim, &failed);
        if (!s->key_cache16 || !s->value_cache16) failed = 1;
    } else {
        s->key_cache = alloc_floats(cache, &failed);
        s->value_cache = alloc_floats(cache, &failed);
    }
    if (quantized) {
        /* packed matrices read whole groups: the activation is padded to them */
        size_t padded = (widest + PACK_GROUP - 1) / PACK_GROUP * PACK_GROUP;
        s->xq = calloc(padded, 1);
        s->xs = alloc_floats(widest, &failed); /* groups of >= 1 value */
        if (!s->xq) failed = 1;
    }
    if (path == PATH_FAITHFUL && !failed) {
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
    float *bufs[] = {s->x, s->xb, s->xb2, s->hb, s->hb2, s->q, s->att,
                     s->logits, s->rope, s->key_cache, s->value_cache, s->xs, s->k, s->v};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->key_cache16);
    free(s->value_cache16);
    free(s->xq);
    memset(s, 0, sizeof *s);
    faithful_free(t->faithful);
    t->faithful = NULL;
}

/* A matrix's input: quantized once when the weights are Q8_0, shared by the matrices
 * that read the same vector (wq/wk/wv, w1/w3). */
static Activation activation(Transformer *t, const float *x, size_t n) {
    Activation a = {.f = x, .n = n};
    if (t->path == PATH_QUANT) {
        a.q = t->s.xq;
        a.s = t->s.xs;
        a.group_size = (size_t)t->model->cfg.group_size;
        quantize_q80(a.q, a.s, x, n, a.group_size);
    }
    return a;
}

static void matvec(Transformer *t, float *out, const Tensor *w, const Activation *a) {
    switch (w->type) {
    case TENSOR_PF32:
        if (t->path == PATH_REF) matvec_packed_f32_ref(out, w, a->f);
        else matvec_packed_f32(out, w, a->f, t->path != PATH_FAITHFUL); /* unfused = ref */
        return;
    case TENSOR_PQ8:
    case TENSOR_PQ4: matvec_packed_q(out, w, a); return;
    case TENSOR_Q80: matvec_q80(out, w, a); return;
    case TENSOR_F32:
        if (t->path == PATH_REF) matvec_f32_ref(out, w->f, a->f, w->cols, w->rows);
        else matvec_f32_fast(out, w->f, a->f, w->cols, w->rows);
        return;
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

    if (t->path == PATH_FAITHFUL)
        faithful_embed(t->faithful, m, token, x); /* read, not mapped: see faithful.c */
    else if (m->embedding.type == TENSOR_Q80)
        dequantize_row(x, &m->embedding, (size_t)token); /* one row, never the whole table */
    else if (m->embedding.type != TENSOR_F32)
        dequantize_packed_row(x, &m->embedding, (size_t)token);
    else
        memcpy(x, m->embedding.f + (size_t)token * (size_t)dim, (size_t)dim * sizeof *x);
    rope_table(s->rope, pos, head_size);

    for (int l = 0; l < p->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        int half = s->key_cache16 != NULL;
        float *key_cache = half ? NULL : s->key_cache + (size_t)l * layer_cache;
        float *value_cache = half ? NULL : s->value_cache + (size_t)l * layer_cache;
        float *k = half ? s->k : key_cache + (size_t)pos * (size_t)kv_dim;
        float *v = half ? s->v : value_cache + (size_t)pos * (size_t)kv_dim;
        uint16_t *key16 = half ? s->key_cache16 + (size_t)l * layer_cache : NULL;
        uint16_t *value16 = half ? s->value_cache16 + (size_t)l * layer_cache : NULL;

        rmsnorm(s->xb, x, w->rms_att, dim);
        Activation a = activation(t, s->xb, (size_t)dim);
        matvec(t, s->q, &w->wq, &a);
        matvec(t, k, &w->wk, &a);
        matvec(t, v, &w->wv, &a);
        rope_rotate(s->q, k, s->rope, dim, kv_dim, head_size);
        if (half)
            for (int i = 0; i < kv_dim; i++) {
                key16[(size_t)i * (size_t)t->max_pos + (size_t)pos] = half_from_float(k[i]);
                value16[(size_t)pos * (size_t)kv_dim + (size_t)i] = half_from_float(v[i]);
            }

        for (int h = 0; h < p->n_heads; h++) {
            size_t kv_off = (size_t)(h / kv_mul) * (size_t)head_size;
            float *att = s->att + (size_t)h * (size_t)t->max_pos;
            if (half)
                attention_f16(s->xb + h * head_size, att, s->q + h * head_size,
                              key16 + kv_off * (size_t)t->max_pos, (size_t)t->max_pos,
                              value16 + kv_off, (size_t)kv_dim, pos, head_size);
            else
                attention_head(s->xb + h * head_size, att, s->q + h * head_size,
                               key_cache + kv_off, value_cache + kv_off, pos, head_size,
                               (size_t)kv_dim);
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
    if (t->path == PATH_FAITHFUL) faithful_classify(t->faithful, m, x, s->logits);
    else matvec(t, s->logits, &m->classifier, &a);
    return s->logits;
}

int transformer_sample(Transformer *t, Sampler *s, float *logits) {
    if (t->path == PATH_FAITHFUL) return faithful_sample(t->faithful, t->model, s, logits);
    return sampler_sample(s, logits);
}
