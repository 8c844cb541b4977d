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

uint16_t half_from_float_soft(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) /* inf stays inf; NaN stays a (quiet) NaN */
        return (uint16_t)(sign | 0x7c00u | (mag > 0x7f800000u ? 0x200u | ((mag >> 13) & 0x3ffu) : 0u));
    if (mag >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (mag < 0x38800000u) { /* a binary16 subnormal (or zero): units of 2^-24 */
        if (mag < 0x33000000u) return (uint16_t)sign; /* below half the smallest: 0 */
        uint32_t e = mag >> 23, m = (mag & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* value = m * 2^(e - 150); units of 2^-24: m >> (126 - e) */
        uint32_t q = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        q += rest > half || (rest == half && (q & 1u));
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((mag >> 13) - (112u << 10)), rest = mag & 0x1fffu;
    q += rest > 0x1000u || (rest == 0x1000u && (q & 1u)); /* may carry into the exponent */
    return (uint16_t)(sign | q);
}

/* The 15 bits below the sign, placed under fp32's exponent and mantissa and scaled by
 * 2^112, are the value exactly (binary16 subnormals become normal fp32 numbers; a power
 * of two scaling is exact), branch-free so loops over the cache vectorise. */
float half_to_float_soft(uint16_t h) {
    uint32_t mag = (uint32_t)(h & 0x7fffu) << 13, bits;
    float f;
    memcpy(&f, &mag, 4);
    f *= 0x1p112f;
    memcpy(&bits, &f, 4);
    if ((h & 0x7c00u) == 0x7c00u) bits = 0x7f800000u | (mag & 0x7fffffu); /* inf, NaN */
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &bits, 4);
    return f;
}

/* _Float16 only where the hardware converts (the C906's Zfh, x86's F16C, Armv8): elsewhere
 * gcc calls libgcc for every conversion, slower than the integer code above. */
#if defined(__FLT16_MAX__) && (defined(__riscv_zfh) || defined(__F16C__) || defined(__aarch64__))
uint16_t half_from_float(float f) {
    _Float16 h = (_Float16)f;
    uint16_t bits;
    memcpy(&bits, &h, 2);
    return bits;
}
float half_to_float(uint16_t bits) {
    _Float16 h;
    memcpy(&h, &bits, 2);
    return (float)h;
}
#else
uint16_t half_from_float(float f) { return half_from_float_soft(f); }
float half_to_float(uint16_t h) { return half_to_float_soft(h); }
#endif
