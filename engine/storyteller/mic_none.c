/* The microphone in a build without ALSA (AUDIO=none): the same interface, and a clear
 * sentence saying what to use instead. */
#include "mic.h"

int mic_listen(const MicOptions *o, int16_t **pcm, size_t *n, Error *err) {
    *pcm = NULL;
    *n = 0;
    return fail(err, "cannot record from '%s': this storyteller was built without ALSA "
                "(AUDIO=none): use --mic-wav FILE", o->device);
}
