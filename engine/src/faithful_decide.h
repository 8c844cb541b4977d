/* The faithful path's decision (faithful_decide.c): run.c's token from logit intervals.
 *
 * Pure: given bounds on run.c's logits, the temperature, top-p and the coin run.c draws, it
 * proves the token run.c's sampler picks, or names the rows that must be made exact first.
 * No I/O and no model: faithful.c computes the bounds and recomputes the rows it asks for. */
#ifndef LLAMA2_FAITHFUL_DECIDE_H
#define LLAMA2_FAITHFUL_DECIDE_H

#include <float.h>

#include "sampler.h"

#if FLT_EVAL_METHOD != 0
#error "the faithful path reproduces run.c's float arithmetic: it needs FLT_EVAL_METHOD == 0"
#endif

/* lo[i] <= run.c's logit i <= hi[i] (before the temperature); exact[i] != 0 when
 * lo[i] == hi[i] is run.c's value itself. */
typedef struct {
    int n;
    float *lo, *hi;
    unsigned char *exact;
} LogitBounds;

typedef enum {
    FAITHFUL_TOKEN,  /* *token is the token run.c picks */
    FAITHFUL_REFINE, /* make the rows listed in refine[] exact, then decide again */
    FAITHFUL_EXACT,  /* only every logit exact decides: run.c's sampler on them */
} FaithfulVerdict;

/* Scratch for n logits, recomputed by the caller in tiles of tile_rows consecutive rows
 * (NULL when out of memory or n < 1). */
typedef struct FaithfulWork FaithfulWork;
FaithfulWork *faithful_work_new(int n, int tile_rows);
void faithful_work_free(FaithfulWork *w);

/* run.c's decision (sampler.c: temperature, softmax, top-p or multinomial, or argmax at
 * temperature 0) for every logit vector inside the bounds, with the coin run.c would
 * draw (ignored at temperature 0). On FAITHFUL_REFINE, refine (n + 1 entries) gets the
 * rows to make exact (their whole tiles are meant) and *n_refine their count; `effort`
 * counts the rounds so far and widens the batches chosen to narrow the softmax's
 * denominator, `budget` is how many tiles the caller can still afford for that (beyond
 * it: FAITHFUL_EXACT). */
FaithfulVerdict faithful_decide(const LogitBounds *b, float temperature, float topp, float coin,
                                int effort, int budget, FaithfulWork *w, int *token,
                                int *refine, int *n_refine);

/* run.c's sampler on exact logits with the coin already drawn (sampler_sample without
 * the draw): scales and softmaxes `logits` in place. */
int faithful_exact_sample(float *logits, int n, float temperature, float topp, float coin,
                          ProbIndex *probindex);

/* gamma_k = k u / (1 - k u), u = 2^-24: the relative error bound of k fp32 roundings
 * (Higham), shared by the classifier's bounds (faithful.c) and the decision. */
double faithful_gamma(double k);

#endif
