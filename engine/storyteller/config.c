#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef STORYTELLER_DATA
#define STORYTELLER_DATA "/usr/share/storyteller"
#endif

void config_defaults(Config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model, sizeof c->model, "%s/model.bin", STORYTELLER_DATA);
    snprintf(c->tokenizer, sizeof c->tokenizer, "%s/tokenizer.bin", STORYTELLER_DATA);
    c->temperature = 1.0f;
    c->topp = 0.9f;
    c->steps = 256;
    snprintf(c->path, sizeof c->path, "auto");
    snprintf(c->voice, sizeof c->voice, "en+m3");
    c->speed = 150;
    c->pitch = 40;
    snprintf(c->device, sizeof c->device, "default");
    snprintf(c->mic_device, sizeof c->mic_device, "default");
    c->button_gpio = -1;
    snprintf(c->asr_model, sizeof c->asr_model, "/usr/share/pocketsphinx/model/en-us/en-us");
    snprintf(c->asr_dict, sizeof c->asr_dict, "%s/story.dict", STORYTELLER_DATA);
    snprintf(c->led, sizeof c->led, "none");
    c->listen_sound = 1;
}

const char *config_keys(void) {
    return "model tokenizer temperature topp seed steps path voice speed pitch device "
           "mic_device button_gpio asr_model asr_dict espeak_data led listen_sound";
}

static int set_str(char *dst, size_t cap, const char *v, const char *key, const char *where,
                   Error *err) {
    if (strlen(v) >= cap) return fail(err, "%s: value of %s is too long", where, key);
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

/* A real number in [lo, hi]: NaN and the infinities fail the range test as written
 * (every comparison with NaN is false, so the test is "inside", not "not outside"). */
static int set_real(float *out, const char *v, double lo, double hi, const char *key,
                    const char *where, Error *err) {
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d) || !(d >= lo && d <= hi))
        return fail(err, "%s: %s must be a number in [%g, %g], got '%s'", where, key, lo, hi, v);
    *out = (float)d;
    return 0;
}

/* A whole number in [lo, hi], decimal digits only (an optional '-'): strtoll with its
 * overflow check, never a float converted to an integer type (UB out of range). */
static int set_int(long long *out, const char *v, long long lo, long long hi, const char *key,
                   const char *where, Error *err) {
    const char *digits = v + (*v == '-');
    char *end = NULL;
    long long n = 0;
    int ok = isdigit((unsigned char)*digits);
    if (ok) {
        errno = 0;
        n = strtoll(v, &end, 10);
        ok = errno == 0 && *end == '\0' && n >= lo && n <= hi;
    }
    if (!ok)
        return fail(err, "%s: %s must be a whole number in [%lld, %lld], got '%s'", where, key,
                    lo, hi, v);
    *out = n;
    return 0;
}

int config_set(Config *c, const char *key, const char *v, const char *where, Error *err) {
    long long n = 0;
#define STR(name) if (!strcmp(key, #name)) return set_str(c->name, sizeof c->name, v, key, where, err)
#define REAL(name, lo, hi) \
    if (!strcmp(key, #name)) return set_real(&c->name, v, lo, hi, key, where, err);
#define INT(name, lo, hi, type) \
    if (!strcmp(key, #name)) { \
        if (set_int(&n, v, lo, hi, key, where, err)) return -1; \
        c->name = (type)n; \
        return 0; \
    }
    STR(model); STR(tokenizer); STR(voice); STR(device); STR(mic_device);
    STR(asr_model); STR(asr_dict); STR(espeak_data);
    REAL(temperature, 0, 10) REAL(topp, 0, 1)
    INT(seed, 0, 4294967295LL, long long) INT(steps, 1, 1 << 20, int)
    INT(speed, 80, 450, int) INT(pitch, 0, 99, int) INT(button_gpio, -1, 4095, int)
#undef STR
#undef REAL
#undef INT
    if (!strcmp(key, "led")) return set_str(c->led, sizeof c->led, v, key, where, err);
    if (!strcmp(key, "listen_sound")) {
        if (strcmp(v, "on") && strcmp(v, "off"))
            return fail(err, "%s: listen_sound must be on or off, got '%s'", where, v);
        c->listen_sound = !strcmp(v, "on");
        return 0;
    }
    if (!strcmp(key, "path")) {
        if (strcmp(v, "auto") && strcmp(v, "ref") && strcmp(v, "fast"))
            return fail(err, "%s: path must be auto, ref or fast, got '%s'", where, v);
        return set_str(c->path, sizeof c->path, v, key, where, err);
    }
    return fail(err, "%s: unknown setting '%s' (known: %s)", where, key, config_keys());
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

int config_load(Config *c, const char *path, int required, Error *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!required && errno == ENOENT) return 0;
        return fail(err, "%s: cannot read config: %s", path, strerror(errno));
    }
    char line[2048], where[1100];
    int n = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        n++;
        snprintf(where, sizeof where, "%s:%d", path, n);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = fail(err, "%s: line too long", where);
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = fail(err, "%s: expected 'key = value', got '%.60s'", where, s);
            break;
        }
        *eq = '\0';
        rc = config_set(c, trim(s), trim(eq + 1), where, err);
    }
    fclose(f);
    return rc;
}
