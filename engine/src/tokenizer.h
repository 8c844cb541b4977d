/* llama2.c's byte-pair tokenizer: the same encoding and decoding as run.c, with every
 * length in the file checked and the vocabulary size matched against the model's. */
#ifndef LLAMA2_TOKENIZER_H
#define LLAMA2_TOKENIZER_H

#include <stddef.h>

#include "error.h"

#define TOKEN_BOS LLAMA2_TOKEN_BOS
#define TOKEN_EOS LLAMA2_TOKEN_EOS

typedef struct {
    const char *str;
    int id;
} TokenIndex;

typedef struct {
    int vocab_size;
    int max_token_length;
    char **vocab;         /* NUL-terminated pieces, pointing into strings */
    float *scores;
    TokenIndex *sorted;   /* for lookups while encoding */
    char *strings;
    int space_id;         /* the " " piece: sentencepiece's dummy prefix */
    unsigned char byte_pieces[512];
} Tokenizer;

int tokenizer_open(Tokenizer *t, const char *path, int vocab_size, Error *err);
void tokenizer_close(Tokenizer *t);

/* Tokens needed at most for `text` (BOS + dummy prefix + one per byte). */
size_t tokenizer_max_tokens(const char *text);
/* run.c's encode with a BOS; tokens must hold tokenizer_max_tokens(text) entries. */
int tokenizer_encode(const Tokenizer *t, const char *text, int *tokens, int *n_tokens,
                     Error *err);
/* The piece to print after `prev`, exactly as run.c's decode. */
const char *tokenizer_decode(const Tokenizer *t, int prev, int token);
/* 0 when s is well-formed UTF-8, else the offset of the first bad byte plus one. */
size_t utf8_invalid_at(const char *s);

#endif
