/* exp_fast and softmax_fast (kernels.h, exp_fast.h): the scalar exp_fast against e^x
 * (within EXP_FAST_ULP ulp over [EXP_FAST_MIN, EXP_FAST_MAX], on every 1021st float there,
 * or every float with --exhaustive), its special cases (-inf, huge negatives, 0, NaN, inf),
 * the build's kernels (the ISA's where it has them) against the scalar code bit for bit,
 * and softmax_fast against the softmax in double. Built and run by `make check`; the riscv
 * targets run it under QEMU (`invoke engine --target rv64gcv --check`). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/exp_fast.h"
#include "../src/kernels.h"
#include "../src/ops.h"
#include "../src/sampler.h"

#include "check.h"

static float from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

/* |y - e^x| in units of the last place of e^x (double's exp is far more accurate) */
static double ulp_error(float x, float y) {
    double e = exp((double)x);
    int ex;
    frexp(e, &ex); /* e = m 2^ex, 0.5 <= m < 1: a float's ulp there is 2^(ex - 24) */
    return fabs((double)y - e) / ldexp(1.0, ex - 24);
}

/* Every float in [EXP_FAST_MIN, EXP_FAST_MAX] whose bit pattern is a multiple of step
 * (1: all of them); returns the largest ulp error. */
static double sweep(uint32_t step) {
    double worst = 0.0;
    float worst_x = 0.0f;
    const uint32_t ranges[2][2] = {{0u, bits_of(EXP_FAST_MAX)},
                                   {0x80000000u, bits_of(EXP_FAST_MIN)}};
    for (int r = 0; r < 2; r++)
        for (uint32_t b = ranges[r][0]; b <= ranges[r][1]; b += step) {
            float x = from_bits(b);
            double err = ulp_error(x, exp_fast(x));
            if (err > worst) worst = err, worst_x = x;
            if (ranges[r][1] - b < step) break;
        }
    printf("exp_fast: worst error %.3f ulp at x = %a\n", worst, (double)worst_x);
    return worst;
}

static void test_exp_accuracy(int exhaustive) {
    double worst = sweep(exhaustive ? 1u : 1021u);
    CHECK(worst <= EXP_FAST_ULP, "exp_fast off by %.3f ulp (contract: %d)", worst, EXP_FAST_ULP);
    /* the contract's relative bound, used by the faithful path's intervals */
    const float xs[] = {EXP_FAST_MIN, -20.0f, -1.0f, -0x1p-30f, 0x1p-30f, 0.5f, 10.0f, EXP_FAST_MAX};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        double e = exp((double)xs[i]);
        CHECK(fabs((double)exp_fast(xs[i]) - e) <= EXP_FAST_REL * e, "relative bound at %a",
              (double)xs[i]);
    }
}

static void test_exp_specials(void) {
    CHECK(exp_fast(0.0f) == 1.0f && exp_fast(-0.0f) == 1.0f, "exp_fast(0) = 1 exactly");
    CHECK(bits_of(exp_fast(-INFINITY)) == 0u, "exp_fast(-inf) = +0");
    CHECK(bits_of(exp_fast(-1e30f)) == 0u, "exp_fast(-1e30) = +0");
    CHECK(bits_of(exp_fast(-FLT_MAX)) == 0u, "exp_fast(-FLT_MAX) = +0");
    CHECK(bits_of(exp_fast(nextafterf(EXP_FAST_MIN, -INFINITY))) == 0u, "below the range: +0");
    CHECK(exp_fast(EXP_FAST_MIN) > 0.0f && isnormal(exp_fast(EXP_FAST_MIN)), "the range's end");
    CHECK(exp_fast(INFINITY) == INFINITY && exp_fast(89.0f) == INFINITY, "overflow: +inf");
    CHECK(isnan(exp_fast(NAN)) && isnan(exp_fast(-NAN)), "NaN stays NaN");
}

/* The build's exp_fast_array (the ISA's kernel where it has one) equals the scalar code bit
 * for bit: every length up to 70 (vector tails), specials included. */
