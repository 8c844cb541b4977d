/* Loading the engine's packed files (FORMAT.md): a header, a section table, page-aligned
 * row-tiled tensors. The table is checked against what the header implies — every kind,
 * layer, size and offset — and against the file size before any tensor is touched. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"

#define MAGIC "DUOPACK"
#define VERSION 1
#define TABLE_OFFSET 128
#define ENTRY_BYTES 24
#define PAGE 4096

enum {
    KIND_NORMS = 1,
    KIND_EMBEDDING = 2,
    KIND_WQ = 3,
    KIND_W3 = 9,
    KIND_CLASSIFIER = 10,
    KIND_CLASSIFIER_Q8 = 11, /* faithful files only */
};

static const char *kind_name(uint32_t kind) {
    static const char *const names[] = {"?",  "norms", "embedding", "wq",         "wk",
                                        "wv", "wo",    "w1",        "w2",         "w3",
                                        "classifier", "classifier_q8"};
    return kind <= KIND_CLASSIFIER_Q8 ? names[kind] : "?";
}

static int is_magic(const unsigned char *p, size_t size) {
    return size >= 8 && memcmp(p, MAGIC, 8) == 0; /* the 8 bytes include the NUL */
}

static int32_t i32_at(const unsigned char *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t u64_at(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static size_t ceil_div(size_t a, size_t b) { return a / b + (a % b != 0); }

static TensorType tensor_type(FileFormat f) {
    if (f == FORMAT_PACKED_F32 || f == FORMAT_PACKED_FAITHFUL) return TENSOR_PF32;
    return f == FORMAT_PACKED_Q8 ? TENSOR_PQ8 : TENSOR_PQ4;
}

/* A rows x cols matrix in the file's packed encoding (sizes bounded by the config checks:
 * no product overflows). */
static Tensor packed_tensor(FileFormat f, size_t rows, size_t cols) {
    Tensor t = {.type = tensor_type(f), .rows = rows, .cols = cols};
    t.tiles = ceil_div(rows, PACK_ROWS);
    if (t.type != TENSOR_PF32) {
        t.groups = ceil_div(cols, PACK_GROUP);
        t.group_size = PACK_GROUP;
    }
    return t;
}

static size_t tensor_bytes(const Tensor *t) {
    if (t->type == TENSOR_PF32) return t->tiles * t->cols * PACK_ROWS * 4;
    return t->tiles * t->groups * packed_block_bytes(t->type);
}

/* Section 11 of a faithful file: the classifier's q8 blocks, one fp32 residual norm per
 * (padded) row, then 16 bytes: the fp32 bound on the int8 rows' norms and 12 zero bytes;
 * then the second level: two fp32 norms per (padded) row, and per tile the int4 values. */
#define FAITHFUL_TRAILER 16

static Tensor classifier_q8_tensor(size_t rows, size_t cols) {
    return packed_tensor(FORMAT_PACKED_Q8, rows, cols);
}

/* The first level: what every token reads (the rest is read only for the rows the
 * certified sampler asks for). */
static size_t classifier_q8_streamed(size_t rows, size_t cols) {
    Tensor t = classifier_q8_tensor(rows, cols);
    return tensor_bytes(&t) + t.tiles * PACK_ROWS * 4 + FAITHFUL_TRAILER;
}

/* One tile's second level: two fp32 norms per row, then the int4 values. */
static size_t refine_block_bytes(const Tensor *t) {
    return 2 * PACK_ROWS * 4 + t->groups * (PACK_ROWS * PACK_GROUP / 2);
}

static size_t classifier_q8_bytes(size_t rows, size_t cols) {
    Tensor t = classifier_q8_tensor(rows, cols);
    return classifier_q8_streamed(rows, cols) + t.tiles * refine_block_bytes(&t);
}

/* The shape of section `i` of the expected sequence (norms, [embedding], 7 per layer,
 * classifier), with its kind and layer. */
typedef struct {
    uint32_t kind, layer;
    size_t rows, cols, bytes;
} Expected;

static Expected expected(const ModelConfig *c, size_t i) {
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t kv_dim = dim / (size_t)c->n_heads * (size_t)c->n_kv_heads;
    Expected e = {0};
    if (i == 0) {
        e.kind = KIND_NORMS;
        e.bytes = (2 * (size_t)c->n_layers + 1) * dim * 4;
        return e;
    }
    i--;
    if (!c->shared_classifier) {
        if (i == 0) {
            e.kind = KIND_EMBEDDING, e.rows = (size_t)c->vocab_size, e.cols = dim;
            goto sized;
        }
        i--;
    }
    if (i == (size_t)c->n_layers * 7) {
        e.kind = KIND_CLASSIFIER, e.rows = (size_t)c->vocab_size, e.cols = dim;
        goto sized;
    }
    if (i == (size_t)c->n_layers * 7 + 1) { /* faithful files only (section_count) */
        e.kind = KIND_CLASSIFIER_Q8, e.rows = (size_t)c->vocab_size, e.cols = dim;
        e.bytes = classifier_q8_bytes(e.rows, e.cols);
        return e;
    }
    e.layer = (uint32_t)(i / 7);
    e.kind = KIND_WQ + (uint32_t)(i % 7);
    static const int shapes[7][2] = {{0, 0}, {1, 0}, {1, 0}, {0, 0}, {2, 0}, {0, 2}, {2, 0}};
    const size_t widths[3] = {dim, kv_dim, hidden};
    e.rows = widths[shapes[i % 7][0]];
    e.cols = widths[shapes[i % 7][1]];
sized:;
    Tensor t = packed_tensor(c->format, e.rows, e.cols);
    e.bytes = tensor_bytes(&t);
    return e;
}

static size_t section_count(const ModelConfig *c) {
    return 2 + (size_t)!c->shared_classifier + 7 * (size_t)c->n_layers +
           (size_t)(c->format == FORMAT_PACKED_FAITHFUL);
}

static int parse(const char *path, const unsigned char *p, size_t size, ModelConfig *c,
                 Error *err) {
    memset(c, 0, sizeof *c);
    if (size < TABLE_OFFSET)
        return fail(err, "%s: truncated packed header (%zu bytes, need %d)", path, size,
                    TABLE_OFFSET);
    int32_t version = i32_at(p + 8), weights = i32_at(p + 12);
    if (version != VERSION)
        return fail(err, "%s: packed format version %d; this engine reads version %d "
                    "(re-convert with `invoke convert`)", path, version, VERSION);
    if (weights < 1 || weights > 4)
        return fail(err, "%s: packed weight type %d is not 1 (fp32), 2 (q8), 3 (q4) or 4 "
                    "(faithful)", path, weights);
    static const FileFormat formats[] = {FORMAT_PACKED_F32, FORMAT_PACKED_Q8, FORMAT_PACKED_Q4,
                                         FORMAT_PACKED_FAITHFUL};
    c->format = formats[weights - 1];
    int *fields[7] = {&c->dim, &c->hidden_dim, &c->n_layers, &c->n_heads, &c->n_kv_heads,
                      &c->vocab_size, &c->seq_len};
    for (int i = 0; i < 7; i++) *fields[i] = i32_at(p + 16 + 4 * i);
    int32_t shared = i32_at(p + 44), rows = i32_at(p + 48), group = i32_at(p + 52);
    int32_t n_sections = i32_at(p + 56);
    if (shared != 0 && shared != 1)
        return fail(err, "%s: shared_classifier is %d, expected 0 or 1", path, shared);
    c->shared_classifier = shared;
    if (model_validate_config(path, c, err)) return -1;
    /* a faithful file's layers are fp32; its int8 classifier's groups are implied */
    int want_group = c->format == FORMAT_PACKED_Q8 || c->format == FORMAT_PACKED_Q4 ? PACK_GROUP
                                                                                   : 0;
    if (rows != PACK_ROWS || group != want_group)
        return fail(err, "%s: tiles of %d rows and groups of %d columns; this engine reads "
                    "%d and %d", path, rows, group, PACK_ROWS, want_group);
    c->group_size = want_group;
    size_t n = section_count(c);
    if (n_sections < 0 || (size_t)n_sections != n)
        return fail(err, "%s: the header lists %d sections; a model of %d layers has %zu",
                    path, n_sections, c->n_layers, n);
    size_t table_end = TABLE_OFFSET + n * ENTRY_BYTES, end = table_end;
    if (size < table_end)
        return fail(err, "%s: truncated section table (file is %zu bytes, table ends at %zu)",
                    path, size, table_end);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *e = p + TABLE_OFFSET + i * ENTRY_BYTES;
        uint32_t kind = (uint32_t)i32_at(e), layer = (uint32_t)i32_at(e + 4);
        uint64_t off = u64_at(e + 8), bytes = u64_at(e + 16);
        Expected x = expected(c, i);
        if (kind != x.kind || layer != x.layer)
            return fail(err, "%s: section %zu is %s of layer %u; expected %s of layer %u", path,
                        i, kind_name(kind), layer, kind_name(x.kind), x.layer);
        if (bytes != x.bytes)
            return fail(err, "%s: section %zu (%s, layer %u) is %llu bytes; the header implies "
                        "%zu%s", path, i, kind_name(kind), layer, (unsigned long long)bytes,
                        x.bytes, kind == KIND_CLASSIFIER_Q8
                                     ? " (a faithful file from an older converter, without the "
                                       "second level? re-convert it with `invoke convert "
                                       "--format faithful`)"
                                     : "");
        if (off % PAGE != 0 || off < end || off > size || bytes > size - off)
            return fail(err, "%s: section %zu (%s, layer %u) at offset %llu is %s", path, i,
                        kind_name(kind), layer, (unsigned long long)off,
                        off % PAGE ? "not page-aligned"
                        : off < end ? "overlapping what precedes it"
                                    : "past the end of the file (truncated?)");
        end = (size_t)off + (size_t)bytes;
    }
    if (end != size)
        return fail(err, "%s: file is %zu bytes but its last section ends at %zu: trailing data",
                    path, size, end);
    return 0;
}

static const unsigned char *section(const Model *m, size_t i) {
    return (const unsigned char *)m->map + u64_at((const unsigned char *)m->map + TABLE_OFFSET +
                                                   i * ENTRY_BYTES + 8);
}

/* Every float the arithmetic reads is finite: the norms, every q8/q4 block scale, the fp32
 * tiles. One pass at load over what the first token reads anyway. A faithful file's fp32
 * classifier (and unshared embedding), which faithful.c reads a few rows at a time with
 * pread to keep them out of the RSS, is checked the same way: read in chunks with pread,
 * then dropped from the page cache, so the check grows neither the RSS nor the cache. */
#define CHECK_CHUNK 16384 /* floats per pread */

static int check_f32_unmapped(const Model *m, const char *path, const char *name,
                              const Tensor *t, Error *err) {
    size_t n = t->tiles * PACK_ROWS * t->cols;
    off_t at = (off_t)(t->p - (const unsigned char *)m->map);
    float *buf = malloc(CHECK_CHUNK * sizeof *buf);
    if (!buf) return fail(err, "%s: out of memory", path);
    int rc = 0;
    for (size_t done = 0; rc == 0 && done < n;) {
        size_t want = n - done < CHECK_CHUNK ? n - done : CHECK_CHUNK;
        if (model_pread(m, buf, want * 4, t->p + done * 4) != 0) {
            free(buf);
            return fail(err, "%s: cannot read tensor %s: %s", path, name,
                        errno ? strerror(errno) : "file shrank while open");
        }
        rc = model_check_f32(path, name, -1, "value", buf, want, err);
        if (rc) { /* the index in the message is the chunk's: name the tensor's */
            for (size_t i = 0; i < want; i++)
                if (!isfinite(buf[i])) {
                    rc = fail(err, "%s: tensor %s: value %zu is %g; every weight, scale and "
                              "norm must be a finite number (a corrupted file: re-convert it "
                              "with `invoke convert`)", path, name, done + i, (double)buf[i]);
                    break;
                }
        }
        posix_fadvise(m->fd, at + (off_t)(done * 4), (off_t)(want * 4), POSIX_FADV_DONTNEED);
        done += want;
    }
    free(buf);
    return rc;
}

/* The second level's norms (section 11), finite and >= 0: read with pread, like the fp32
 * classifier, so that the mapping never maps them (faithful.c reads the second level with
 * pread too, right after: the page cache still holds it). */
static int check_refine_norms(const Model *m, const char *path, size_t section_index,
                              Error *err) {
    const Tensor *t = &m->classifier_q8;
    const size_t block = m->classifier_refine_block, per_read = 64;
    unsigned char *buf = malloc(per_read * block);
    if (!buf) return fail(err, "%s: out of memory", path);
    for (size_t tile = 0; tile < t->tiles; tile += per_read) {
        size_t count = t->tiles - tile < per_read ? t->tiles - tile : per_read;
        if (model_pread(m, buf, count * block, m->classifier_refine + tile * block) != 0) {
            free(buf);
            return fail(err, "%s: cannot read section %zu (classifier_q8): %s", path,
                        section_index, errno ? strerror(errno) : "file shrank while open");
        }
        for (size_t k = 0; k < count * 2 * PACK_ROWS; k++) {
            size_t tk = k / (2 * PACK_ROWS), j = k % (2 * PACK_ROWS);
            float v;
            memcpy(&v, buf + tk * block + 4 * j, 4);
            if (!(v >= 0.0f && v <= 3.0e38f)) {
                free(buf);
                return fail(err, "%s: section %zu (classifier_q8): row %zu's second-level %s "
                            "norm %g is not a finite number >= 0 (a corrupted file: re-convert "
                            "it with `invoke convert --format faithful`)", path, section_index,
                            (tile + tk) * PACK_ROWS + j % PACK_ROWS,
                            j < PACK_ROWS ? "residual" : "row", (double)v);
            }
        }
    }
    free(buf);
    return 0;
}

static int check_matrix(const char *path, const char *name, long layer, const Tensor *t,
                        Error *err) {
    if (t->type == TENSOR_PF32)
        return model_check_f32(path, name, layer, "value", t->p, t->tiles * PACK_ROWS * t->cols,
                               err);
    return model_check_packed_scales(path, name, layer, t, err);
}

static int check_finite(const Model *m, const char *path, Error *err) {
    const ModelConfig *c = &m->cfg;
    size_t L = (size_t)c->n_layers, dim = (size_t)c->dim;
    int faithful = c->format == FORMAT_PACKED_FAITHFUL;
    if (model_check_f32(path, "norms", -1, "value", m->layers[0].rms_att, (2 * L + 1) * dim, err))
        return -1;
    if (!faithful && (check_matrix(path, "classifier", -1, &m->classifier, err) ||
                      (!c->shared_classifier &&
                       check_matrix(path, "embedding", -1, &m->embedding, err))))
        return -1;
    if (faithful && (check_matrix(path, "classifier_q8", -1, &m->classifier_q8, err) ||
                     check_f32_unmapped(m, path, "classifier", &m->classifier, err) ||
                     (!c->shared_classifier &&
                      check_f32_unmapped(m, path, "embedding", &m->embedding, err))))
        return -1;
    for (size_t l = 0; l < L; l++) {
        const LayerWeights *w = &m->layers[l];
        const Tensor *mats[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
        for (int k = 0; k < 7; k++)
            if (check_matrix(path, kind_name(KIND_WQ + (uint32_t)k), (long)l, mats[k], err))
                return -1;
    }
    return 0;
}

static int open_packed(Model *m, const char *path, Error *err) {
    ModelConfig *c = &m->cfg;
    if (parse(path, m->map, m->map_size, c, err)) return -1;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return fail(err, "%s: out of memory", path);
    size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, i = 0;
    const float *norms = (const float *)(const void *)section(m, i++);
    m->rms_final = norms + 2 * L * dim;
    Tensor *embedding = NULL;
    if (!c->shared_classifier) embedding = &m->embedding, i++;
    for (size_t l = 0; l < L; l++) {
        LayerWeights *w = &m->layers[l];
        w->rms_att = norms + l * dim;
        w->rms_ffn = norms + (L + l) * dim;
        Tensor *mats[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
        for (int k = 0; k < 7; k++, i++) {
            Expected x = expected(c, i);
            *mats[k] = packed_tensor(c->format, x.rows, x.cols);
            mats[k]->p = section(m, i);
        }
    }
    m->classifier = packed_tensor(c->format, (size_t)c->vocab_size, dim);
    m->classifier.p = section(m, i);
    if (c->format == FORMAT_PACKED_FAITHFUL) {
        const unsigned char *q8 = section(m, i + 1);
        Tensor *t = &m->classifier_q8;
        *t = classifier_q8_tensor((size_t)c->vocab_size, dim);
        t->p = q8;
        size_t blocks = tensor_bytes(t), norms = t->tiles * PACK_ROWS * 4;
        m->classifier_residual_norms = (const float *)(const void *)(q8 + blocks);
        const unsigned char *trailer = q8 + blocks + norms;
        float bound;
        memcpy(&bound, trailer, 4);
        static const unsigned char zeros[FAITHFUL_TRAILER - 4];
        /* a bound the certified sampler relies on: finite and not negative */
        if (!(bound >= 0.0f && bound <= 3.0e38f) || memcmp(trailer + 4, zeros, sizeof zeros))
            return fail(err, "%s: section %zu (classifier_q8) ends with a bad trailer: the int8 "
                        "rows' norm bound must be a finite number >= 0 (got %g), then %zu zero "
                        "bytes", path, i + 1, (double)bound, sizeof zeros);
        m->classifier_q8_norm_max = bound;
        m->classifier_refine = trailer + FAITHFUL_TRAILER;
        m->classifier_refine_block = refine_block_bytes(t);
        for (size_t r = 0; r < t->tiles * PACK_ROWS; r++) {
            float v;
            memcpy(&v, q8 + blocks + 4 * r, 4);
            if (!(v >= 0.0f && v <= 3.0e38f))
                return fail(err, "%s: section %zu (classifier_q8): row %zu's residual norm %g is "
                            "not a finite number >= 0", path, i + 1, r, (double)v);
        }
        if (check_refine_norms(m, path, i + 1, err)) return -1;
    }
    if (embedding) {
        *embedding = m->classifier;
        embedding->p = section(m, 1);
    } else {
        m->embedding = m->classifier;
    }
    return check_finite(m, path, err);
}

/* A faithful file's token reads the int8 classifier, not the fp32 one: the second-level
 * and fp32 tiles the certified sampler reads come on top (counted by faithful.c). */
static size_t streamed_bytes(const Model *m) {
    const ModelConfig *c = &m->cfg;
    size_t total = 0, n = section_count(c);
    int faithful = c->format == FORMAT_PACKED_FAITHFUL;
    for (size_t i = 0; i < n; i++) {
        Expected x = expected(c, i);
        if (x.kind == KIND_CLASSIFIER_Q8)
            total += classifier_q8_streamed(x.rows, x.cols);
        else if (x.kind != KIND_EMBEDDING && !(faithful && x.kind == KIND_CLASSIFIER))
            total += x.bytes;
    }
    return total;
}

const ModelLoader packed_loader = {is_magic, open_packed, streamed_bytes};
