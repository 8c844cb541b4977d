/* The public API (include/llama2.h): opening an engine, and run.c's generation and chat
 * loops. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../include/llama2.h"
#include "error.h"
#include "faithful.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"
#include "transformer.h"

struct Llama2 {
    Model model;
    Tokenizer tokenizer;
    Sampler sampler;
    Transformer transformer;
    float temperature, topp; /* the sampler's, for llama2_reseed */
    int steps;
};

Llama2 *llama2_open(const Llama2Options *o, Error *err) {
    Llama2 *e = calloc(1, sizeof *e);
    if (!e) {
        fail(err, "out of memory");
        return NULL;
    }
    e->temperature = o->temperature;
    e->topp = o->topp;
    if (model_open(&e->model, o->checkpoint_path, err)) goto fail;
    const ModelConfig *c = &e->model.cfg;
    e->steps = (o->steps <= 0 || o->steps > c->seq_len) ? c->seq_len : o->steps;
    if (tokenizer_open(&e->tokenizer, o->tokenizer_path, c->vocab_size, err)) goto fail;
    if (transformer_init(&e->transformer, &e->model, o->path, e->steps, err)) {
        char why[sizeof err->msg];
        memcpy(why, err->msg, sizeof why);
        fail(err, "%s: %s", o->checkpoint_path, why);
        goto fail;
    }
    if (sampler_init(&e->sampler, c->vocab_size, o->temperature, o->topp, o->seed)) {
        fail(err, "out of memory for the sampler");
        goto fail;
    }
    return e;
fail:
    llama2_close(e);
    return NULL;
}

