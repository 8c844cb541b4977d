#include "sampler.h"

#include <stdlib.h>

#include "kernels.h"
#include "ops.h"

int sampler_init(Sampler *s, int vocab_size, float temperature, float topp,
                 unsigned long long seed) {
    s->vocab_size = vocab_size;
    s->temperature = temperature;
    s->topp = topp;
    s->rng_state = seed;
    s->probindex = malloc((size_t)vocab_size * sizeof *s->probindex);
    return s->probindex ? 0 : -1;
}

void sampler_free(Sampler *s) {
    free(s->probindex);
    s->probindex = NULL;
}

static unsigned int random_u32(unsigned long long *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (unsigned int)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

float random_f32(unsigned long long *state) { return (float)(random_u32(state) >> 8) / 16777216.0f; }

int sample_argmax(const float *p, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (p[i] > p[best]) best = i;
    return best;
}

int sample_mult(const float *p, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += p[i];
        if (coin < cdf) return i;
    }
    return n - 1;
}

/* Descending probability; equal probabilities keep index order, which is what run.c gets
 * from glibc's (stable, merge-sort) qsort, and what any libc gets from this comparator. */
static int by_prob_desc(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return (x->index > y->index) - (x->index < y->index);
}

int sample_topp(const float *p, int n, float topp, ProbIndex *probindex, float coin) {
    /* tokens below (1 - topp) / (n - 1) cannot be in the nucleus */
    const float cutoff = (1.0f - topp) / (float)(n - 1);
    int n0 = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] >= cutoff) probindex[n0++] = (ProbIndex){p[i], i};
    }
    if (n0 == 0) return sample_argmax(p, n); /* only NaNs: nothing passed the cutoff */
    qsort(probindex, (size_t)n0, sizeof *probindex, by_prob_desc);
    float cumulative = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cumulative += probindex[i].prob;
        if (cumulative > topp) {
            last = i;
            break;
        }
    }
    float r = coin * cumulative;
    float cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += probindex[i].prob;
        if (r < cdf) return probindex[i].index;
    }
    return probindex[last].index;
}

/* run.c's logits[q] /= temperature. x / 1.0f is x (a NaN stays a NaN, which no comparison
 * tells apart), so at -t 1, the contest's, no divide is done: the same token. */
void sampler_scale(float *logits, int n, float temperature) {
    if (temperature == 1.0f) return;
    for (int q = 0; q < n; q++) logits[q] /= temperature;
}

static int sample(Sampler *s, float *logits, void (*normalize)(float *, int)) {
    if (s->temperature == 0.0f) return sample_argmax(logits, s->vocab_size);
    sampler_scale(logits, s->vocab_size, s->temperature);
    normalize(logits, s->vocab_size);
    float coin = random_f32(&s->rng_state);
    if (s->topp <= 0 || s->topp >= 1) return sample_mult(logits, s->vocab_size, coin);
    return sample_topp(logits, s->vocab_size, s->topp, s->probindex, coin);
}

int sampler_sample(Sampler *s, float *logits) { return sample(s, logits, softmax); }

int sampler_sample_fast(Sampler *s, float *logits) { return sample(s, logits, softmax_fast); }
