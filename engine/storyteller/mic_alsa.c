/* The microphone through ALSA: push-to-talk, then record until the child stops talking.
 * The end of the utterance is found by energy alone (20 ms frames, RMS against a threshold
 * set from the room's noise), which costs nothing on the Duo's CPU. */
#include <alsa/asoundlib.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "asr.h"
#include "mic.h"

#define FRAME (ASR_RATE / 50) /* 20 ms of samples */
#define CALIBRATION_FRAMES 10 /* the first 200 ms only measure the room */
#define SPEECH_FLOOR 300.0    /* RMS below this is never speech, however quiet the room */
#define NOISE_FACTOR 3.0      /* speech is this many times louder than the noise */
#define START_FRAMES 3        /* 60 ms loud in a row: a click of the button is not speech */
#define GPIO_POLL_NS 20000000L

static void quiet_alsa(const char *file, int line, const char *fn, int err, const char *fmt, ...) {
    (void)file, (void)line, (void)fn, (void)err, (void)fmt;
}

/* ---- end of utterance: pure logic, one frame's RMS at a time ------------------------ */

typedef struct {
    size_t frame;            /* frames seen so far */
    double noise, threshold; /* the quietest frame before speech; the level above it */
    size_t loud_run, quiet_run, silence_frames;
    int speaking;
} Endpoint;

static double frame_rms(const int16_t *x, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return sqrt(sum / (double)n);
}

/* Feeds one frame's RMS; returns 1 once enough quiet has followed the speech. */
static int endpoint_feed(Endpoint *e, double rms) {
    size_t i = e->frame++;
    /* the noise is the quietest frame so far: a click or a word early in the calibration
     * must not raise it, and a child who spoke straight away is still heard once a pause
     * between words lowers it */
    if (!e->speaking && (i == 0 || rms < e->noise)) {
        e->noise = rms;
        e->threshold = fmax(NOISE_FACTOR * e->noise, SPEECH_FLOOR);
    }
    if (i < CALIBRATION_FRAMES) return 0;
    if (rms > e->threshold) {
        e->quiet_run = 0;
        e->loud_run++;
        if (e->loud_run >= START_FRAMES) e->speaking = 1;
        return 0;
    }
    e->loud_run = 0;
    return e->speaking && ++e->quiet_run >= e->silence_frames;
}

/* ---- push-to-talk ------------------------------------------------------------------- */

static int wait_enter(void) {
    fprintf(stderr, "Press Enter and speak...\n");
    int c;
    while ((c = getchar()) != EOF && c != '\n') {
    }
    return c == EOF ? 1 : 0;
}

static int write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t)strlen(text), w = write(fd, text, (size_t)len);
    int saved = errno;
    close(fd);
    errno = saved;
    return w == len ? 0 : -1;
}

static void sleep_ns(long ns) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ns};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Exports the pin as an input when the kernel has not; its files appear (and udev fixes
 * their permissions) a moment after the export, hence the retries. */
