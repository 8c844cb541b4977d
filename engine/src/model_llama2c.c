/* Loading llama2.c checkpoints: legacy v0 (fp32, 28-byte header), v1 (fp32, "ak42" header)
 * and v2 (Q8_0, as llama2.c's export.py --version 2 and runq.c). Every header field is
 * checked, and the file size must be exactly what the header implies, before any tensor
 * is touched. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define AK42_MAGIC 0x616b3432u
#define AK42_HEADER_BYTES 256
#define V0_HEADER_BYTES 28

static int32_t read_i32(const unsigned char *p) {
    int32_t v;
    memcpy(&v, p, 4); /* both targets are little-endian, like the files */
    return v;
}

/* Element counts of the tensors, in file order. */
typedef struct {
    size_t embedding, norms_per_layer, wq, wkv, wo, w13, w2, final_norm, freq_cis, classifier;
} TensorSizes;

static TensorSizes tensor_sizes(const ModelConfig *c) {
    /* validate_config's bounds keep every product below 2^62 */
    size_t dim = (size_t)c->dim, kv_dim = dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    TensorSizes s;
    s.embedding = (size_t)c->vocab_size * dim;
    s.norms_per_layer = dim;
    s.wq = dim * dim;
    s.wkv = kv_dim * dim;
    s.wo = dim * dim;
    s.w13 = (size_t)c->hidden_dim * dim;
    s.w2 = dim * (size_t)c->hidden_dim;
    s.final_norm = dim;
    s.freq_cis = (size_t)c->seq_len * (dim / (size_t)c->n_heads); /* v0 only: real + imag */
    s.classifier = c->shared_classifier ? 0 : s.embedding;
    return s;
}

/* Bytes of one stored matrix of n elements in the file's format. */
static size_t stored_bytes(const ModelConfig *c, size_t n) {
    if (c->format != FORMAT_Q80) return n * 4;
    return n + n / (size_t)c->group_size * 4;
}

static size_t expected_file_size(const ModelConfig *c) {
    TensorSizes s = tensor_sizes(c);
    size_t L = (size_t)c->n_layers;
    size_t norms = (2 * L * s.norms_per_layer + s.final_norm) * 4;
    size_t mats = stored_bytes(c, s.embedding) +
                  L * (stored_bytes(c, s.wq) + 2 * stored_bytes(c, s.wkv) +
                       stored_bytes(c, s.wo) + 2 * stored_bytes(c, s.w13) +
                       stored_bytes(c, s.w2)) +
                  (s.classifier ? stored_bytes(c, s.classifier) : 0);
    if (c->format == FORMAT_V0) return V0_HEADER_BYTES + norms + mats + s.freq_cis * 4;
    return AK42_HEADER_BYTES + norms + mats;
}

