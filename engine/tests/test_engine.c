/* C-level tests of the kernels, the sampler and the UTF-8 check; built and run by
 * `make check` (and under ASan/UBSan by the Python suite). Prints "N passed, N failed". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../include/llama2.h"
#include "../src/kernels.h"
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
    return report();
}
