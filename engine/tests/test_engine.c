/* C-level tests of the kernels, the sampler and the UTF-8 check; built and run by
 * `make check` (and under ASan/UBSan by the Python suite). Prints "N passed, N failed". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../include/llama2.h"
#include "../src/kernels.h"
#include "../src/kv_cache.h"
#include "../src/ops.h"
#include "../src/sampler.h"
#include "../src/tokenizer.h"

#include "check.h"

static unsigned long long rng = 42;
static float uniform(void) { return random_f32(&rng) * 2.0f - 1.0f; }

/* A Q8_0 matrix built in memory exactly as a v2 file stores one. */
typedef struct {
    Tensor t;
    int8_t *q;
    float *s;
} QMatrix;

static QMatrix make_qmatrix(size_t rows, size_t cols, size_t gs) {
    QMatrix m;
    size_t n = rows * cols;
    float *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) w[i] = uniform();
    m.q = malloc(n);
    m.s = malloc(n / gs * sizeof *m.s);
    quantize_q80(m.q, m.s, w, n, gs);
    free(w);
    m.t = (Tensor){.type = TENSOR_Q80, .rows = rows, .cols = cols, .q = m.q,
                   .s = (const unsigned char *)m.s, .group_size = gs};
    return m;
}

/* The exact value of the Q8_0 product, in double: what any correct kernel approximates. */
static double q80_exact(const Tensor *w, const Activation *x, size_t row) {
    double sum = 0;
    for (size_t j = 0; j < w->cols; j++) {
        size_t flat = row * w->cols + j;
        sum += (double)w->q[flat] * scale_at(w->s, flat / w->group_size) *
               (double)x->q[j] * x->s[j / x->group_size];
    }
    return sum;
}