static int parse_header(const char *path, const unsigned char *p, size_t size, ModelConfig *c,
                        Error *err) {
    memset(c, 0, sizeof *c);
    uint32_t magic = 0;
    if (size >= 4) memcpy(&magic, p, 4);
    if (magic == AK42_MAGIC) {
        if (size < AK42_HEADER_BYTES)
            return fail(err, "%s: truncated header (%zu bytes, need %d)", path, size,
                        AK42_HEADER_BYTES);
        int32_t version = read_i32(p + 4);
        if (version == 1) c->format = FORMAT_V1;
        else if (version == 2) c->format = FORMAT_Q80;
        else
            return fail(err, "%s: unsupported llama2.c file version %d (this engine reads v0 "
                        "legacy fp32, v1 fp32 and v2 Q8_0)", path, version);
        p += 8;
    } else {
        if (size < V0_HEADER_BYTES)
            return fail(err, "%s: file is %zu bytes, too short for a llama2.c checkpoint header",
                        path, size);
        c->format = FORMAT_V0;
    }
    int *fields[7] = {&c->dim, &c->hidden_dim, &c->n_layers, &c->n_heads, &c->n_kv_heads,
                      &c->vocab_size, &c->seq_len};
    for (int i = 0; i < 7; i++) *fields[i] = read_i32(p + 4 * i);

    if (c->format == FORMAT_V0) {
        /* negative vocab_size flags an unshared classifier (llama2.c's legacy convention) */
        c->shared_classifier = c->vocab_size > 0;
        if (c->vocab_size < 0 && c->vocab_size != INT_MIN) c->vocab_size = -c->vocab_size;
    } else {
        unsigned flag = p[28];
        if (flag > 1)
            return fail(err, "%s: shared_classifier flag is %u, expected 0 or 1", path, flag);
        c->shared_classifier = (int)flag;
    }
    if (model_validate_config(path, c, err)) return -1;

    if (c->format == FORMAT_Q80) {
        c->group_size = read_i32(p + 29);
        if (model_check_field(path, "group_size", c->group_size, 1, MODEL_MAX_WIDTH, err))
            return -1;
        TensorSizes s = tensor_sizes(c);
        size_t all[] = {s.embedding, s.wq, s.wkv, s.wo, s.w13, s.w2};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (all[i] % (size_t)c->group_size != 0)
                return fail(err, "%s: group_size %d does not divide a tensor of %zu values",
                            path, c->group_size, all[i]);
    }
    size_t want = expected_file_size(c);
    if (size != want)
        return fail(err, "%s: file is %zu bytes but its %s header (dim %d, hidden %d, layers %d, "
                    "heads %d/%d, vocab %d, seq_len %d) implies %zu bytes: %s", path, size,
                    format_name(c->format), c->dim, c->hidden_dim, c->n_layers, c->n_heads,
                    c->n_kv_heads, c->vocab_size, c->seq_len, want,
                    size < want ? "truncated" : "trailing data or a wrong header");
    return 0;
}

/* Hands out consecutive regions of the mapping; the total was checked beforehand. */
typedef struct {
    const unsigned char *base;
    size_t off;
} Cursor;

static const void *take(Cursor *cur, size_t bytes) {
    const void *p = cur->base + cur->off;
    cur->off += bytes;
    return p;
}

static const float *take_f32(Cursor *cur, size_t n) { return take(cur, n * 4); }

static Tensor take_matrix(Cursor *cur, const ModelConfig *c, size_t rows, size_t cols) {
    Tensor t = {.rows = rows, .cols = cols};
    size_t n = rows * cols;
    if (c->format == FORMAT_Q80) {
        t.type = TENSOR_Q80;
        t.group_size = (size_t)c->group_size;
        t.q = take(cur, n);
        t.s = take(cur, n / t.group_size * 4);
    } else {
        t.type = TENSOR_F32;
        t.f = take_f32(cur, n);
    }
    return t;
}

static void map_tensors(Model *m) {
    const ModelConfig *c = &m->cfg;
    size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t kv_dim = dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    size_t vocab = (size_t)c->vocab_size;
    Cursor cur = {m->map, c->format == FORMAT_V0 ? V0_HEADER_BYTES : AK42_HEADER_BYTES};

    const float *rms_att = NULL, *rms_ffn = NULL;
    if (c->format == FORMAT_V0) {
        m->embedding = take_matrix(&cur, c, vocab, dim);
        rms_att = take_f32(&cur, L * dim);
    } else { /* v1 and v2 put all norms first */
        rms_att = take_f32(&cur, L * dim);
        rms_ffn = take_f32(&cur, L * dim);
        m->rms_final = take_f32(&cur, dim);
        m->embedding = take_matrix(&cur, c, vocab, dim);
    }
    for (size_t l = 0; l < L; l++) m->layers[l].wq = take_matrix(&cur, c, dim, dim);
    for (size_t l = 0; l < L; l++) m->layers[l].wk = take_matrix(&cur, c, kv_dim, dim);
    for (size_t l = 0; l < L; l++) m->layers[l].wv = take_matrix(&cur, c, kv_dim, dim);
    for (size_t l = 0; l < L; l++) m->layers[l].wo = take_matrix(&cur, c, dim, dim);
    if (c->format == FORMAT_V0) rms_ffn = take_f32(&cur, L * dim);
    for (size_t l = 0; l < L; l++) m->layers[l].w1 = take_matrix(&cur, c, hidden, dim);
    for (size_t l = 0; l < L; l++) m->layers[l].w2 = take_matrix(&cur, c, dim, hidden);
    for (size_t l = 0; l < L; l++) m->layers[l].w3 = take_matrix(&cur, c, hidden, dim);
    if (c->format == FORMAT_V0) {
        m->rms_final = take_f32(&cur, dim);
        take_f32(&cur, (size_t)c->seq_len * (dim / (size_t)c->n_heads)); /* unused freq_cis */
    }
    m->classifier = c->shared_classifier ? m->embedding : take_matrix(&cur, c, vocab, dim);
    for (size_t l = 0; l < L; l++) {
        m->layers[l].rms_att = rms_att + l * dim;
        m->layers[l].rms_ffn = rms_ffn + l * dim;
    }
}

