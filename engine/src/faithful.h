/* -k faithful: fp32 run.c's story at int8 speed (faithful.c).
 *
 * The layers run in run.c's exact arithmetic, so the final hidden state x is run.c's. The
 * classifier is read in int8 (a faithful file's section 11, FORMAT.md) and every logit
 * comes with a rigorous interval that contains run.c's fp32 logit. The sampler then
 * decides run.c's token on those intervals; where they cannot decide it, the rows that
 * matter are recomputed exactly (run.c's arithmetic on their fp32 tiles), widening until
 * the token is proved or every logit is exact and run.c's own sampler runs. The decision
 * itself, pure, is faithful_decide.h's; this is the path that feeds it. */
#ifndef LLAMA2_FAITHFUL_H
#define LLAMA2_FAITHFUL_H

#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "faithful_decide.h"
#include "model.h"
#include "sampler.h"

/* Counters over the sampled positions of a run (bench figures). */
typedef struct {
    long steps;          /* positions sampled */
    long by_bounds;      /* decided with no row recomputed */
    long full;           /* needed every logit exact */
    long rows;           /* rows recomputed exactly, in all */
    long tiles;          /* fp32 tiles read for them */
    long refined;        /* tiles narrowed by section 11's second level first */
    long rounds;         /* faithful_decide calls */
    double bytes;        /* weight bytes read by the sampled positions */
    long violations;     /* LLAMA2_FAITHFUL_VERIFY: logits outside their bounds */
    long mismatches;     /* ... and decisions that differ from run.c's sampler */
    int *rows_per_step;  /* rows recomputed at each sampled position */
    long capacity;
} FaithfulStats;

/* The faithful path's state, owned by a Transformer (transformer.c). */
typedef struct {
    LogitBounds b;
    int16_t *xq; /* the final hidden state in int16, padded to whole groups */
    float *xs;
    const float *x; /* the final hidden state of the last forward pass (run.c's) */
    unsigned char *tile_exact;
    /* Section 11's second level: tiles whose bounds it narrowed this step, the int4 tile
     * read for it, and the classify step's factors (|x| (1 + gamma_dim), and what
     * multiplies a row's norm; refine_ok: both finite). */
    unsigned char *tile_refined, *refine_buf;
    unsigned char *refine_all; /* the whole second level, read once (NULL: pread per tile) */
    size_t refine_bytes;
    float *approx; /* the int8 logits of the last faithful_classify */
    float alpha, row_factor, sum_factor;
    int refine_ok;
    int *refine;
    FaithfulWork *work;
    size_t tiles, tile_bytes, base_bytes, page;
    int fd;             /* the model file, for pread; -1: read the mapping */
    unsigned char *buf; /* buf_tiles fp32 tiles read from the file */
    size_t buf_tiles;
    size_t touched; /* fp32 classifier bytes read from the mapping since last released */
    int verify;     /* LLAMA2_FAITHFUL_VERIFY set: check every step against run.c's sampler */
    FaithfulStats stats;
} Faithful;

Faithful *faithful_new(const Model *m, Error *err);
void faithful_free(Faithful *f);
/* Approximate logits into `logits` and their bounds, for the final hidden state x (kept:
 * it must stay valid until faithful_sample). */
void faithful_classify(Faithful *f, const Model *m, const float *x, float *logits);
/* Narrow tile t's bounds with section 11's second level (after faithful_classify; a no-op
 * when the file or the step has none usable). */
void faithful_refine_tile(Faithful *f, const Model *m, size_t t);
/* The embedding of `token` (run.c's fp32 row), read like the recomputed tiles. */
void faithful_embed(Faithful *f, const Model *m, int token, float *x);
/* run.c's next token: the certified decision, recomputing rows as needed. `logits` is
 * scratch for the exact fallback (vocab_size floats). */
int faithful_sample(Faithful *f, const Model *m, Sampler *s, float *logits);
/* One line of counters; with per_step, a second line: the rows recomputed at each step. */
void faithful_print_stats(const Faithful *f, FILE *out, int per_step);

#endif
