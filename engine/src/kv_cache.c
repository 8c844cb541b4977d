#include "kv_cache.h"

#include <stdlib.h>

#include "kernels.h"
#include "ops.h"

static int half_layout(const ModelConfig *c) {
    return c->format == FORMAT_PACKED_Q8 || c->format == FORMAT_PACKED_Q4;
}

static size_t kv_dim_of(const ModelConfig *c) {
    return (size_t)c->dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
}

size_t kv_cache_elements(const ModelConfig *c, int max_pos) {
    size_t n;
    if (mul_size((size_t)c->n_layers * (size_t)max_pos, kv_dim_of(c), &n) ||
        n > ((size_t)1 << 40))
        return 0;
    return n;
}

int kv_cache_init(KvCache *kv, const ModelConfig *c, int max_pos) {
    *kv = (KvCache){.half = half_layout(c), .max_pos = (size_t)max_pos, .kv_dim = kv_dim_of(c)};
    kv->layer = kv->max_pos * kv->kv_dim;
    size_t n = kv_cache_elements(c, max_pos);
    if (kv->half) {
        kv->key16 = calloc(n ? n : 1, sizeof(uint16_t));
        kv->value16 = calloc(n ? n : 1, sizeof(uint16_t));
        kv->k = calloc(kv->kv_dim, sizeof(float));
        kv->v = calloc(kv->kv_dim, sizeof(float));
        return kv->key16 && kv->value16 && kv->k && kv->v ? 0 : -1;
    }
    kv->key = calloc(n ? n : 1, sizeof(float));
    kv->value = calloc(n ? n : 1, sizeof(float));
    kv->k = calloc(kv->kv_dim ? kv->kv_dim : 1, sizeof(float));
    return kv->key && kv->value && kv->k ? 0 : -1;
}

void kv_cache_free(KvCache *kv) {
    free(kv->key);
    free(kv->value);
    free(kv->key16);
    free(kv->value16);
    free(kv->k);
    free(kv->v);
    *kv = (KvCache){0};
}

float *kv_cache_key(KvCache *kv, int l, int pos) {
    (void)l, (void)pos;
    return kv->k;
}

float *kv_cache_value(KvCache *kv, int l, int pos) {
    if (kv->half) return kv->v;
    return kv->value + (size_t)l * kv->layer + (size_t)pos * kv->kv_dim;
}

void kv_cache_store(KvCache *kv, int l, int pos) {
    if (!kv->half) { /* the value is in place; the key goes to its column */
        float *key = kv->key + (size_t)l * kv->layer + (size_t)pos;
        for (size_t i = 0; i < kv->kv_dim; i++) key[i * kv->max_pos] = kv->k[i];
        return;
    }
    uint16_t *key = kv->key16 + (size_t)l * kv->layer;
    uint16_t *value = kv->value16 + (size_t)l * kv->layer;
    for (size_t i = 0; i < kv->kv_dim; i++) {
        key[i * kv->max_pos + (size_t)pos] = half_from_float(kv->k[i]);
        value[(size_t)pos * kv->kv_dim + i] = half_from_float(kv->v[i]);
    }
}

void kv_cache_attention(const KvCache *kv, int l, int kv_head, float *out, float *att,
                        const float *q, int pos, int head_size) {
    size_t off = (size_t)kv_head * (size_t)head_size; /* the head's first dimension */
    if (kv->half)
        attention_f16(out, att, q, kv->key16 + (size_t)l * kv->layer + off * kv->max_pos,
                      kv->max_pos, kv->value16 + (size_t)l * kv->layer + off, kv->kv_dim, pos,
                      head_size);
    else
        attention_f32(out, att, q, kv->key + (size_t)l * kv->layer + off * kv->max_pos,
                      kv->max_pos, kv->value + (size_t)l * kv->layer + off, kv->kv_dim, pos,
                      head_size);
}
