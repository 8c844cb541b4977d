#include "ops.h"

#include <math.h>
#include <string.h>

void rmsnorm(float *o, const float *x, const float *weight, int size) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss /= (float)size;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

void softmax(float *x, int size) {
    float max_val = x[0];
    for (int i = 1; i < size; i++)
        if (x[i] > max_val) max_val = x[i];
    float sum = 0.0f;
    for (int i = 0; i < size; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (int i = 0; i < size; i++) x[i] /= sum;
}

void swiglu(float *hb, const float *hb2, int n) {
    for (int i = 0; i < n; i++) {
        float val = hb[i];
        val *= (1.0f / (1.0f + expf(-val)));
        val *= hb2[i];
        hb[i] = val;
    }
}

void rope_table(float *cs, int pos, int head_size) {
    for (int i = 0; i < head_size; i += 2) {
        float freq = 1.0f / powf(10000.0f, (float)i / (float)head_size);
        float val = (float)pos * freq;
        cs[i] = cosf(val);
        cs[i + 1] = sinf(val);
    }
}

static void rotate(float *vec, const float *cs, int n, int head_size) {
    for (int i = 0; i < n; i += 2) {
        float fcr = cs[i % head_size], fci = cs[i % head_size + 1];
        float v0 = vec[i], v1 = vec[i + 1];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
    }
}

void rope_rotate(float *q, float *k, const float *cs, int dim, int kv_dim, int head_size) {
    rotate(q, cs, dim, head_size);
    rotate(k, cs, kv_dim, head_size);
}

void attention_head(float *out, float *att, const float *q, const float *key_cache,
                    const float *value_cache, int pos, int head_size, size_t kv_stride) {
    for (int t = 0; t <= pos; t++) {
        const float *k = key_cache + (size_t)t * kv_stride;
        float score = 0.0f;
        for (int i = 0; i < head_size; i++) score += q[i] * k[i];
        score /= sqrtf((float)head_size);
        att[t] = score;
    }
    softmax(att, pos + 1);
    memset(out, 0, (size_t)head_size * sizeof *out);
    for (int t = 0; t <= pos; t++) {
        const float *v = value_cache + (size_t)t * kv_stride;
        float a = att[t];
        for (int i = 0; i < head_size; i++) out[i] += a * v[i];
    }
}
