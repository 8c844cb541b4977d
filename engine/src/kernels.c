/* The traits table resolved: each kernel from the first kernel set that has it, the ISA's
 * overrides (kernels_$(KERNELS).c) first, then the generic fast fp32 kernels
 * (kernels_fast.c), then the generic references (kernels_ref.c), which have every entry. */
#include "kernels.h"

#define FIRST(type, field)                                                                 \
    (kernels_isa.types[type].field    ? kernels_isa.types[type].field                      \
     : kernels_fast.types[type].field ? kernels_fast.types[type].field                     \
                                      : kernels_ref.types[type].field)
/* A kernel-set-wide entry (not per tensor type): the ISA's, else the reference. */
#define ISA_OR_REF(field) (kernels_isa.field ? kernels_isa.field : kernels_ref.field)

void matvec_ref(float *out, const Tensor *w, const Activation *x) {
    FIRST(w->type, matvec_ref)(out, w, x);
}

/* Where no set has a faster kernel (packed q8/q4 without an ISA's), the reference is it. */
void matvec_fast(float *out, const Tensor *w, const Activation *x) {
    MatvecFn f = FIRST(w->type, matvec_fast);
    (f ? f : FIRST(w->type, matvec_ref))(out, w, x);
}

void dequantize_row(float *out, const Tensor *w, size_t row) { FIRST(w->type, row)(out, w, row); }

void matvec_packed_q8a16(float *out, const Tensor *w, const int16_t *xq, const float *xs) {
    FIRST(TENSOR_PQ8, matvec_a16)(out, w, xq, xs);
}

void attention_f16(float *out, float *att, const float *q, const uint16_t *key,
                   size_t key_stride, const uint16_t *value, size_t value_stride, int pos,
                   int head_size) {
    ISA_OR_REF(attention_f16)(out, att, q, key, key_stride, value, value_stride, pos, head_size);
}

void attention_f32(float *out, float *att, const float *q, const float *key,
                   size_t key_stride, const float *value, size_t value_stride, int pos,
                   int head_size) {
    ISA_OR_REF(attention_f32)(out, att, q, key, key_stride, value, value_stride, pos, head_size);
}

void softmax_fast(float *x, int n) {
    ISA_OR_REF(softmax_fast)(x, n);
}

void exp_fast_array(float *y, const float *x, size_t n) {
    ISA_OR_REF(exp_fast)(y, x, n);
}

void swiglu_fast(float *hb, const float *hb2, size_t n) {
    ISA_OR_REF(swiglu_fast)(hb, hb2, n);
}

void quantize_q80(int8_t *q, float *s, const float *x, size_t n, size_t gs) {
    ISA_OR_REF(quantize_q80)(q, s, x, n, gs);
}

void refine_q4a16(float *val, const unsigned char *nib, const BlockQ8 *scales, size_t groups,
                  const int16_t *xq, const float *xs) {
    ISA_OR_REF(refine_q4a16)(val, nib, scales, groups, xq, xs);
}

const char *kernels_name(void) { return kernels_isa.name; }
