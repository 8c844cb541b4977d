/* A llama2.c checkpoint, mapped read-only: the header, validated against the file size,
 * and one Tensor per weight matrix pointing into the mapping. */
#ifndef LLAMA2_MODEL_H
#define LLAMA2_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum {
    FORMAT_V0,  /* llama2.c legacy fp32 */
    FORMAT_V1,  /* llama2.c fp32 */
    FORMAT_Q80, /* llama2.c v2, runq.c's Q8_0 */
    FORMAT_PACKED_F32, /* the engine's packed row tiles (FORMAT.md) */
    FORMAT_PACKED_Q8,
    FORMAT_PACKED_Q4,
    FORMAT_PACKED_FAITHFUL, /* packed fp32 + an int8 copy of the classifier (-k faithful) */
} FileFormat;

/* Packed matrices: PACK_ROWS rows per tile; q8/q4 groups of PACK_GROUP columns. */
#define PACK_ROWS 16
#define PACK_GROUP 32

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

typedef enum { TENSOR_F32, TENSOR_Q80, TENSOR_PF32, TENSOR_PQ8, TENSOR_PQ4 } TensorType;

/* A row-major (rows x cols) matrix. Q8_0: int8 values, one fp32 scale per group of
 * group_size consecutive values of the flattened matrix (groups may straddle rows).
 * Scales are read through memcpy: a forged group size may leave them unaligned. */
typedef struct {
    TensorType type;
    size_t rows, cols;
    const float *f;          /* TENSOR_F32 */
    const int8_t *q;         /* TENSOR_Q80 */
    const unsigned char *s;  /* TENSOR_Q80: fp32 scales, maybe unaligned */
    size_t group_size;
    /* TENSOR_P*: packed row tiles (FORMAT.md), 16-byte aligned */
    const unsigned char *p;
    size_t tiles, groups; /* groups: q8/q4 only */
} Tensor;

/* Bytes of one packed tile-group block: R x G values, then R bf16 scales. */
static inline size_t packed_block_bytes(TensorType t) {
    return (t == TENSOR_PQ4 ? PACK_ROWS * PACK_GROUP / 2 : PACK_ROWS * PACK_GROUP) + 2 * PACK_ROWS;
}

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
    const float *rms_final;
    LayerWeights *layers;
    void *map;
    size_t map_size;
    int fd; /* the mapped file, still open while map is set (faithful.c reads with pread) */
} Model;

/* Maps and validates `path`; on failure fills err with "PATH: problem" and returns -1. */
int model_open(Model *m, const char *path, Error *err);
/* Packed files (model_packed.c): validates the header and section table against the file
 * size and maps the tensors; called by model_open for files starting with the magic. */
int packed_is_magic(const unsigned char *p, size_t size);
int packed_open(Model *m, const char *path, Error *err);
int model_validate_config(const char *path, const ModelConfig *c, Error *err);
size_t packed_streamed_bytes(const Model *m);
/* Weight bytes one token reads (every layer matrix, the classifier, the norms). */
size_t model_streamed_bytes(const Model *m);
void model_close(Model *m);
const char *format_name(FileFormat f);

#endif
