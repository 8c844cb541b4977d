/* Playback to a sound card (ALSA). A build with AUDIO=none has the same interface and
 * says clearly that it can only write WAV files. */
#ifndef STORYTELLER_AUDIO_H
#define STORYTELLER_AUDIO_H

#include <stddef.h>
#include <stdint.h>

#include "../src/error.h"

typedef struct PcmOut PcmOut;

/* Opens `device` (e.g. "default", "hw:1,0") for mono int16 at `rate`; never blocks on a
 * busy device. */
PcmOut *pcm_open(const char *device, int rate, Error *err);
int pcm_write(PcmOut *p, const int16_t *pcm, size_t n, Error *err);
/* Plays what is queued, then closes. */
int pcm_close(PcmOut *p, Error *err);

#endif
