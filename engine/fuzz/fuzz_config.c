/* The storyteller's config file (/etc/storyteller.conf): what loads must keep every
 * setting inside the range config.c promises (D2: `temperature = nan` passed). */
#define _GNU_SOURCE /* memfd_create */
#include <math.h>
#include <string.h>

#include "fuzz_io.h"
#include "../storyteller/config.h"

static int terminated(const char *s, size_t cap) { return memchr(s, '\0', cap) != NULL; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzFile f;
    fuzz_file_open(&f, data, size);
    Config c;
    config_defaults(&c);
    Error err = {{0}};
    if (config_load(&c, f.path, 1, &err) == 0) {
        FUZZ_ASSERT(isfinite(c.temperature) && c.temperature >= 0 && c.temperature <= 10);
        FUZZ_ASSERT(isfinite(c.topp) && c.topp >= 0 && c.topp <= 1);
        FUZZ_ASSERT(c.seed >= 0 && c.seed <= 4294967295LL);
        FUZZ_ASSERT(c.steps >= 1 && c.steps <= (1 << 20));
        FUZZ_ASSERT(c.speed >= 80 && c.speed <= 450);
        FUZZ_ASSERT(c.pitch >= 0 && c.pitch <= 99);
        FUZZ_ASSERT(c.button_gpio >= -1 && c.button_gpio <= 4095);
        FUZZ_ASSERT(!strcmp(c.path, "auto") || !strcmp(c.path, "ref") || !strcmp(c.path, "fast"));
        FUZZ_ASSERT(terminated(c.model, sizeof c.model) && terminated(c.voice, sizeof c.voice));
        FUZZ_ASSERT(terminated(c.device, sizeof c.device) &&
                    terminated(c.espeak_data, sizeof c.espeak_data));
    } else {
        FUZZ_ASSERT(err.msg[0] != '\0' && strstr(err.msg, f.path) == err.msg);
    }
    fuzz_file_close(&f);
    return 0;
}
