#include <math.h>

#include "kernels.h"

void matvec_f32_ref(float *out, const float *w, const float *x, size_t n, size_t d) {
    for (size_t i = 0; i < d; i++) {
        const float *row = w + i * n;
        float val = 0.0f;
        for (size_t j = 0; j < n; j++) val += row[j] * x[j];
        out[i] = val;
    }
}

void quantize_q80(int8_t *q, float *s, const float *x, size_t n, size_t gs) {
    for (size_t g = 0, start = 0; start < n; g++, start += gs) {
        size_t len = n - start < gs ? n - start : gs;
        float wmax = 0.0f;
        for (size_t i = 0; i < len; i++) {
            float a = fabsf(x[start + i]);
            if (a > wmax) wmax = a;
        }
        float scale = wmax / 127.0f;
        s[g] = scale;
        for (size_t i = 0; i < len; i++)  /* an all-zero group stays zero (runq.c: 0/0) */
            q[start + i] = scale == 0.0f ? 0 : (int8_t)roundf(x[start + i] / scale);
    }
}

void matvec_q80_ref(float *out, const Tensor *w, const Activation *x) {
    size_t n = w->cols, gs = w->group_size, xgs = x->group_size;
    for (size_t i = 0; i < w->rows; i++) {
        size_t base = i * n;
        float val = 0.0f;
        for (size_t j = 0; j < n;) {
            size_t wg = (base + j) / gs, xg = j / xgs;
            size_t end = (wg + 1) * gs - base;
            if ((xg + 1) * xgs < end) end = (xg + 1) * xgs;
            if (n < end) end = n;
            int32_t ival = 0;
            for (size_t k = j; k < end; k++) ival += (int32_t)x->q[k] * (int32_t)w->q[base + k];
            val += (float)ival * scale_at(w->s, wg) * x->s[xg];
            j = end;
        }
        out[i] = val;
    }
}

void matvec_q80_aligned(float *out, const Tensor *w, const Activation *x) {
    size_t n = w->cols, gs = w->group_size, groups = n / gs;
    for (size_t i = 0; i < w->rows; i++) {
        const int8_t *row = w->q + i * n;
        float val = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            int32_t ival = 0;
            const int8_t *wq = row + g * gs, *xq = x->q + g * gs;
            for (size_t k = 0; k < gs; k++) ival += (int32_t)xq[k] * (int32_t)wq[k];
            val += (float)ival * scale_at(w->s, i * groups + g) * x->s[g];
        }
        out[i] = val;
    }
}

void dequantize_row(float *out, const Tensor *w, size_t row) {
    size_t base = row * w->cols;
    for (size_t j = 0; j < w->cols; j++)
        out[j] = (float)w->q[base + j] * scale_at(w->s, (base + j) / w->group_size);
}
