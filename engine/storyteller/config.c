#include "config.h"

#include <ctype.h>
#include <errno.h>
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
}

const char *config_keys(void) {
    return "model tokenizer temperature topp seed steps path voice speed pitch device "
           "mic_device button_gpio asr_model asr_dict espeak_data";
}

static int set_str(char *dst, size_t cap, const char *v, const char *key, const char *where,
                   Error *err) {
    if (strlen(v) >= cap) return fail(err, "%s: value of %s is too long", where, key);
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

static int set_num(double *out, const char *v, double lo, double hi, const char *key,
                   const char *where, Error *err) {
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || d < lo || d > hi)
        return fail(err, "%s: %s must be a number in [%g, %g], got '%s'", where, key, lo, hi, v);
    *out = d;
    return 0;
}

int config_set(Config *c, const char *key, const char *v, const char *where, Error *err) {
    double d = 0;
#define STR(name) if (!strcmp(key, #name)) return set_str(c->name, sizeof c->name, v, key, where, err)
#define NUM(name, lo, hi, type) \
    if (!strcmp(key, #name)) { \
        if (set_num(&d, v, lo, hi, key, where, err)) return -1; \
        c->name = (type)d; \
        return 0; \
    }
    STR(model); STR(tokenizer); STR(voice); STR(device); STR(mic_device);
    STR(asr_model); STR(asr_dict); STR(espeak_data);
    NUM(temperature, 0, 10, float) NUM(topp, 0, 1, float) NUM(seed, 0, 4294967295.0, long long)
    NUM(steps, 1, 1 << 20, int) NUM(speed, 80, 450, int) NUM(pitch, 0, 99, int)
    NUM(button_gpio, -1, 4095, int)
#undef STR
#undef NUM
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
