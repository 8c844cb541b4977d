/* run.c's sampler: xorshift coin, temperature, greedy / multinomial / top-p. */
#ifndef LLAMA2_SAMPLER_H
#define LLAMA2_SAMPLER_H

typedef struct {
    float prob;
    int index;
} ProbIndex;

typedef struct {
    int vocab_size;
    float temperature;
    float topp;
    unsigned long long rng_state;
    ProbIndex *probindex; /* top-p candidates, vocab_size entries */
} Sampler;

int sampler_init(Sampler *s, int vocab_size, float temperature, float topp,
                 unsigned long long seed);
void sampler_free(Sampler *s);
/* Picks the next token; scales and softmaxes `logits` in place, like run.c. */
int sampler_sample(Sampler *s, float *logits);
/* The same with softmax_fast (kernels.h) for run.c's softmax: the quantized path's, whose
 * logits are not run.c's anyway; its probabilities differ from run.c's softmax's in the
 * last bits, which can change a token where the coin falls that close to a boundary. */
int sampler_sample_fast(Sampler *s, float *logits);
/* run.c's logits[q] /= temperature, bit for bit (skipped at temperature 1). */
void sampler_scale(float *logits, int n, float temperature);

float random_f32(unsigned long long *state);
int sample_argmax(const float *p, int n);
int sample_mult(const float *p, int n, float coin);
int sample_topp(const float *p, int n, float topp, ProbIndex *probindex, float coin);

#endif
