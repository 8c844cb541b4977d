/* Text to speech behind a thin interface: eSpeak's speak_lib API, which both espeak 1.48
 * (Buildroot's package) and espeak-ng (Debian's) provide. */
#ifndef STORYTELLER_TTS_H
#define STORYTELLER_TTS_H

#include <stddef.h>
#include <stdint.h>

#include "../src/error.h"

typedef struct Tts Tts;
/* Receives synthesized mono int16 samples; non-zero stops the synthesis. */
typedef int (*TtsSamples)(void *user, const int16_t *pcm, size_t n);

/* data_path: eSpeak's data directory, NULL for the library's default. */
Tts *tts_open(const char *voice, int speed_wpm, int pitch, const char *data_path, Error *err);
int tts_rate(const Tts *t);
/* Synthesizes text (UTF-8) synchronously, passing samples to cb as they are made. */
int tts_speak(Tts *t, const char *text, TtsSamples cb, void *user, Error *err);
void tts_close(Tts *t);

#endif
