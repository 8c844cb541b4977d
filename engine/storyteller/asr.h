/* Speech recognition of the child's request: PocketSphinx in grammar (JSGF) mode over
 * a small vocabulary, never a large language model. Audio is 16 kHz mono int16. */
#ifndef STORYTELLER_ASR_H
#define STORYTELLER_ASR_H

#include <stddef.h>
#include <stdint.h>

#include "../src/error.h"

#define ASR_RATE 16000

typedef struct Recognizer Recognizer;

/* model_dir: the acoustic model (e.g. /usr/share/pocketsphinx/model/en-us/en-us);
 * dict: a pronunciation dictionary holding at least the grammar's words (story.dict). */
Recognizer *asr_open(const char *model_dir, const char *dict, Error *err);
/* Decodes one utterance; text receives the recognised request's words, or "" when the
 * speech was no request (the grammar's garbage loop won) or nothing was heard. Returns -1
 * only on a decoder failure. STORYTELLER_ASR_TRACE=1 prints the raw hypothesis. */
int asr_decode(Recognizer *r, const int16_t *pcm, size_t n, char *text, size_t cap, Error *err);
void asr_close(Recognizer *r);

#endif