static void test_q80_shapes(void) {
    /* (rows, cols, gs): aligned, rows straddling groups (stories260K's w2: 64 x 172, gs 64),
     * and groups smaller than a row that do not divide it */
    size_t shapes[][3] = {{8, 64, 32}, {64, 172, 64}, {16, 48, 64}, {6, 30, 4}, {3, 1, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        size_t rows = shapes[k][0], cols = shapes[k][1], gs = shapes[k][2];
        QMatrix m = make_qmatrix(rows, cols, gs);
        float *x = malloc(cols * sizeof *x), *out = malloc(rows * sizeof *out);
        float *out_ref = malloc(rows * sizeof *out_ref), *xs = malloc(cols * sizeof *xs);
        int8_t *xq = malloc(cols);
        for (size_t j = 0; j < cols; j++) x[j] = uniform() * 3.0f;
        quantize_q80(xq, xs, x, cols, gs);
        Activation a = {.f = x, .q = xq, .s = xs, .n = cols, .group_size = gs};
        matvec_fast(out, &m.t, &a);
        matvec_ref(out_ref, &m.t, &a);
        for (size_t i = 0; i < rows; i++) {
            double exact = q80_exact(&m.t, &a, i);
            CHECK(fabs(out[i] - exact) <= 1e-4 * (1 + fabs(exact)),
                  "q80 %zux%zu gs %zu row %zu: %g vs exact %g", rows, cols, gs, i, out[i], exact);
            /* integer sums are exact and the scaling is never fused: bit-equal everywhere */
            CHECK(out[i] == out_ref[i], "q80 kernel and reference differ at row %zu: %g vs %g",
                  i, out[i], out_ref[i]);
        }
        free(x); free(out); free(out_ref); free(xs); free(xq); free(m.q); free(m.s);
    }
}

static void test_quantize_edges(void) {
    float x[10] = {0, 0, 0, 0, 1.0f, -2.0f, 0.5f, 0, 0, 0};
    int8_t q[10];
    float s[3];
    quantize_q80(q, s, x, 10, 4); /* groups of 4, 4, and a short one of 2 */
    CHECK(s[0] == 0.0f && q[0] == 0 && q[3] == 0, "all-zero group must quantize to 0");
    CHECK(q[5] == -127 && fabsf(s[1] - 2.0f / 127.0f) < 1e-9f, "max maps to -127");
    CHECK(s[2] == 0.0f && q[8] == 0 && q[9] == 0, "short zero group");
    float row[8];
    QMatrix m = make_qmatrix(3, 8, 4);
    dequantize_row(row, &m.t, 1);
    CHECK(row[0] == m.q[8] * m.s[2], "dequantized row uses the row's own scales");
    free(m.q); free(m.s);
}

/* Issue 14, D1: a NaN or an infinity in an activation (finite extremes in a model can
 * overflow one) must not reach a float -> int conversion (undefined behaviour, which
 * UBSan reports here): the group's integers are 0, its scale NaN, so the NaN carries on. */
static void test_quantize_non_finite(void) {
    float x[8] = {1.0f, NAN, 2.0f, 3.0f, INFINITY, 0.5f, -INFINITY, 1.0f};
    int8_t q[8];
    int16_t q16[8];
    float s[2], s16[2];
    quantize_q80(q, s, x, 8, 4);
    quantize_a16(q16, s16, x, 8, 4);
    CHECK(isnan(s[0]) && isnan(s[1]) && isnan(s16[0]) && isnan(s16[1]), "non-finite: NaN scale");
    int zero = 1;
    for (int i = 0; i < 8; i++) zero &= q[i] == 0 && q16[i] == 0;
    CHECK(zero, "non-finite groups quantize to 0");
    /* subnormal groups: the scale loses precision, x / scale may round past 127 */
    float tiny[4] = {1.0e-40f, -9.9e-41f, 3.0e-41f, 0.0f};
    quantize_q80(q, s, tiny, 4, 4);
    quantize_a16(q16, s16, tiny, 4, 4);
    CHECK(q[0] <= 127 && q[1] >= -127 && q16[0] <= 32767 && q16[1] >= -32767, "subnormal in range");
}

static void test_f32_fast(void) {
    size_t n = 77, d = 5;
    float *w = malloc(n * d * sizeof *w), x[77], a[5], b[5];
    for (size_t i = 0; i < n * d; i++) w[i] = uniform();
    for (size_t j = 0; j < n; j++) x[j] = uniform();
    Tensor t = {.type = TENSOR_F32, .rows = d, .cols = n, .f = w};
    Activation xa = {.f = x, .n = n};
    matvec_ref(a, &t, &xa);
    matvec_fast(b, &t, &xa);
    for (size_t i = 0; i < d; i++) CHECK(fabsf(a[i] - b[i]) < 1e-4f, "fast fp32 row %zu", i);
    free(w);
}

static void test_sampler(void) {
    float p[5] = {0.1f, 0.3f, 0.3f, 0.2f, 0.1f};
    CHECK(sample_argmax(p, 5) == 1, "argmax takes the first of equal maxima");
    CHECK(sample_mult(p, 5, 0.0f) == 0, "coin 0 picks the first token");
    CHECK(sample_mult(p, 5, 0.4f - 1e-7f) == 1, "just inside the second cdf step");
    CHECK(sample_mult(p, 5, 0.99999f) == 4, "coin near 1 picks the last token");
    ProbIndex pi[5];
    /* equal probabilities keep index order: 1 before 2 */
    CHECK(sample_topp(p, 5, 0.5f, pi, 0.0f) == 1, "top-p tie order");
    CHECK(sample_topp(p, 5, 0.5f, pi, 0.6f) == 2, "top-p second of the tie");
    /* a nucleus of one token */
    float peaked[4] = {0.97f, 0.01f, 0.01f, 0.01f};
    CHECK(sample_topp(peaked, 4, 0.9f, pi, 0.999f) == 0, "nucleus of one");
    Sampler s;
    sampler_init(&s, 5, 0.0f, 0.9f, 1);
    float logits[5] = {1, 5, 5, 2, 0};
    CHECK(sampler_sample(&s, logits) == 1, "greedy");
    sampler_free(&s);
}

/* The compiler's own binary16 conversions, where it has the type, as the reference. */
#if defined(__FLT16_MAX__)
static float ref_half_to_float(uint16_t bits) {
    _Float16 h;
    memcpy(&h, &bits, 2);
    return (float)h;
}
static uint16_t ref_half_from_float(float f) {
    _Float16 h = (_Float16)f;
    uint16_t bits;
    memcpy(&bits, &h, 2);
    return bits;
}
#else
#define ref_half_to_float half_to_float
#define ref_half_from_float half_from_float
#endif

/* The integer binary16 conversions give the compiler's _Float16 bits (used where the
 * hardware converts; the integer code serves everything else, vendor compilers too). */
static void test_half(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = half_to_float_soft((uint16_t)h), b = ref_half_to_float((uint16_t)h);
        int nan = ((h >> 10) & 31) == 31 && (h & 0x3ff);
        if (nan ? !(isnan(a) && isnan(b)) : memcmp(&a, &b, 4) != 0) bad++;
        if (!nan && half_from_float_soft(a) != h) bad++; /* round trip */
    }
    CHECK(bad == 0, "binary16 -> fp32: %d mismatches", bad);
    bad = 0;
    unsigned long long state = 7;
    for (int i = 0; i < 2000000; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t bits = (uint32_t)(state >> 17);
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        if (half_from_float_soft(f) != ref_half_from_float(f)) bad++;
    }
    const float edges[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e9f, -1e9f, 0x1p-24f,
                           0x1p-25f, 0x1.0001p-25f, 0x1.8p-24f, 0x1p-14f, 0x1.ffcp-15f,
                           0x1.ffep-15f, 1.0009765625f, 1.00048828125f, 1.000732421875f,
                           INFINITY, -INFINITY, 1e-40f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        if (half_from_float_soft(edges[i]) != ref_half_from_float(edges[i])) bad++;
    CHECK(bad == 0, "fp32 -> binary16: %d mismatches", bad);
}

/* Bits equal, or both NaN (whose payloads the ISAs propagate differently). */
static int same_bits(float a, float b) {
    return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b));
}

