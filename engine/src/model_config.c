/* What every format's header must satisfy before anything is sized from it, and the
 * formats' names. A leaf: the loaders (model_llama2c.c, model_packed.c) call it. */
#include <stdio.h>

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

