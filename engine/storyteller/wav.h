/* WAV files: reading any PCM16 WAV (for --mic-wav), and writing the story's speech
 * completely or not at all (a temp file renamed on close). */
#ifndef STORYTELLER_WAV_H
#define STORYTELLER_WAV_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../src/error.h"

typedef struct {
    int rate, channels;
    size_t frames;
    int16_t *samples; /* interleaved */
} WavData;

/* The most sample bytes wav_read takes (about 17 minutes of 16 kHz mono): the data
 * chunk's size is bounded by this and by what the file holds, never trusted. */
#define WAV_MAX_BYTES (32 << 20)

int wav_read(const char *path, WavData *out, Error *err);
void wav_free(WavData *w);
/* Mono (channels averaged) at `rate` by linear interpolation; malloc'd, *n samples. */
int16_t *wav_to_mono(const WavData *w, int rate, size_t *n);

typedef struct {
    FILE *f;
    char path[1024], tmp[1040];
    int rate;
    size_t frames;
} WavWriter;

int wav_writer_open(WavWriter *w, const char *path, int rate, Error *err);
int wav_writer_write(WavWriter *w, const int16_t *pcm, size_t n, Error *err);
/* Completes the header and renames the temp file into place. */
int wav_writer_close(WavWriter *w, Error *err);
void wav_writer_abort(WavWriter *w);

#endif
