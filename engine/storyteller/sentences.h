/* Cutting the story, as it streams in piece by piece, into sentences to speak. */
#ifndef STORYTELLER_SENTENCES_H
#define STORYTELLER_SENTENCES_H

#include <stddef.h>

#define SENTENCE_MAX 1024

typedef struct {
    char buf[SENTENCE_MAX];
    size_t len;
} SentenceSplitter;

/* Called with each finished sentence (NUL-terminated, trimmed); non-zero stops. */
typedef int (*SentenceFn)(void *user, const char *sentence);

/* Adds text; emits every sentence it completes: after . ! ? (and closing quotes) followed
 * by a space, at a line break, or when the buffer fills (at the last space). */
int splitter_feed(SentenceSplitter *s, const char *text, SentenceFn fn, void *user);
/* 1 when nothing unfinished is held: the text so far ends a sentence (. ! ? and closing
 * quotes, then only spaces) or nothing is pending; 0 in the middle of a sentence. */
int splitter_at_sentence_end(const SentenceSplitter *s);
/* Forgets the unfinished text (a fragment that will not be spoken). */
void splitter_drop(SentenceSplitter *s);
/* Emits whatever remains (the story's unfinished last sentence). */
int splitter_flush(SentenceSplitter *s, SentenceFn fn, void *user);

#endif
