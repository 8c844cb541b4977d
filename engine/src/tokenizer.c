#include "tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKEN_LENGTH_LIMIT 4096
#define TOKENIZER_FILE_LIMIT (256u << 20)

static int compare_tokens(const void *a, const void *b) {
    return strcmp(((const TokenIndex *)a)->str, ((const TokenIndex *)b)->str);
}

static int read_file(const char *path, unsigned char **data, size_t *size, Error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, "%s: cannot open tokenizer: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return fail(err, "%s: cannot seek in tokenizer file", path);
    }
    long n = ftell(f);
    if (n < 0 || (unsigned long)n > TOKENIZER_FILE_LIMIT) {
        fclose(f);
        return fail(err, "%s: tokenizer file size %ld is not plausible", path, n);
    }
    rewind(f);
    *data = malloc((size_t)n + 1);
    if (!*data) {
        fclose(f);
        return fail(err, "%s: out of memory", path);
    }
    size_t got = fread(*data, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(*data);
        return fail(err, "%s: read error", path);
    }
    *size = (size_t)n;
    return 0;
}

/* Parses the file: int32 max_token_length, then per token: float score, int32 len, bytes. */
static int parse(Tokenizer *t, const char *path, const unsigned char *d, size_t size, Error *err) {
    size_t off = 0;
    int32_t max_len;
    if (size < 4) return fail(err, "%s: tokenizer file is %zu bytes, too short", path, size);
    memcpy(&max_len, d, 4);
    off = 4;
    if (max_len < 1 || max_len > MAX_TOKEN_LENGTH_LIMIT)
        return fail(err, "%s: max_token_length %d is not plausible: not a llama2.c tokenizer",
                    path, max_len);
    t->max_token_length = max_len;
    size_t str_off = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        if (size - off < 8)
            return fail(err, "%s: tokenizer holds only %d tokens but the model's vocabulary "
                        "has %d: wrong tokenizer for this model (pass the right one with -z)",
                        path, i, t->vocab_size);
        int32_t len;
        memcpy(&t->scores[i], d + off, 4);
        memcpy(&len, d + off + 4, 4);
        off += 8;
        if (len < 0 || len > max_len || (size_t)len > size - off)
            return fail(err, "%s: token %d has length %d (max_token_length %d, %zu bytes left): "
                        "corrupted tokenizer", path, i, len, max_len, size - off);
        memcpy(t->strings + str_off, d + off, (size_t)len);
        t->strings[str_off + (size_t)len] = '\0';
        t->vocab[i] = t->strings + str_off;
        str_off += (size_t)len + 1;
        off += (size_t)len;
    }
    if (off != size)
        return fail(err, "%s: tokenizer has more than the model's %d tokens: wrong tokenizer "
                    "for this model (pass the right one with -z)", path, t->vocab_size);
    return 0;
}

int tokenizer_open(Tokenizer *t, const char *path, int vocab_size, Error *err) {
    memset(t, 0, sizeof *t);
    t->vocab_size = vocab_size;
    for (int i = 0; i < 256; i++) {
        t->byte_pieces[i * 2] = (unsigned char)i;
        t->byte_pieces[i * 2 + 1] = '\0';
    }
    unsigned char *data = NULL;
    size_t size = 0;
    if (read_file(path, &data, &size, err)) return -1;
    size_t n = (size_t)vocab_size;
    t->vocab = calloc(n, sizeof *t->vocab);
    t->scores = calloc(n, sizeof *t->scores);
    t->sorted = calloc(n, sizeof *t->sorted);
    t->strings = malloc(size + n); /* every piece plus its NUL fits */
    int rc = 0;
    if (!t->vocab || !t->scores || !t->sorted || !t->strings)
        rc = fail(err, "%s: out of memory", path);
    else
        rc = parse(t, path, data, size, err);
    free(data);
    if (rc == 0 && vocab_size < 3)
        rc = fail(err, "%s: a vocabulary of %d tokens lacks <unk>, BOS and EOS", path, vocab_size);
    if (rc) {
        tokenizer_close(t);
        return -1;
    }
    for (int i = 0; i < vocab_size; i++) t->sorted[i] = (TokenIndex){t->vocab[i], i};
    qsort(t->sorted, n, sizeof *t->sorted, compare_tokens);
    TokenIndex key = {" ", 0};
    TokenIndex *space = bsearch(&key, t->sorted, n, sizeof *t->sorted, compare_tokens);
    t->space_id = space ? space->id : -1;
    return 0;
}

void tokenizer_close(Tokenizer *t) {
    free(t->vocab);
    free(t->scores);
    free(t->sorted);
    free(t->strings);
    memset(t, 0, sizeof *t);
}

static int lookup(const Tokenizer *t, const char *str) {
    TokenIndex key = {str, 0};
    TokenIndex *res = bsearch(&key, t->sorted, (size_t)t->vocab_size, sizeof *t->sorted,
                              compare_tokens);
    return res ? res->id : -1;
}

