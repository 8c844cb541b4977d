#include "feedback.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Writes `text` to DIR/NAME (a sysfs attribute: one write, no buffering games). */
static int put(const Feedback *f, const char *name, const char *text, Error *err) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    int ok = fp && fputs(text, fp) >= 0;
    if (fp && fclose(fp) != 0) ok = 0;
    if (!ok)
        return fail(err, "LED: cannot write '%s' to %s: %s (set led = none in the config "
                    "to go without)", text, path, strerror(errno ? errno : EIO));
    return 0;
}

static int writable(const char *dir, const char *name) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, W_OK) == 0;
}

static int open_gpio(Feedback *f, const char *root, const char *num, Error *err) {
    char *end;
    long n = strtol(num, &end, 10);
    if (!*num || *end || n < 0 || n > 4095)
        return fail(err, "LED 'gpio%s': expected gpioN with N a GPIO number (0-4095)", num);
    snprintf(f->dir, sizeof f->dir, "%s/class/gpio/gpio%ld", root, n);
    if (access(f->dir, F_OK) != 0) { /* not exported yet */
        char export[560];
        snprintf(export, sizeof export, "%s/class/gpio/export", root);
        FILE *fp = fopen(export, "w");
        if (fp) {
            fprintf(fp, "%ld", n);
            fclose(fp);
        }
    }
    if (!writable(f->dir, "value"))
        return fail(err, "LED gpio%ld: %s/value is not there or not writable (is GPIO %ld "
                    "free? set led = none in the config to go without)", n, f->dir, n);
    f->gpio = 1;
    if (writable(f->dir, "direction") && put(f, "direction", "out", err)) return -1;
    return 0;
}

int feedback_open(Feedback *f, const char *root, const char *led, Error *err) {
    memset(f, 0, sizeof *f);
    if (!led || !*led || !strcmp(led, "none")) return 0;
    int rc;
    if (!strncmp(led, "gpio", 4) && led[4] >= '0' && led[4] <= '9') {
        rc = open_gpio(f, root, led + 4, err);
    } else if (strchr(led, '/') || !strcmp(led, ".") || !strcmp(led, "..")) {
        rc = fail(err, "LED '%s': expected a name from /sys/class/leds, gpioN or none", led);
    } else {
        snprintf(f->dir, sizeof f->dir, "%s/class/leds/%s", root, led);
        rc = writable(f->dir, "brightness") && writable(f->dir, "trigger")
                 ? 0
                 : fail(err, "LED '%s': %s/brightness and trigger are not there or not "
                        "writable (ls %s/class/leds; or led = none)", led, f->dir, root);
    }
    if (rc) f->dir[0] = '\0';
    return rc;
}

static int gpio_level(Feedback *f, int on, Error *err) {
    f->lit = on;
    return put(f, "value", on ? "1" : "0", err);
}

int feedback_set(Feedback *f, FeedbackState state, Error *err) {
    f->state = state;
    if (!f->dir[0]) return 0;
    if (f->gpio) return gpio_level(f, state != FEEDBACK_IDLE, err);
    switch (state) {
    case FEEDBACK_IDLE:
        return put(f, "trigger", "none", err) || put(f, "brightness", "0", err) ? -1 : 0;
    case FEEDBACK_LISTENING: { /* steady, at full brightness */
        char max[32] = "1", path[600];
        snprintf(path, sizeof path, "%s/max_brightness", f->dir);
        FILE *fp = fopen(path, "r");
        if (fp) {
            if (!fgets(max, sizeof max, fp)) snprintf(max, sizeof max, "1");
            fclose(fp);
            max[strcspn(max, "\n")] = '\0';
        }
        return put(f, "trigger", "none", err) || put(f, "brightness", max, err) ? -1 : 0;
    }
    case FEEDBACK_THINKING: /* the kernel's timer trigger blinks it (500 ms by default) */
        if (put(f, "trigger", "timer", err)) return -1;
        if (writable(f->dir, "delay_on")) put(f, "delay_on", "150", NULL);
        if (writable(f->dir, "delay_off")) put(f, "delay_off", "150", NULL);
        return 0;
    case FEEDBACK_SPEAKING:
        return put(f, "trigger", "heartbeat", err);
    }
    return 0;
}

void feedback_tick(Feedback *f) {
    if (f->dir[0] && f->gpio && f->state == FEEDBACK_THINKING) gpio_level(f, !f->lit, NULL);
}

int16_t *feedback_chime(int rate, size_t *n) {
    static const double notes[2] = {880.0, 1318.5}; /* A5 then E6: "I'm listening" */
    size_t per = (size_t)(rate * 0.09), gap = (size_t)(rate * 0.02);
    *n = 2 * per + gap;
    int16_t *pcm = calloc(*n, sizeof *pcm);
    if (!pcm) return NULL;
    size_t fade = per / 6;
    for (int k = 0; k < 2; k++) {
        int16_t *out = pcm + (size_t)k * (per + gap);
        for (size_t i = 0; i < per; i++) {
            double env = 1.0;
            if (i < fade) env = (double)i / (double)fade;
            else if (per - i < fade) env = (double)(per - i) / (double)fade;
            out[i] = (int16_t)lrint(9000.0 * env * sin(6.283185307179586 * notes[k] * (double)i / rate));
        }
    }
    return pcm;
}
