/* What every format's header must satisfy before anything is sized from it, and the
 * formats' names. A leaf: the loaders (model_llama2c.c, model_packed.c) call it. */
#include <stdio.h>
#include <string.h>

#include "model.h"

/* Far beyond any llama2.c model, small enough that no product of them overflows 64 bits. */
#define MAX_LAYERS 4096
#define MAX_VOCAB (1 << 24)
#define MAX_SEQ_LEN (1 << 20)

const char *format_name(FileFormat f) {
    switch (f) {
    case FORMAT_V0: return "v0 (legacy fp32)";
    case FORMAT_V1: return "v1 (fp32)";
    case FORMAT_Q80: return "v2 (Q8_0)";
    case FORMAT_PACKED_F32: return "packed fp32";
    case FORMAT_PACKED_Q8: return "packed q8";
    case FORMAT_PACKED_Q4: return "packed q4";
    case FORMAT_PACKED_FAITHFUL: return "packed faithful (fp32 + int8 classifier)";
    }
    return "?";
}

int model_check_field(const char *path, const char *name, int v, int lo, int hi, Error *err) {
    if (v < lo || v > hi)
        return fail(err, "%s: header field %s = %d is out of range [%d, %d]: not a llama2.c "
                    "checkpoint, or a corrupted one", path, name, v, lo, hi);
    return 0;
}

int model_validate_config(const char *path, const ModelConfig *c, Error *err) {
    if (model_check_field(path, "dim", c->dim, 1, MODEL_MAX_WIDTH, err) ||
        model_check_field(path, "hidden_dim", c->hidden_dim, 1, MODEL_MAX_WIDTH, err) ||
        model_check_field(path, "n_layers", c->n_layers, 1, MAX_LAYERS, err) ||
        model_check_field(path, "n_heads", c->n_heads, 1, c->dim, err) ||
        model_check_field(path, "n_kv_heads", c->n_kv_heads, 1, c->n_heads, err) ||
        model_check_field(path, "vocab_size", c->vocab_size, 1, MAX_VOCAB, err) ||
        model_check_field(path, "seq_len", c->seq_len, 1, MAX_SEQ_LEN, err))
        return -1;
    if (c->dim % c->n_heads != 0)
        return fail(err, "%s: dim %d is not a multiple of n_heads %d", path, c->dim, c->n_heads);
    if ((c->dim / c->n_heads) % 2 != 0)
        return fail(err, "%s: head size %d is odd; RoPE rotates pairs", path, c->dim / c->n_heads);
    if (c->n_heads % c->n_kv_heads != 0)
        return fail(err, "%s: n_heads %d is not a multiple of n_kv_heads %d", path, c->n_heads,
                    c->n_kv_heads);
    return 0;
}


/* IEEE-754 binary32 / bfloat16: all exponent bits set is an infinity or a NaN. */
#define F32_EXP 0x7f800000u
#define BF16_EXP 0x7f80u

static int not_finite(const char *path, const char *tensor, long layer, const char *what,
                      size_t index, float v, Error *err) {
    char where[48] = "";
    if (layer >= 0) snprintf(where, sizeof where, " of layer %ld", layer);
    return fail(err, "%s: tensor %s%s: %s %zu is %g; every weight, scale and norm must be a "
                "finite number (a corrupted file: re-convert it with `invoke convert`)", path,
                tensor, where, what, index, (double)v);
}

int model_check_f32(const char *path, const char *tensor, long layer, const char *what,
                    const void *p, size_t n, Error *err) {
    const unsigned char *b = p;
    /* a branch-free pass over chunks (it vectorizes); the first bad value found after */
    for (size_t start = 0; start < n; start += 1024) {
        size_t end = n - start < 1024 ? n : start + 1024;
        uint32_t bad = 0;
        for (size_t i = start; i < end; i++) {
            uint32_t bits;
            memcpy(&bits, b + 4 * i, 4);
            bad |= (uint32_t)((bits & F32_EXP) == F32_EXP);
        }
        if (!bad) continue;
        for (size_t i = start; i < end; i++) {
            float v;
            memcpy(&v, b + 4 * i, 4);
            uint32_t bits;
            memcpy(&bits, &v, 4);
            if ((bits & F32_EXP) == F32_EXP)
                return not_finite(path, tensor, layer, what, i, v, err);
        }
    }
    return 0;
}

int model_check_packed_scales(const char *path, const char *tensor, long layer,
                              const Tensor *t, Error *err) {
    size_t block = packed_block_bytes(t->type), blocks = t->tiles * t->groups;
    size_t scales = block - 2 * PACK_ROWS; /* the scales end each block (tensor.h) */
    for (size_t k = 0; k < blocks; k++) {
        const unsigned char *s = t->p + k * block + scales;
        for (size_t r = 0; r < PACK_ROWS; r++) {
            uint16_t h;
            memcpy(&h, s + 2 * r, 2);
            if ((h & BF16_EXP) == BF16_EXP)
                return not_finite(path, tensor, layer, "scale of tile-group block", k,
                                  bf16_to_float(h), err);
        }
    }
    return 0;
}
