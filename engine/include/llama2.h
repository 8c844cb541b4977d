/* The llama2 engine as a library: open a checkpoint and its tokenizer, then tell stories.
 * Used by the `llama2` command (run.c's interface) and by the storyteller. No global
 * mutable state: everything lives in an Engine. */
#ifndef LLAMA2_H
#define LLAMA2_H

#include <stdio.h>

#include "../src/error.h"
#include "../src/model.h"
#include "../src/sampler.h"
#include "../src/tokenizer.h"
#include "../src/transformer.h"

typedef struct {
    const char *checkpoint_path;
    const char *tokenizer_path;
    float temperature; /* 0 = greedy */
    float topp;        /* nucleus sampling; <= 0 or >= 1 samples the whole distribution */
    unsigned long long seed;
    int steps;         /* positions to run; 0 or more than seq_len = seq_len */
    ComputePath path;
} EngineOptions;

typedef struct {
    Model model;
    Tokenizer tokenizer;
    Sampler sampler;
    Transformer transformer;
    int steps;
} Engine;

/* Receives each piece of text as it is generated; a non-zero return stops generation. */
typedef int (*PieceSink)(void *user, const char *piece);

typedef struct {
    int positions;      /* forward passes run, run.c's final `pos` */
    int stopped;        /* the sink asked to stop */
    double seconds;     /* wall time after the first token, as run.c times it */
} GenerationStats;

int engine_open(Engine *e, const EngineOptions *o, Error *err);
void engine_close(Engine *e);
/* run.c's generate(): the prompt (NULL = empty) continued for the engine's steps. */
int engine_generate(Engine *e, const char *prompt, PieceSink sink, void *user,
                    GenerationStats *stats, Error *err);
/* run.c's chat(): Llama-2 chat turns, user lines read from `in` (stops at end of input). */
int engine_chat(Engine *e, const char *user_prompt, const char *system_prompt, FILE *in,
                PieceSink sink, void *user, Error *err);
/* Tokens per second as run.c reports it, or a negative value when it prints nothing. */
double stats_tokens_per_second(const GenerationStats *s);

#endif
