#include "sentences.h"

#include <ctype.h>
#include <string.h>

static int emit(SentenceSplitter *s, size_t end, SentenceFn fn, void *user) {
    char out[SENTENCE_MAX + 1];
    size_t a = 0, b = end;
    while (a < b && isspace((unsigned char)s->buf[a])) a++;
    while (b > a && isspace((unsigned char)s->buf[b - 1])) b--;
    memcpy(out, s->buf + a, b - a);
    out[b - a] = '\0';
    memmove(s->buf, s->buf + end, s->len - end);
    s->len -= end;
    return b > a ? fn(user, out) : 0;
}

/* Where the first complete sentence ends in buf, or 0. */
static size_t sentence_end(const SentenceSplitter *s) {
    for (size_t i = 0; i < s->len; i++) {
        char c = s->buf[i];
        if (c == '\n') return i + 1;
        if (c == '.' || c == '!' || c == '?') {
            size_t j = i + 1;
            while (j < s->len && (s->buf[j] == '"' || s->buf[j] == '\'')) j++;
            if (j < s->len && isspace((unsigned char)s->buf[j])) return j;
        }
    }
    return 0;
}

int splitter_feed(SentenceSplitter *s, const char *text, SentenceFn fn, void *user) {
    for (const char *p = text; *p; p++) {
        if (s->len == SENTENCE_MAX) { /* a run-on "sentence": cut at its last space */
            size_t cut = SENTENCE_MAX;
            while (cut > SENTENCE_MAX / 2 && s->buf[cut - 1] != ' ') cut--;
            if (emit(s, cut, fn, user)) return 1;
        }
        s->buf[s->len++] = *p;
        size_t end;
        while ((end = sentence_end(s)) != 0)
            if (emit(s, end, fn, user)) return 1;
    }
    return 0;
}

int splitter_flush(SentenceSplitter *s, SentenceFn fn, void *user) {
    return s->len ? emit(s, s->len, fn, user) : 0;
}

int splitter_at_sentence_end(const SentenceSplitter *s) {
    size_t n = s->len;
    while (n > 0 && isspace((unsigned char)s->buf[n - 1])) n--;
    while (n > 0 && (s->buf[n - 1] == '"' || s->buf[n - 1] == '\'')) n--;
    if (n == 0) {
        for (size_t i = 0; i < s->len; i++) /* only quotes and spaces: not a sentence yet */
            if (!isspace((unsigned char)s->buf[i])) return 0;
        return 1;
    }
    char c = s->buf[n - 1];
    return c == '.' || c == '!' || c == '?';
}

void splitter_drop(SentenceSplitter *s) { s->len = 0; }
