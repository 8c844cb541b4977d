/* The traits table resolved: each kernel from the first kernel set that has it, the ISA's
 * overrides (kernels_$(KERNELS).c) first, then the generic fast fp32 kernels
 * (kernels_fast.c), then the generic references (kernels_ref.c), which have every entry. */
#include "kernels.h"

#define FIRST(type, field)                                                                 \
    (kernels_isa.types[type].field    ? kernels_isa.types[type].field                      \
     : kernels_fast.types[type].field ? kernels_fast.types[type].field                     \
                                      : kernels_ref.types[type].field)

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
    AttentionF16Fn f = kernels_isa.attention_f16 ? kernels_isa.attention_f16
                                                 : kernels_ref.attention_f16;
    f(out, att, q, key, key_stride, value, value_stride, pos, head_size);
}

const char *kernels_name(void) { return kernels_isa.name; }
