/* A weight matrix as the kernels see it, and the packed formats' tile blocks, declared
 * once: the loader (model_packed.c), the reference kernels (kernels_ref.c) and the vector
 * kernels (kernels_rvv.c) all read them through these types (FORMAT.md). */
#ifndef LLAMA2_TENSOR_H
#define LLAMA2_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TENSOR_F32,  /* row-major fp32 (llama2.c v0/v1) */
    TENSOR_Q80,  /* row-major int8, one fp32 scale per group (llama2.c v2, runq.c's Q8_0) */
    TENSOR_PF32, /* packed row tiles of fp32 */
    TENSOR_PQ8,  /* packed row tiles of BlockQ8 */
    TENSOR_PQ4,  /* packed row tiles of BlockQ4 */
    TENSOR_TYPES
} TensorType;

/* Packed matrices: PACK_ROWS rows per tile (the lanes of a vector); q8/q4 groups of
 * PACK_GROUP columns. */
#define PACK_ROWS 16
#define PACK_GROUP 32

/* One tile-group of a packed q8 matrix: column j of row r at q[j][r], then the rows'
 * bf16 scales (the upper halves of fp32 numbers). */
typedef struct {
    int8_t q[PACK_GROUP][PACK_ROWS];
    uint16_t scale[PACK_ROWS];
} BlockQ8;

/* The same in 4 bits: byte p of row r holds columns 2p (low nibble) and 2p + 1 (high
 * nibble), each a two's complement number in [-8, 7]. */
typedef struct {
    uint8_t q[PACK_GROUP / 2][PACK_ROWS];
    uint16_t scale[PACK_ROWS];
} BlockQ4;

_Static_assert(sizeof(BlockQ8) == PACK_ROWS * PACK_GROUP + 2 * PACK_ROWS, "BlockQ8: 544 bytes");
_Static_assert(sizeof(BlockQ4) == PACK_ROWS * PACK_GROUP / 2 + 2 * PACK_ROWS, "BlockQ4: 288 bytes");
_Static_assert(sizeof(float) == 4, "fp32 tensors");

/* A (rows x cols) matrix. Q8_0: int8 values, one fp32 scale per group of group_size
 * consecutive values of the flattened matrix (groups may straddle rows); scales are read
 * through memcpy: a forged group size may leave them unaligned. Packed: `tiles` tiles of
 * PACK_ROWS rows (the last padded with zero rows), fp32 column by column, or q8/q4 blocks
 * of `groups` per tile (the last group padded with zero columns). */
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

/* Bytes of one packed q8/q4 tile-group block. */
static inline size_t packed_block_bytes(TensorType t) {
    return t == TENSOR_PQ4 ? sizeof(BlockQ4) : sizeof(BlockQ8);
}

/* Rows in packed tile t (the last tile may be short). */
static inline size_t tile_rows(const Tensor *w, size_t t) {
    size_t left = w->rows - t * PACK_ROWS;
    return left < PACK_ROWS ? left : PACK_ROWS;
}

/* A bf16 number as a float. */
static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float v;
    __builtin_memcpy(&v, &bits, 4);
    return v;
}

/* Scale i of an array of bf16 scales at s (any alignment) as a float. */
static inline float bf16_at(const unsigned char *s, size_t i) {
    uint16_t h;
    __builtin_memcpy(&h, s + 2 * i, 2);
    return bf16_to_float(h);
}

/* Q8_0 scale i (fp32, maybe unaligned). */
static inline float scale_at(const unsigned char *s, size_t i) {
    float v;
    __builtin_memcpy(&v, s + 4 * i, 4);
    return v;
}

#endif
