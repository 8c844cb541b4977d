#include <alsa/asoundlib.h>
#include <stdlib.h>

#include "audio.h"

struct PcmOut {
    snd_pcm_t *pcm;
    char device[128];
};

/* alsa-lib prints its own diagnostics to stderr; we report each failure in one line */
static void quiet(const char *file, int line, const char *fn, int err, const char *fmt, ...) {
    (void)file, (void)line, (void)fn, (void)err, (void)fmt;
}

PcmOut *pcm_open(const char *device, int rate, Error *err) {
    snd_lib_error_set_handler(quiet);
    PcmOut *p = calloc(1, sizeof *p);
    if (!p) {
        fail(err, "out of memory");
        return NULL;
    }
    snprintf(p->device, sizeof p->device, "%s", device);
    /* non-blocking open: a busy or absent card is an error now, not a hang */
    int rc = snd_pcm_open(&p->pcm, device, SND_PCM_STREAM_PLAYBACK, SND_PCM_NONBLOCK);
    if (rc == 0) rc = snd_pcm_nonblock(p->pcm, 0);
    if (rc == 0)
        rc = snd_pcm_set_params(p->pcm, SND_PCM_FORMAT_S16_LE, SND_PCM_ACCESS_RW_INTERLEAVED, 1,
                                (unsigned)rate, 1, 500000);
    if (rc < 0) {
        fail(err, "audio device '%s': %s (set `device` in the config, or use --wav FILE)",
             device, snd_strerror(rc));
        if (p->pcm) snd_pcm_close(p->pcm);
        free(p);
        return NULL;
    }
    return p;
}

int pcm_write(PcmOut *p, const int16_t *pcm, size_t n, Error *err) {
    while (n > 0) {
        snd_pcm_sframes_t w = snd_pcm_writei(p->pcm, pcm, n);
        if (w < 0) w = snd_pcm_recover(p->pcm, (int)w, 1); /* underrun: recover, retry */
        if (w < 0) return fail(err, "audio device '%s': %s", p->device, snd_strerror((int)w));
        pcm += w;
        n -= (size_t)w;
    }
    return 0;
}

int pcm_close(PcmOut *p, Error *err) {
    int rc = snd_pcm_drain(p->pcm);
    snd_pcm_close(p->pcm);
    free(p);
    return rc < 0 ? fail(err, "audio device: %s", snd_strerror(rc)) : 0;
}