/* The fp32 attention (kernels.h, attention_f32) against run.c's (ops.c attention_head,
 * keys by position): the reference (kernels_ref), the ISA's (kernels_isa, when it has one)
 * and the dispatcher, bit for bit, scores and outputs, none writing past att[pos] or
 * out[head_size - 1]. Head sizes odd and around the vector lengths (LMUL 8: 32 lanes at
 * VLEN 128), positions 0 to past 8 x 32, strides larger than the data; random values,
 * then zeros of both signs, subnormals, huge values (inf and NaN scores). */
static void check_attention_f32(int hs, int pos, int kind) {
    const size_t n = (size_t)pos + 1, kv_stride = (size_t)hs + 3, max_pos = n + 5;
    float *q = malloc((size_t)hs * sizeof *q);
    float *key = malloc(n * kv_stride * sizeof *key); /* run.c's [pos][kv_dim] */
    float *keyt = malloc((size_t)hs * max_pos * sizeof *keyt); /* transposed */
    float *value = malloc(n * kv_stride * sizeof *value);
    float *att[4], *out[4];
    for (int j = 0; j < 4; j++) {
        att[j] = malloc((n + 1) * sizeof(float));
        out[j] = malloc(((size_t)hs + 1) * sizeof(float));
        att[j][n] = out[j][hs] = 12345.0f;
    }
    for (int i = 0; i < hs; i++) q[i] = uniform() * 4.0f;
    for (size_t t = 0; t < n * kv_stride; t++) {
        key[t] = uniform();
        value[t] = uniform();
        if (kind == 1) { /* zeros of both signs, subnormals */
            float r = uniform();
            key[t] = r < -0.5f ? -0.0f : r < 0.0f ? 0.0f : r < 0.5f ? key[t] * 0x1p-140f : key[t];
            value[t] = t % 3 ? value[t] * 0x1p-130f : -0.0f;
        } else if (kind == 2 && t % 7 == 0) { /* huge: inf and NaN scores */
            key[t] *= 0x1p126f;
        }
    }
    if (kind == 1) q[0] = -0.0f;
    for (size_t t = 0; t < n; t++)
        for (int i = 0; i < hs; i++) keyt[(size_t)i * max_pos + t] = key[t * kv_stride + (size_t)i];
    attention_head(out[0], att[0], q, key, value, pos, hs, kv_stride);
    kernels_ref.attention_f32(out[1], att[1], q, keyt, max_pos, value, kv_stride, pos, hs);
    attention_f32(out[2], att[2], q, keyt, max_pos, value, kv_stride, pos, hs);
    const int isa = kernels_isa.attention_f32 != NULL;
    if (isa) kernels_isa.attention_f32(out[3], att[3], q, keyt, max_pos, value, kv_stride, pos, hs);
    int bad = 0;
    for (int j = 1; j < 3 + isa; j++) {
        for (size_t t = 0; t < n; t++) bad += !same_bits(att[0][t], att[j][t]);
        for (int i = 0; i < hs; i++) bad += !same_bits(out[0][i], out[j][i]);
        bad += att[j][n] != 12345.0f || out[j][hs] != 12345.0f;
    }
    CHECK(bad == 0, "attention_f32 head_size %d pos %d kind %d: %d differences", hs, pos, kind,
          bad);
    for (int j = 0; j < 4; j++) {
        free(att[j]);
        free(out[j]);
    }
    free(q);
    free(key);
    free(keyt);
    free(value);
}

