/* exp_fast: a vectorisable e^x for the quantized path's sampler (softmax_fast) and the
 * faithful path's interval bounds (faithful_decide.c), in fp32 operations each rounded
 * once (no FMA), so the scalar code here and the RVV lanes of kernels_rvv.c give the same
 * bits (engine/tests/test_softmax.c checks both against each other and against expf).
 *
 * Cephes' expf: n = round(x log2 e) (the 1.5 x 2^23 trick: round to nearest even), r = x -
 * n ln 2 in two parts (Cody-Waite: n C1 is exact, x - n C1 exact by Sterbenz), e^r by a
 * degree-7 polynomial, times 2^n by adding n to the exponent bits.
 *
 * Contract (every float checked by `test_softmax --exhaustive`: at most 0.99 ulp; the test
 * checks a sample): for EXP_FAST_MIN <= x <= EXP_FAST_MAX the result is within
 * EXP_FAST_ULP units in the last place of e^x (relative error below EXP_FAST_REL); x <
 * EXP_FAST_MIN (including -inf) gives +0 (e^x < 2^-124 there), x > EXP_FAST_MAX
 * (including +inf) gives +inf, NaN gives NaN. */
#ifndef LLAMA2_EXP_FAST_H
#define LLAMA2_EXP_FAST_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXP_FAST_MIN (-86.5f) /* n >= -125: the result stays a normal float */
#define EXP_FAST_MAX 88.0f    /* n <= 127 */
#define EXP_FAST_ULP 2
/* |exp_fast(x) - e^x| <= EXP_FAST_REL e^x in [EXP_FAST_MIN, EXP_FAST_MAX]: 2 ulp of a
 * float in [1, 2) is 2^-22 relative to it, at most 2^-22 relative to the value. The exponent
 * is an integer so that static assertions can use it (a floating comparison is not an
 * integer constant expression for every C11 compiler: clang refuses it). */
#define EXP_FAST_REL_BITS 22
#define EXP_FAST_REL (1.0 / (double)(1L << EXP_FAST_REL_BITS))

#define EXP_FAST_LOG2E 1.44269504088896341f
#define EXP_FAST_MAGIC 0x1.8p23f /* adding it rounds to an integer (|v| < 2^22) */
#define EXP_FAST_C1 0.693359375f /* ln 2 = C1 - C2, C1 with 9 significant bits */
#define EXP_FAST_C2 (-2.12194440e-4f)
#define EXP_FAST_P0 1.9875691500e-4f
#define EXP_FAST_P1 1.3981999507e-3f
#define EXP_FAST_P2 8.3334519073e-3f
#define EXP_FAST_P3 4.1665795894e-2f
#define EXP_FAST_P4 1.6666665459e-1f
#define EXP_FAST_P5 5.0000001201e-1f

/* The lanes a softmax_fast sums separately, lane i % SOFTMAX_LANES for x[i]: a fixed
 * number, so the sum's order (and bits) do not depend on the vector length. */
#define SOFTMAX_LANES 16

/* e^x for EXP_FAST_MIN <= x <= EXP_FAST_MAX. The caller compiles it without contraction
 * (kernels_ref.c, faithful_decide.c: -ffp-contract=off). */
static inline float exp_fast_core(float x) {
    float t = x * EXP_FAST_LOG2E + EXP_FAST_MAGIC;
    float n = t - EXP_FAST_MAGIC;
    float r = x - n * EXP_FAST_C1;
    r = r - n * EXP_FAST_C2;
    float p = EXP_FAST_P0 * r + EXP_FAST_P1;
    p = p * r + EXP_FAST_P2;
    p = p * r + EXP_FAST_P3;
    p = p * r + EXP_FAST_P4;
    p = p * r + EXP_FAST_P5;
    float y = p * (r * r) + r + 1.0f;
    uint32_t tb, magic, yb;
    const float m = EXP_FAST_MAGIC;
    memcpy(&tb, &t, 4);
    memcpy(&magic, &m, 4);
    memcpy(&yb, &y, 4);
    yb += (tb - magic) << 23; /* + n in the exponent: t's bits are magic's plus n */
    memcpy(&y, &yb, 4);
    return y;
}

static inline float exp_fast(float x) {
    if (x != x) return x;
    if (x < EXP_FAST_MIN) return 0.0f;
    if (x > EXP_FAST_MAX) return (float)INFINITY;
    return exp_fast_core(x);
}

/* The SOFTMAX_LANES partial sums added in one fixed order (pairwise). */
static inline float softmax_lanes_sum(const float *a) {
    float s8[8], s4[4];
    for (int i = 0; i < 8; i++) s8[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) s4[i] = s8[i] + s8[i + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

#endif