size_t utf8_invalid_at(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (p[i]) {
        unsigned c = p[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; min = 0x10000; }
        else return i + 1;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return i + 1;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i + 1;
        i += n + 1;
    }
    return 0;
}

size_t tokenizer_max_tokens(const char *text) { return strlen(text) + 3; }

/* Id of the merge of pieces a and b, or -1; buf holds 2 * max_token_length + 1 bytes. */
static int merge_id(const Tokenizer *t, int a, int b, char *buf) {
    size_t la = strlen(t->vocab[a]), lb = strlen(t->vocab[b]);
    memcpy(buf, t->vocab[a], la);
    memcpy(buf + la, t->vocab[b], lb + 1);
    return lookup(t, buf);
}

int tokenizer_encode(const Tokenizer *t, const char *text, int *tokens, int *n_tokens,
                     Error *err) {
    size_t bad = utf8_invalid_at(text);
    if (bad) return fail(err, "prompt is not valid UTF-8 (byte %zu)", bad);
    int n = 0;
    tokens[n++] = TOKEN_BOS;
    if (text[0] != '\0') {
        if (t->space_id < 0) return fail(err, "tokenizer has no \" \" piece to prefix a prompt");
        tokens[n++] = t->space_id;
    }
    /* one token per code point if the vocabulary has it, else its bytes (byte fallback) */
    char cp[5];
    for (const char *c = text; *c;) {
        size_t len = 1;
        while (len < 4 && ((unsigned char)c[len] & 0xC0) == 0x80) len++;
        memcpy(cp, c, len);
        cp[len] = '\0';
        int id = lookup(t, cp);
        if (id >= 0) {
            tokens[n++] = id;
        } else {
            for (size_t i = 0; i < len; i++) {
                int byte_id = (unsigned char)cp[i] + 3; /* after <unk>, <s>, </s> */
                if (byte_id >= t->vocab_size)
                    return fail(err, "prompt byte 0x%02x has no token in this vocabulary",
                                (unsigned char)cp[i]);
                tokens[n++] = byte_id;
            }
        }
        c += len;
    }
    /* Merge the best-scoring adjacent pair until none merges, exactly as run.c (first pair
     * wins ties, scores must beat -1e10), keeping each pair's merge cached so a long prompt
     * costs O(n^2) comparisons rather than O(n^2) string look-ups. */
    char *buf = malloc(2 * (size_t)t->max_token_length + 1);
    int *pair = malloc(sizeof(int) * (size_t)(n > 1 ? n - 1 : 1));
    if (!buf || !pair) {
        free(buf);
        free(pair);
        return fail(err, "out of memory while encoding the prompt");
    }
    for (int i = 0; i + 1 < n; i++) pair[i] = merge_id(t, tokens[i], tokens[i + 1], buf);
    for (;;) {
        float best_score = -1e10f;
        int best = -1;
        for (int i = 0; i + 1 < n; i++) {
            if (pair[i] != -1 && t->scores[pair[i]] > best_score) {
                best_score = t->scores[pair[i]];
                best = i;
            }
        }
        if (best < 0) break;
        tokens[best] = pair[best];
        memmove(tokens + best + 1, tokens + best + 2, sizeof(int) * (size_t)(n - best - 2));
        memmove(pair + best, pair + best + 1, sizeof(int) * (size_t)(n - best - 2));
        n--;
        if (best > 0) pair[best - 1] = merge_id(t, tokens[best - 1], tokens[best], buf);
        if (best + 1 < n) pair[best] = merge_id(t, tokens[best], tokens[best + 1], buf);
    }
    free(buf);
    free(pair);
    *n_tokens = n;
    return 0;
}

const char *tokenizer_decode(const Tokenizer *t, int prev, int token) {
    const char *piece = t->vocab[token];
    /* after BOS, sentencepiece strips the leading space */
    if (prev == TOKEN_BOS && piece[0] == ' ') piece++;
    /* raw-byte tokens look like "<0x0A>": run.c's sscanf("<0x%02hhX>") */
    if (piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && isxdigit((unsigned char)piece[3])) {
        int v = 0;
        for (int k = 3; k < 5 && isxdigit((unsigned char)piece[k]); k++) {
            char ch = piece[k];
            v = v * 16 + (isdigit((unsigned char)ch) ? ch - '0' : (tolower((unsigned char)ch) - 'a' + 10));
        }
        piece = (const char *)t->byte_pieces + v * 2;
    }
    return piece;
}

int llama2_piece_is_printable(const char *piece) {
    if (piece[0] == '\0') return 0;
    if (piece[1] == '\0') {
        unsigned char b = (unsigned char)piece[0];
        if (!(isprint(b) || isspace(b))) return 0;
    }
    return 1;
}
