/* A llama2.c checkpoint, mapped read-only: the header, validated against the file size,
 * and one Tensor per weight matrix pointing into the mapping. */
#ifndef LLAMA2_MODEL_H
#define LLAMA2_MODEL_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

#include "error.h"
#include "tensor.h"

typedef enum {
    FORMAT_V0,  /* llama2.c legacy fp32 */
    FORMAT_V1,  /* llama2.c fp32 */
    FORMAT_Q80, /* llama2.c v2, runq.c's Q8_0 */
    FORMAT_PACKED_F32, /* the engine's packed row tiles (FORMAT.md) */
    FORMAT_PACKED_Q8,
    FORMAT_PACKED_Q4,
    FORMAT_PACKED_FAITHFUL, /* packed fp32 + an int8 copy of the classifier (-k faithful) */
} FileFormat;

typedef struct {
    int dim;        /* transformer width */
    int hidden_dim; /* FFN width */
    int n_layers;
    int n_heads;
    int n_kv_heads; /* < n_heads: grouped-query attention */
    int vocab_size;
    int seq_len;
    int shared_classifier; /* the classifier is the embedding table */
    int group_size;        /* Q8_0 and packed q8/q4 */
    FileFormat format;
} ModelConfig;

typedef struct {
    Tensor wq, wk, wv, wo, w1, w2, w3;
    const float *rms_att, *rms_ffn;
} LayerWeights;

typedef struct {
    ModelConfig cfg;
    Tensor embedding; /* (vocab, dim) */
    Tensor classifier; /* (vocab, dim); a copy of embedding when shared */
    /* Faithful files (FORMAT.md, section 11): the classifier in int8 (packed q8 layout),
     * per row an upper bound on the 2-norm of its quantization residual, and an upper
     * bound on every int8 row's 2-norm; NULL / empty otherwise. */
    Tensor classifier_q8;
    const float *classifier_residual_norms;
    float classifier_q8_norm_max;
    /* ... and its second level (section 11), one block per tile: per row fp32 upper
     * bounds on the 2-norms of the residual left after it and of the row it refines, then
     * the int4 values (BlockQ4's layout without scales: s / 16). Read with pread only. */
    const unsigned char *classifier_refine;
    size_t classifier_refine_block;
    const float *rms_final;
    LayerWeights *layers;
    void *map;
    size_t map_size;
    int fd; /* the mapped file, still open while map is set (faithful.c reads with pread) */
} Model;

/* Reads the n bytes of the model's file that the mapping shows at `mapped` into buf with
 * pread (pages it reads stay out of the resident set), retrying short and interrupted
 * reads: 0, or -1 with errno set (0 when the file ended first). Inline: the loaders use it
 * and depend on model_config.c only. */
static inline int model_pread(const Model *m, void *buf, size_t n, const void *mapped) {
    off_t at = (off_t)((const unsigned char *)mapped - (const unsigned char *)m->map);
    for (size_t done = 0; done < n;) {
        ssize_t got = pread(m->fd, (unsigned char *)buf + done, n - done, at + (off_t)done);
        if (got > 0) done += (size_t)got;
        else if (got == 0) {
            errno = 0;
            return -1;
        } else if (errno != EINTR) return -1;
    }
    return 0;
}

/* Maps and validates `path`; on failure fills err with "PATH: problem" and returns -1. */
int model_open(Model *m, const char *path, Error *err);
/* Weight bytes one token reads (every layer matrix, the classifier, the norms). */
size_t model_streamed_bytes(const Model *m);
void model_close(Model *m);

/* A family of file formats (model.c maps the file and hands it to the first loader that
 * recognizes it): model_llama2c.c (llama2.c's v0/v1/v2) and model_packed.c (FORMAT.md).
 * Loaders depend on model_config.c only, never on model.c. */
typedef struct {
    int (*recognizes)(const unsigned char *p, size_t size);
    /* Validates the header (and section table) against m->map_size, fills m->cfg and maps
     * the tensors; m->layers is freed by model_close. */
    int (*open)(Model *m, const char *path, Error *err);
    size_t (*streamed_bytes)(const Model *m);
} ModelLoader;

extern const ModelLoader llama2c_loader, packed_loader;

/* model_config.c: the checks every format's header passes, and the formats' names. */
#define MODEL_MAX_WIDTH (1 << 20) /* dim, hidden_dim, group_size */
/* lo <= v <= hi, else "PATH: header field NAME = V is out of range ..." */
int model_check_field(const char *path, const char *name, int v, int lo, int hi, Error *err);
int model_validate_config(const char *path, const ModelConfig *c, Error *err);
const char *format_name(FileFormat f);
/* Every float the arithmetic reads must be finite (a NaN scale would reach a NaN -> int
 * conversion): n fp32 values at p (any alignment), or every bf16 scale of a packed q8/q4
 * tensor. Else "PATH: tensor NAME of layer L: WHAT I is nan; ..." (layer < 0: none;
 * WHAT: "value", "scale"). */
int model_check_f32(const char *path, const char *tensor, long layer, const char *what,
                    const void *p, size_t n, Error *err);
int model_check_packed_scales(const char *path, const char *tensor, long layer,
                              const Tensor *t, Error *err);

#endif
