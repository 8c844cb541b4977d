/* Speaking while the story is still being written: sentences go into a bounded queue; a
 * worker thread synthesizes each one and plays it (or appends it to a WAV file).
 * Generation waits only when the queue is full. */
#ifndef STORYTELLER_SPEECH_H
#define STORYTELLER_SPEECH_H

#include <pthread.h>
#include <stddef.h>

#include "audio.h"
#include "tts.h"
#include "wav.h"

#define SPEECH_QUEUE 8

typedef struct {
    double tts_cpu_seconds;    /* synthesis CPU time (the worker thread's) */
    double audio_seconds;      /* speech produced */
    double first_sound_seconds; /* from speech_start to the first samples out; < 0 if none */
    int sentences;
} SpeechStats;

typedef struct {
    Tts *tts;
    WavWriter wav;
    PcmOut *pcm;
    int to_wav;
    pthread_t worker;
    pthread_mutex_t mu;
    pthread_cond_t changed;
    char *queue[SPEECH_QUEUE];
    int head, count, closing, failed;
    double started;
    size_t samples;
    SpeechStats stats;
    Error err;
} Speech;

/* Output to wav_path when given, else to the ALSA device. */
int speech_start(Speech *s, Tts *tts, const char *wav_path, const char *device, Error *err);
/* Queues a sentence (copied); blocks while the queue is full. */
int speech_say(Speech *s, const char *sentence, Error *err);
/* Waits until everything queued is spoken, closes the output, fills stats. */
int speech_finish(Speech *s, SpeechStats *stats, Error *err);

#endif
