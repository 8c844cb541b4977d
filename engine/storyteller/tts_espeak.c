#include "tts.h"

#include <stdlib.h>
#include <string.h>

#ifdef STORYTELLER_ESPEAK1 /* TTS=espeak: eSpeak 1.48, as Buildroot packages it */
#include <espeak/speak_lib.h>
#else
#include <espeak-ng/speak_lib.h>
#endif

struct Tts {
    int rate;
};

/* Where one synthesis call's samples go; passed through eSpeak's user_data. */
typedef struct {
    TtsSamples cb;
    void *user;
    int stop;
} Delivery;

static int on_samples(short *wav, int n, espeak_EVENT *events) {
    Delivery *d = events ? events[0].user_data : NULL;
    if (!d || d->stop) return 1;
    if (wav && n > 0 && d->cb(d->user, (const int16_t *)wav, (size_t)n)) d->stop = 1;
    return d->stop;
}

Tts *tts_open(const char *voice, int speed_wpm, int pitch, const char *data_path, Error *err) {
    int rate = espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0);
    if (rate <= 0) {
        fail(err, "eSpeak could not start (data directory %s)", data_path ? data_path : "default");
        return NULL;
    }
    if (espeak_SetVoiceByName(voice) != EE_OK) {
        fail(err, "eSpeak has no voice '%s' (try en, en-us, en+m3; `espeak-ng --voices`)", voice);
        espeak_Terminate();
        return NULL;
    }
    if (espeak_SetParameter(espeakRATE, speed_wpm, 0) != EE_OK ||
        espeak_SetParameter(espeakPITCH, pitch, 0) != EE_OK) {
        fail(err, "eSpeak refused speed %d / pitch %d", speed_wpm, pitch);
        espeak_Terminate();
        return NULL;
    }
    espeak_SetSynthCallback(on_samples);
    Tts *t = calloc(1, sizeof *t);
    if (!t) {
        espeak_Terminate();
        fail(err, "out of memory");
        return NULL;
    }
    t->rate = rate;
    return t;
}

int tts_rate(const Tts *t) { return t->rate; }

int tts_speak(Tts *t, const char *text, TtsSamples cb, void *user, Error *err) {
    (void)t;
    Delivery d = {cb, user, 0};
    espeak_ERROR e = espeak_Synth(text, strlen(text) + 1, 0, POS_CHARACTER, 0,
                                  espeakCHARS_UTF8, NULL, &d);
    if (e != EE_OK) return fail(err, "eSpeak failed to synthesize (error %d)", (int)e);
    espeak_Synchronize();
    return 0;
}

void tts_close(Tts *t) {
    if (!t) return;
    espeak_Terminate();
    free(t);
}
