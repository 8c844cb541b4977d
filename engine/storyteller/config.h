/* The storyteller's settings: built-in defaults, then /etc/storyteller.conf (key = value,
 * '#' comments), then the command line. */
#ifndef STORYTELLER_CONFIG_H
#define STORYTELLER_CONFIG_H

#include "../src/error.h"

#define CONFIG_STR 512

typedef struct {
    char model[CONFIG_STR], tokenizer[CONFIG_STR];
    float temperature, topp;
    long long seed;      /* 0 = from the clock */
    int steps;           /* the longest story, in tokens */
    char path[16];       /* engine compute path: auto, ref, fast */
    char voice[64];
    int speed, pitch;    /* words per minute; 0-99 */
    char device[128];    /* ALSA playback device */
    char mic_device[128];
    int button_gpio;     /* push-to-talk GPIO, -1 = Enter */
    char asr_model[CONFIG_STR], asr_dict[CONFIG_STR];
    char espeak_data[CONFIG_STR]; /* "" = the library's default */
    char led[64];        /* feedback LED: none, gpioN or a /sys/class/leds name */
    int listen_sound;    /* a chime when it starts listening: 1 on, 0 off */
} Config;

void config_defaults(Config *c);
/* Applies `key = value`; where names the origin ("file:line" or "--option"). */
int config_set(Config *c, const char *key, const char *value, const char *where, Error *err);
/* Reads a config file; a missing file is an error only when `required`. */
int config_load(Config *c, const char *path, int required, Error *err);
/* The keys, for --help and error messages. */
const char *config_keys(void);

#endif
