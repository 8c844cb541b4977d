/* The tokenizer: loading, encoding and decoding. An input is a prompt and a tokenizer
 * file: [uint16 LE prompt length][prompt bytes][tokenizer file]. The vocabulary size the
 * loader is asked for is the number of whole token records the file holds (plus one
 * when bytes are left over, which the loader must reject): the tokenizer file is read as
 * the model of that vocabulary would read it. */
#define _GNU_SOURCE /* memfd_create */
#include <string.h>

#include "fuzz_io.h"
#include "../src/tokenizer.h"

/* Whole records: int32 max_token_length, then per token float score, int32 len, bytes. */
static int count_tokens(const uint8_t *d, size_t n) {
    if (n < 4) return 1;
    size_t off = 4;
    int count = 0;
    while (n - off >= 8 && count < (1 << 20)) {
        int32_t len;
        memcpy(&len, d + off + 4, 4);
        if (len < 0 || (size_t)len > n - off - 8) break;
        off += 8 + (size_t)len;
        count++;
    }
    return count + (off != n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return -1;
    size_t text_len = (size_t)data[0] | (size_t)data[1] << 8;
    if (text_len > size - 2) return -1;
    const uint8_t *file = data + 2 + text_len;
    size_t file_size = size - 2 - text_len;
    char *text = malloc(text_len + 1);
    if (!text) return 0;
    memcpy(text, data + 2, text_len);
    text[text_len] = '\0'; /* the engine takes C strings: an inner NUL ends the prompt */

    FuzzFile f;
    fuzz_file_open(&f, file, file_size);
    Tokenizer t;
    Error err = {{0}};
    int vocab = count_tokens(file, file_size);
    if (tokenizer_open(&t, f.path, vocab, &err) == 0) {
        int *tokens = malloc(tokenizer_max_tokens(text) * sizeof *tokens);
        int n = 0;
        if (tokens && tokenizer_encode(&t, text, tokens, &n, &err) == 0) {
            FUZZ_ASSERT(n >= 1 && (size_t)n <= tokenizer_max_tokens(text));
            int prev = tokens[0];
            for (int i = 0; i < n; i++) {
                FUZZ_ASSERT(tokens[i] >= 0 && tokens[i] < vocab);
                const char *piece = tokenizer_decode(&t, prev, tokens[i]);
                FUZZ_ASSERT(piece != NULL);
                (void)strlen(piece);
                prev = tokens[i];
            }
        }
        free(tokens);
        /* every piece of the vocabulary, after BOS and after another token */
        for (int i = 0; i < vocab; i++) {
            (void)strlen(tokenizer_decode(&t, LLAMA2_TOKEN_BOS, i));
            (void)strlen(tokenizer_decode(&t, i, i));
        }
        tokenizer_close(&t);
    } else {
        FUZZ_ASSERT(err.msg[0] != '\0');
    }
    fuzz_file_close(&f);
    free(text);
    return 0;
}