static void test_exp_kernel(void) {
    enum { N = 4099 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    unsigned long long rng = 11;
    for (int i = 0; i < N; i++) x[i] = (random_f32(&rng) - 0.75f) * 200.0f;
    const float specials[] = {-INFINITY, INFINITY, NAN, 0.0f, -0.0f, -1e30f, 1e30f,
                              EXP_FAST_MIN, EXP_FAST_MAX, -86.6f, 88.1f, -103.0f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) x[i * 7] = specials[i];
    int bad = 0;
    for (int n = 0; n <= 70; n++) {
        exp_fast_array(y, x + n, (size_t)n);
        for (int i = 0; i < n; i++) {
            float want = exp_fast(x[n + i]);
            bad += isnan(want) ? !isnan(y[i]) : bits_of(y[i]) != bits_of(want);
        }
    }
    exp_fast_array(y, x, N);
    for (int i = 0; i < N; i++) {
        float want = exp_fast(x[i]);
        bad += isnan(want) ? !isnan(y[i]) : bits_of(y[i]) != bits_of(want);
    }
    CHECK(bad == 0, "exp_fast_array (%s) vs exp_fast: %d differences", kernels_name(), bad);
    free(x);
    free(y);
}

/* softmax_fast (the ISA's) against kernels_ref's bit for bit, and close to the exact one. */
static void test_softmax_kernel(void) {
    enum { N = 32003 };
    float *x = malloc(N * sizeof *x), *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    unsigned long long rng = 5;
    for (int i = 0; i < N; i++) x[i] = (random_f32(&rng) - 0.5f) * 40.0f;
    int bad = 0, far = 0;
    const int sizes[] = {1, 2, 15, 16, 17, 31, 33, 100, 32000, N};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int n = sizes[s];
        memcpy(a, x, (size_t)n * sizeof *a);
        memcpy(b, x, (size_t)n * sizeof *b);
        softmax_fast(a, n);
        kernels_ref.softmax_fast(b, n);
        double max = x[0], sum = 0.0; /* the softmax in double */
        for (int i = 1; i < n; i++) max = fmax(max, x[i]);
        for (int i = 0; i < n; i++) sum += exp((double)x[i] - max);
        for (int i = 0; i < n; i++) {
            bad += bits_of(a[i]) != bits_of(b[i]);
            double p = exp((double)x[i] - max) / sum; /* fp32 sums of 2,000 terms: 1e-4 */
            far += !(fabs((double)a[i] - p) <= 1e-4 * p + 1e-37);
        }
    }
    CHECK(bad == 0, "softmax_fast (%s) vs the portable one: %d differences", kernels_name(), bad);
    CHECK(far == 0, "softmax_fast vs the softmax in double: %d probabilities off by more than 1e-4", far);
    /* -inf logits get probability 0; a NaN makes the sum and every probability NaN, as in
     * run.c's softmax (the sampler then falls back to its argmax) */
    float y[20], z[20];
    for (int i = 0; i < 20; i++) y[i] = (float)i * 0.25f;
    y[3] = -INFINITY;
    memcpy(z, y, sizeof z);
    softmax_fast(y, 20);
    kernels_ref.softmax_fast(z, 20);
    CHECK(y[3] == 0.0f && y[19] > y[18] && y[18] > 0.0f, "-inf logits");
    CHECK(memcmp(y, z, sizeof y) == 0, "softmax_fast with -inf: differences");
    for (int i = 0; i < 20; i++) y[i] = (float)i * 0.25f;
    y[17] = NAN;
    memcpy(z, y, sizeof z);
    softmax_fast(y, 20);
    kernels_ref.softmax_fast(z, 20);
    for (int i = 0; i < 20; i++) bad += !isnan(y[i]) || !isnan(z[i]);
    CHECK(bad == 0, "softmax_fast with a NaN: %d probabilities not NaN", bad);
    free(x);
    free(a);
    free(b);
}

int main(int argc, char **argv) {
    int exhaustive = argc > 1 && strcmp(argv[1], "--exhaustive") == 0;
    test_exp_accuracy(exhaustive);
    test_exp_specials();
    test_exp_kernel();
    test_softmax_kernel();
    return report();
}
