/* The microphone: ALSA capture of one utterance at 16 kHz mono, push-to-talk (Enter on
 * stdin, or a GPIO button), ended by silence (energy-based), or a WAV file for tests. */
#ifndef STORYTELLER_MIC_H
#define STORYTELLER_MIC_H

#include <stddef.h>
#include <stdint.h>

#include "../src/error.h"

typedef struct {
    const char *device; /* ALSA capture device, e.g. "default" or "hw:1,0" */
    int button_gpio;    /* sysfs GPIO number of the push-to-talk button, -1 = Enter; the
                         * button pulls the pin to ground (pull-up): pressed reads 0 */
    double max_seconds; /* longest utterance */
    double silence_seconds; /* this much quiet after speech ends the utterance */
} MicOptions;

/* Waits for push-to-talk, records until silence; *pcm is malloc'd 16 kHz mono samples.
 * Returns 0 on success, 1 when stdin closed (no more requests), -1 on error. */
int mic_listen(const MicOptions *o, int16_t **pcm, size_t *n, Error *err);

#endif