static void test_attention_f32(void) {
    static const int sizes[] = {1, 2, 3, 5, 8, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 97};
    static const int far[] = {63, 64, 65, 95, 96, 127, 128, 129, 255, 256, 257, 300};
    for (size_t h = 0; h < sizeof sizes / sizeof *sizes; h++) {
        for (int pos = 0; pos < 40; pos++) check_attention_f32(sizes[h], pos, 0);
        for (size_t p = 0; p < sizeof far / sizeof *far; p++)
            for (int kind = 0; kind < 3; kind++) check_attention_f32(sizes[h], far[p], kind);
    }
}

/* The fp32 KV cache end to end: positions stored through kv_cache_key/value/store (keys
 * transposed), grouped-query heads (n_kv_heads < n_heads), layer 1 of 2; kv_cache_attention
 * against attention_head over the same keys and values by position (run.c's cache). */
static void test_kv_cache_f32(void) {
    const ModelConfig c = {.dim = 60, .hidden_dim = 8, .n_layers = 2, .n_heads = 6,
                           .n_kv_heads = 2, .vocab_size = 4, .seq_len = 40,
                           .format = FORMAT_V1};
    const int hs = c.dim / c.n_heads, kv_dim = hs * c.n_kv_heads, max_pos = 37;
    KvCache kv;
    CHECK(kv_cache_init(&kv, &c, max_pos) == 0, "kv_cache_init");
    float *keys = malloc((size_t)max_pos * kv_dim * sizeof *keys);
    float *values = malloc((size_t)max_pos * kv_dim * sizeof *values);
    float q[60], att[2][37], out[2][10];
    int bad = 0;
    for (int pos = 0; pos < max_pos; pos++) {
        for (int l = 0; l < c.n_layers; l++) {
            float *k = kv_cache_key(&kv, l, pos), *v = kv_cache_value(&kv, l, pos);
            for (int i = 0; i < kv_dim; i++) {
                k[i] = uniform();
                v[i] = uniform();
                if (l == 1) {
                    keys[pos * kv_dim + i] = k[i];
                    values[pos * kv_dim + i] = v[i];
                }
            }
            kv_cache_store(&kv, l, pos);
        }
        for (int i = 0; i < c.dim; i++) q[i] = uniform() * 3.0f;
        for (int h = 0; h < c.n_heads; h++) {
            const int kvh = h / (c.n_heads / c.n_kv_heads);
            kv_cache_attention(&kv, 1, kvh, out[0], att[0], q + h * hs, pos, hs);
            attention_head(out[1], att[1], q + h * hs, keys + kvh * hs, values + kvh * hs, pos,
                           hs, (size_t)kv_dim);
            bad += memcmp(att[0], att[1], (size_t)(pos + 1) * sizeof(float)) != 0;
            bad += memcmp(out[0], out[1], sizeof out[0]) != 0;
        }
    }
    CHECK(bad == 0, "fp32 KV cache (GQA) vs run.c's attention: %d differences", bad);
    kv_cache_free(&kv);
    free(keys);
    free(values);
}

static void test_utf8(void) {
    CHECK(utf8_invalid_at("Once upon a time") == 0, "ascii");
    CHECK(utf8_invalid_at("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\x89") == 0, "valid multibyte");
    CHECK(utf8_invalid_at("ab\xff") == 3, "invalid byte");
    CHECK(utf8_invalid_at("a\xc3") == 2, "truncated sequence");
    CHECK(utf8_invalid_at("\xc0\xaf") == 1, "overlong");
    CHECK(utf8_invalid_at("\xed\xa0\x80") == 1, "surrogate");
    CHECK(utf8_invalid_at("\x80") == 1, "stray continuation");
}

int main(void) {
    test_q80_shapes();
    test_quantize_edges();
    test_quantize_non_finite();
    test_f32_fast();
    test_sampler();
    test_utf8();
    test_half();
    test_attention_f32();
    test_kv_cache_f32();
    return report();
}
