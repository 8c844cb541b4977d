/* A llama2.c checkpoint, mapped read-only: the header, validated against the file size,
 * and one Tensor per weight matrix pointing into the mapping. */
#ifndef LLAMA2_MODEL_H
#define LLAMA2_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum { FORMAT_V0, FORMAT_V1, FORMAT_Q80 } FileFormat;

typedef struct {
    int dim;        /* transformer width */
    int hidden_dim; /* FFN width */
    int n_layers;
    int n_heads;
    int n_kv_heads; /* < n_heads: grouped-query attention */
    int vocab_size;
    int seq_len;
    int shared_classifier; /* the classifier is the embedding table */
    int group_size;        /* Q8_0 only */
    FileFormat format;
} ModelConfig;

typedef enum { TENSOR_F32, TENSOR_Q80 } TensorType;

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
} Tensor;

typedef struct {
    Tensor wq, wk, wv, wo, w1, w2, w3;
    const float *rms_att, *rms_ffn;
} LayerWeights;

typedef struct {
    ModelConfig cfg;
    Tensor embedding; /* (vocab, dim) */
    Tensor classifier; /* (vocab, dim); a copy of embedding when shared */
    const float *rms_final;
    LayerWeights *layers;
    void *map;
    size_t map_size;
} Model;

/* Maps and validates `path`; on failure fills err with "PATH: problem" and returns -1. */
int model_open(Model *m, const char *path, Error *err);
void model_close(Model *m);
const char *format_name(FileFormat f);

#endif
