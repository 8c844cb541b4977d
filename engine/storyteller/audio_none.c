#include "audio.h"

PcmOut *pcm_open(const char *device, int rate, Error *err) {
    (void)rate;
    fail(err, "cannot play to '%s': this storyteller was built without ALSA (AUDIO=none); "
         "use --wav FILE", device);
    return NULL;
}

int pcm_write(PcmOut *p, const int16_t *pcm, size_t n, Error *err) {
    (void)p, (void)pcm, (void)n;
    return fail(err, "built without ALSA");
}

int pcm_close(PcmOut *p, Error *err) {
    (void)p, (void)err;
    return 0;
}