/* Every float the arithmetic reads is finite: the norms, and the Q8_0 scales or the fp32
 * weights (v0's unused freq_cis table is not read). One pass over the file at load: its
 * pages are read by the first token anyway (the embedding, when not shared, one row a
 * token: a bad row would still end as a clean error here instead of NaN logits). */
static int check_matrix(const char *path, const char *name, long layer, const Tensor *t,
                        Error *err) {
    size_t n = t->rows * t->cols;
    if (t->type == TENSOR_Q80)
        return model_check_f32(path, name, layer, "scale", t->s, n / t->group_size, err);
    return model_check_f32(path, name, layer, "value", t->f, n, err);
}

static int check_finite(const Model *m, const char *path, Error *err) {
    const ModelConfig *c = &m->cfg;
    size_t dim = (size_t)c->dim;
    if (model_check_f32(path, "rms_final", -1, "value", m->rms_final, dim, err) ||
        check_matrix(path, "embedding", -1, &m->embedding, err) ||
        (!c->shared_classifier && check_matrix(path, "classifier", -1, &m->classifier, err)))
        return -1;
    for (size_t l = 0; l < (size_t)c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        const Tensor *mats[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
        static const char *const names[7] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
        if (model_check_f32(path, "rms_att", (long)l, "value", w->rms_att, dim, err) ||
            model_check_f32(path, "rms_ffn", (long)l, "value", w->rms_ffn, dim, err))
            return -1;
        for (int k = 0; k < 7; k++)
            if (check_matrix(path, names[k], (long)l, mats[k], err)) return -1;
    }
    return 0;
}

/* v0 has no magic: whatever no other loader recognizes is tried as one (the size check
 * then rejects what is not). */
static int recognizes(const unsigned char *p, size_t size) {
    (void)p, (void)size;
    return 1;
}

static int open_llama2c(Model *m, const char *path, Error *err) {
    if (parse_header(path, m->map, m->map_size, &m->cfg, err) != 0) return -1;
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    if (!m->layers) return fail(err, "%s: out of memory", path);
    map_tensors(m);
    return check_finite(m, path, err);
}

static size_t streamed_bytes(const Model *m) {
    const ModelConfig *c = &m->cfg;
    TensorSizes s = tensor_sizes(c);
    size_t L = (size_t)c->n_layers, vocab_row = s.embedding / (size_t)c->vocab_size;
    size_t layer = stored_bytes(c, s.wq) + 2 * stored_bytes(c, s.wkv) + stored_bytes(c, s.wo) +
                   2 * stored_bytes(c, s.w13) + stored_bytes(c, s.w2);
    return (2 * L * s.norms_per_layer + s.final_norm) * 4 + L * layer +
           stored_bytes(c, s.embedding) + stored_bytes(c, vocab_row);
}

const ModelLoader llama2c_loader = {recognizes, open_llama2c, streamed_bytes};
