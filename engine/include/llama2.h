/* The llama2 engine as a library: open a checkpoint and its tokenizer, then tell stories.
 * Used by the `llama2` command (run.c's interface), the storyteller and the fidelity tool.
 * Self-contained: everything else in the engine is internal (src/). No global mutable
 * state: everything lives in a Llama2 handle. */
#ifndef LLAMA2_H
#define LLAMA2_H

#include <stdio.h>

/* A failure as one line ("PATH: problem"): errors travel up as a message buffer. */
typedef struct {
    char msg[512];
} Llama2Error;

/* The compute path (`-k`); README.md describes each. */
typedef enum {
    LLAMA2_PATH_AUTO,     /* the fastest path for the file's format */
    LLAMA2_PATH_REF,      /* fp32, run.c's exact arithmetic */
    LLAMA2_PATH_FAST,     /* fp32, the build's fastest kernels */
    LLAMA2_PATH_QUANT,    /* int8 activations x quantized weights (v2 Q8_0, packed q8/q4) */
    LLAMA2_PATH_FAITHFUL, /* faithful files: run.c's layers, int8 classifier, certified sampler */
} Llama2Path;

typedef struct {
    const char *checkpoint_path;
    const char *tokenizer_path;
    float temperature; /* 0 = greedy */
    float topp;        /* nucleus sampling; <= 0 or >= 1 samples the whole distribution */
    unsigned long long seed;
    int steps;         /* positions to run; 0 or more than seq_len = seq_len */
    Llama2Path path;
} Llama2Options;

/* An open engine: the mapped model, its tokenizer, the sampler and the run state. */
typedef struct Llama2 Llama2;

/* Receives each piece of text as it is generated; a non-zero return stops generation. */
typedef int (*Llama2PieceSink)(void *user, const char *piece);

typedef struct {
    int positions;  /* forward passes run, run.c's final `pos` */
    int stopped;    /* the sink asked to stop */
    double seconds; /* wall time after the first token, as run.c times it */
} Llama2Stats;

#define LLAMA2_TOKEN_BOS 1
#define LLAMA2_TOKEN_EOS 2

/* NULL on failure, with err filled. */
Llama2 *llama2_open(const Llama2Options *o, Llama2Error *err);
void llama2_close(Llama2 *e);
/* run.c's generate(): the prompt (NULL = empty) continued for the engine's steps. */
int llama2_generate(Llama2 *e, const char *prompt, Llama2PieceSink sink, void *user,
                    Llama2Stats *stats, Llama2Error *err);
/* run.c's chat(): Llama-2 chat turns, user lines read from `in` (stops at end of input). */
int llama2_chat(Llama2 *e, const char *user_prompt, const char *system_prompt, FILE *in,
                Llama2PieceSink sink, void *user, Llama2Error *err);
/* Tokens per second as run.c reports it, or a negative value when it prints nothing. */
double llama2_tokens_per_second(const Llama2Stats *s);
/* run.c's safe_printf test: single bytes that are neither printable nor space are dropped. */
int llama2_piece_is_printable(const char *piece);
/* The name of the kernel set compiled in ("portable", "rvv", ...). */
const char *llama2_kernels(void);
/* The faithful path's counters (LLAMA2_FAITHFUL_STATS): one line, and with per_step a
 * second one, the rows recomputed at each step. Nothing on other paths. */
void llama2_print_faithful_stats(const Llama2 *e, FILE *out, int per_step);

/* Step by step, for measuring tools (tools/fidelity.c). */
typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    int steps; /* positions the engine runs */
} Llama2Shape;
void llama2_shape(const Llama2 *e, Llama2Shape *shape);
/* The prompt's tokens with a BOS (run.c's encode), malloc'd; NULL with err filled. */
int *llama2_encode(const Llama2 *e, const char *text, int *n_tokens, Llama2Error *err);
/* The logits (vocab_size) of `token` at `pos`; valid until the next call. */
float *llama2_forward(Llama2 *e, int token, int pos);
/* The next token from the logits llama2_forward returned (scaled in place, as run.c). */
int llama2_sample(Llama2 *e, float *logits);
/* Restarts the sampler's random sequence; -1 when out of memory. */
int llama2_reseed(Llama2 *e, unsigned long long seed);

#endif