static int gpio_open(int gpio, Error *err) {
    char path[96], dir[96], num[16];
    snprintf(path, sizeof path, "/sys/class/gpio/gpio%d/value", gpio);
    snprintf(dir, sizeof dir, "/sys/class/gpio/gpio%d/direction", gpio);
    snprintf(num, sizeof num, "%d", gpio);
    if (access(path, F_OK) != 0) {
        if (write_text("/sys/class/gpio/export", num) != 0)
            return fail(err, "push-to-talk button: cannot export GPIO %d through "
                        "/sys/class/gpio/export: %s", gpio, strerror(errno));
        int tries = 0;
        while (write_text(dir, "in") != 0 && ++tries < 50) sleep_ns(GPIO_POLL_NS);
        if (tries == 50)
            return fail(err, "push-to-talk button: cannot make GPIO %d an input (%s): %s",
                        gpio, dir, strerror(errno));
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail(err, "push-to-talk button: %s: %s", path, strerror(errno));
    return fd;
}

/* The button pulls the pin to ground, against a pull-up: pressed reads "0". */
static int wait_gpio(int gpio, Error *err) {
    int fd = gpio_open(gpio, err);
    if (fd < 0) return -1;
    fprintf(stderr, "Press the button and speak...\n");
    for (;;) {
        char v[4];
        ssize_t got = pread(fd, v, sizeof v, 0);
        if (got <= 0) {
            int saved = errno;
            close(fd);
            return fail(err, "push-to-talk button: reading GPIO %d: %s", gpio,
                        got < 0 ? strerror(saved) : "empty value");
        }
        if (v[0] == '0') break;
        sleep_ns(GPIO_POLL_NS);
    }
    close(fd);
    return 0;
}

/* ---- capture ------------------------------------------------------------------------ */

static snd_pcm_t *capture_open(const char *device, Error *err) {
    snd_pcm_t *pcm = NULL;
    /* non-blocking open: a busy or absent card is an error now, not a hang */
    snd_lib_error_set_handler(quiet_alsa); /* one line of ours, not alsa-lib's own */
    int rc = snd_pcm_open(&pcm, device, SND_PCM_STREAM_CAPTURE, SND_PCM_NONBLOCK);
    if (rc == 0) rc = snd_pcm_nonblock(pcm, 0);
    if (rc == 0)
        rc = snd_pcm_set_params(pcm, SND_PCM_FORMAT_S16_LE, SND_PCM_ACCESS_RW_INTERLEAVED, 1,
                                ASR_RATE, 1, 200000);
    if (rc < 0) {
        fail(err, "microphone '%s': %s (set mic_device in the config, e.g. plughw:1,0, or "
             "use --mic-wav FILE)", device, snd_strerror(rc));
        if (pcm) snd_pcm_close(pcm);
        return NULL;
    }
    return pcm;
}

static int read_frame(snd_pcm_t *pcm, const char *device, int16_t *buf, Error *err) {
    size_t left = FRAME;
    while (left > 0) {
        snd_pcm_sframes_t got = snd_pcm_readi(pcm, buf, left);
        if (got < 0) got = snd_pcm_recover(pcm, (int)got, 1); /* overrun: drop it, go on */
        if (got < 0)
            return fail(err, "microphone '%s': %s", device, snd_strerror((int)got));
        buf += got;
        left -= (size_t)got;
    }
    return 0;
}

/* Records into buf (room for max_frames frames) until the endpoint says done; returns
 * the frames recorded. */
static long record(snd_pcm_t *pcm, const MicOptions *o, Endpoint *e, int16_t *buf,
                   size_t max_frames, Error *err) {
    size_t f = 0;
    while (f < max_frames) {
        int16_t *frame = buf + f * FRAME;
        if (read_frame(pcm, o->device, frame, err) != 0) return -1;
        f++;
        if (endpoint_feed(e, frame_rms(frame, FRAME))) break;
    }
    return (long)f;
}

int mic_listen(const MicOptions *o, int16_t **pcm, size_t *n, Error *err) {
    *pcm = NULL;
    *n = 0;
    /* at most a minute: the whole recording is held in memory (2 MB), on a 64 MB board */
    if (!(o->max_seconds >= 0.5 && o->max_seconds <= 60) ||
        !(o->silence_seconds > 0 && o->silence_seconds < o->max_seconds))
        return fail(err, "microphone: bad timing (max %g s, silence %g s)", o->max_seconds,
                    o->silence_seconds);
    /* open before waiting, so a missing card is reported at once; capture only starts
     * with the first read, so nothing overruns while the child gets ready */
    snd_pcm_t *dev = capture_open(o->device, err);
    if (!dev) return -1;
    int waited = o->button_gpio < 0 ? wait_enter() : wait_gpio(o->button_gpio, err);
    if (waited != 0) {
        snd_pcm_close(dev);
        return waited; /* 1: stdin closed, -1: the button failed */
    }
    size_t max_frames = (size_t)(o->max_seconds * 50);
    int16_t *buf = malloc(max_frames * FRAME * sizeof *buf);
    if (!buf) {
        snd_pcm_close(dev);
        return fail(err, "out of memory");
    }
    Endpoint e = {.silence_frames = (size_t)ceil(o->silence_seconds * 50)};
    long frames = record(dev, o, &e, buf, max_frames, err);
    snd_pcm_drop(dev);
    snd_pcm_close(dev);
    if (frames < 0) {
        free(buf);
        return -1;
    }
    /* no speech at all: nothing to decode (the recogniser trims the quiet around speech) */
    *n = e.speaking ? (size_t)frames * FRAME : 0;
    *pcm = buf;
    return 0;
}
