#include "speech.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double clock_seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Synthesized samples of one sentence, straight to the output. */
static int deliver(void *user, const int16_t *pcm, size_t n) {
    Speech *s = user;
    if (s->samples == 0) s->stats.first_sound_seconds = clock_seconds(CLOCK_MONOTONIC) - s->started;
    s->samples += n;
    int rc = s->to_wav ? wav_writer_write(&s->wav, pcm, n, &s->err) : pcm_write(s->pcm, pcm, n, &s->err);
    if (rc) s->failed = 1;
    return rc != 0;
}

static void *work(void *arg) {
    Speech *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->count == 0 && !s->closing) pthread_cond_wait(&s->changed, &s->mu);
        if (s->count == 0) break; /* closing and drained */
        char *text = s->queue[s->head];
        pthread_mutex_unlock(&s->mu);
        if (!s->failed) {
            double cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
            Error err;
            if (tts_speak(s->tts, text, deliver, s, &err) && !s->failed) {
                s->err = err;
                s->failed = 1;
            }
            s->stats.tts_cpu_seconds += clock_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu;
            s->stats.sentences++;
        }
        free(text);
        pthread_mutex_lock(&s->mu);
        s->head = (s->head + 1) % SPEECH_QUEUE;
        s->count--;
        pthread_cond_broadcast(&s->changed);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int speech_start(Speech *s, Tts *tts, const char *wav_path, const char *device, Error *err) {
    memset(s, 0, sizeof *s);
    s->tts = tts;
    s->stats.first_sound_seconds = -1;
    s->to_wav = wav_path != NULL;
    if (s->to_wav) {
        if (wav_writer_open(&s->wav, wav_path, tts_rate(tts), err)) return -1;
    } else if (!(s->pcm = pcm_open(device, tts_rate(tts), err))) {
        return -1;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->changed, NULL);
    s->started = clock_seconds(CLOCK_MONOTONIC);
    if (pthread_create(&s->worker, NULL, work, s) != 0) {
        if (s->to_wav) wav_writer_abort(&s->wav);
        else pcm_close(s->pcm, err);
        return fail(err, "cannot start the speech thread");
    }
    return 0;
}

int speech_say(Speech *s, const char *sentence, Error *err) {
    char *copy = strdup(sentence);
    if (!copy) return fail(err, "out of memory");
    pthread_mutex_lock(&s->mu);
    while (s->count == SPEECH_QUEUE) pthread_cond_wait(&s->changed, &s->mu);
    s->queue[(s->head + s->count) % SPEECH_QUEUE] = copy;
    s->count++;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int speech_finish(Speech *s, SpeechStats *stats, Error *err) {
    pthread_mutex_lock(&s->mu);
    s->closing = 1;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->worker, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->changed);
    int rc = 0;
    if (s->failed) {
        *err = s->err;
        rc = -1;
    }
    if (s->to_wav) {
        if (rc) wav_writer_abort(&s->wav);
        else rc = wav_writer_close(&s->wav, err);
    } else if (pcm_close(s->pcm, rc ? &s->err : err) && rc == 0) {
        rc = -1;
    }
    s->stats.audio_seconds = (double)s->samples / tts_rate(s->tts);
    *stats = s->stats;
    return rc;
}