void llama2_close(Llama2 *e) {
    if (!e) return;
    sampler_free(&e->sampler);
    transformer_free(&e->transformer);
    tokenizer_close(&e->tokenizer);
    model_close(&e->model);
    free(e);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double llama2_tokens_per_second(const Llama2Stats *s) {
    if (s->positions <= 1) return -1.0;
    return (s->positions - 1) / s->seconds;
}

static int *encode_prompt(const Llama2 *e, const char *prompt, int *n, Error *err) {
    int *tokens = malloc(sizeof(int) * tokenizer_max_tokens(prompt));
    if (!tokens) {
        fail(err, "out of memory for a prompt of %zu bytes", strlen(prompt));
        return NULL;
    }
    if (tokenizer_encode(&e->tokenizer, prompt, tokens, n, err)) {
        free(tokens);
        return NULL;
    }
    if (*n > e->model.cfg.seq_len) {
        fail(err, "prompt is %d tokens, longer than the model's context of %d", *n,
             e->model.cfg.seq_len);
        free(tokens);
        return NULL;
    }
    return tokens;
}

int llama2_generate(Llama2 *e, const char *prompt, Llama2PieceSink sink, void *user,
                    Llama2Stats *stats, Error *err) {
    memset(stats, 0, sizeof *stats);
    if (!prompt) prompt = "";
    int n_prompt;
    int *prompt_tokens = encode_prompt(e, prompt, &n_prompt, err);
    if (!prompt_tokens) return -1;

    double start = 0;
    int token = prompt_tokens[0], pos = 0;
    while (pos < e->steps) {
        float *logits = transformer_forward(&e->transformer, token, pos);
        int next = pos < n_prompt - 1
                       ? prompt_tokens[pos + 1]
                       : transformer_sample(&e->transformer, &e->sampler, logits);
        pos++;
        if (next == TOKEN_BOS) break; /* BOS delimits sequences */
        if (sink(user, tokenizer_decode(&e->tokenizer, token, next))) {
            stats->stopped = 1;
            break;
        }
        token = next;
        if (start == 0) start = now_seconds(); /* the first iteration is slower */
    }
    stats->positions = pos;
    stats->seconds = start == 0 ? 0 : now_seconds() - start;
    free(prompt_tokens);
    return 0;
}

/* A line from `in` without its newline; 0 at end of input. */
static int read_line(FILE *in, const char *guide, char *buf, size_t size, Llama2PieceSink sink,
                     void *user) {
    sink(user, guide);
    if (!fgets(buf, (int)size, in)) return 0;
    size_t len = strlen(buf);
    if (len > 0 && buf[len - 1] == '\n') buf[len - 1] = '\0';
    return 1;
}

#define CHAT_LINE 512

int llama2_chat(Llama2 *e, const char *cli_user, const char *cli_system, FILE *in,
                Llama2PieceSink sink, void *user, Error *err) {
    char system_prompt[CHAT_LINE] = "", user_prompt[CHAT_LINE];
    char rendered[3 * CHAT_LINE];
    if ((cli_user && strlen(cli_user) >= CHAT_LINE) ||
        (cli_system && strlen(cli_system) >= CHAT_LINE))
        return fail(err, "chat prompts are limited to %d bytes", CHAT_LINE - 1);
    int *tokens = malloc(sizeof(int) * (sizeof rendered + 3)); /* BOS, prefix, a token a byte */
    if (!tokens) return fail(err, "out of memory");
    int n_tokens = 0, user_idx = 0, user_turn = 1, next = 0, token, pos = 0, rc = 0;
    while (pos < e->steps) {
        if (user_turn) {
            if (pos == 0) {
                if (cli_system) strcpy(system_prompt, cli_system);
                else if (!read_line(in, "Enter system prompt (optional): ", system_prompt,
                                    sizeof system_prompt, sink, user))
                    break;
            }
            if (pos == 0 && cli_user) strcpy(user_prompt, cli_user);
            else if (!read_line(in, "User: ", user_prompt, sizeof user_prompt, sink, user))
                break;
            if (pos == 0 && system_prompt[0] != '\0')
                snprintf(rendered, sizeof rendered, "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]",
                         system_prompt, user_prompt);
            else
                snprintf(rendered, sizeof rendered, "[INST] %s [/INST]", user_prompt);
            if (tokenizer_encode(&e->tokenizer, rendered, tokens, &n_tokens, err)) {
                rc = -1;
                break;
            }
            user_idx = 0;
            user_turn = 0;
            sink(user, "Assistant: ");
        }
        token = user_idx < n_tokens ? tokens[user_idx++] : next;
        if (token == TOKEN_EOS) user_turn = 1; /* EOS ends the assistant's turn */
        float *logits = transformer_forward(&e->transformer, token, pos);
        next = transformer_sample(&e->transformer, &e->sampler, logits);
        pos++;
        if (user_idx >= n_tokens && next != TOKEN_EOS &&
            sink(user, tokenizer_decode(&e->tokenizer, token, next)))
            break;
        if (next == TOKEN_EOS) sink(user, "\n");
    }
    sink(user, "\n");
    free(tokens);
    return rc;
}

const char *llama2_kernels(void) { return kernels_name(); }

void llama2_print_faithful_stats(const Llama2 *e, FILE *out, int per_step) {
    if (e->transformer.faithful) faithful_print_stats(e->transformer.faithful, out, per_step);
}

void llama2_shape(const Llama2 *e, Llama2Shape *shape) {
    const ModelConfig *c = &e->model.cfg;
    *shape = (Llama2Shape){c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                           c->vocab_size, c->seq_len, e->steps};
}

int *llama2_encode(const Llama2 *e, const char *text, int *n_tokens, Error *err) {
    return encode_prompt(e, text, n_tokens, err);
}

float *llama2_forward(Llama2 *e, int token, int pos) {
    return transformer_forward(&e->transformer, token, pos);
}

int llama2_sample(Llama2 *e, float *logits) {
    return transformer_sample(&e->transformer, &e->sampler, logits);
}

int llama2_reseed(Llama2 *e, unsigned long long seed) {
    sampler_free(&e->sampler);
    return sampler_init(&e->sampler, e->model.cfg.vocab_size, e->temperature, e->topp, seed);
}
