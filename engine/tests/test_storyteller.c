/* C-level tests of the storyteller's text and settings handling. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../storyteller/config.h"
#include "../storyteller/feedback.h"
#include "../storyteller/sentences.h"

#include "check.h"

typedef struct {
    char got[8][SENTENCE_MAX + 1];
    int n;
} Collected;

static int collect(void *user, const char *sentence) {
    Collected *c = user;
    if (c->n < 8) snprintf(c->got[c->n], sizeof c->got[0], "%s", sentence);
    c->n++;
    return 0;
}

static void test_splitter(void) {
    SentenceSplitter s = {0};
    Collected c = {0};
    /* pieces arrive as tokens do: sentence ends split across pieces */
    const char *pieces[] = {"Once", " upon a time", ", Lily", " saw a cat.", " \"Hi!\"", " she",
                            " said.\nThe", " end", "?", " Yes"};
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++)
        splitter_feed(&s, pieces[i], collect, &c);
    CHECK(c.n == 4, "four complete sentences, got %d", c.n);
    CHECK(!strcmp(c.got[0], "Once upon a time, Lily saw a cat."), "got '%s'", c.got[0]);
    CHECK(!strcmp(c.got[1], "\"Hi!\""), "quote closes the sentence: '%s'", c.got[1]);
    CHECK(!strcmp(c.got[2], "she said."), "line break ends: '%s'", c.got[2]);
    CHECK(!strcmp(c.got[3], "The end?"), "got '%s'", c.got[3]);
    splitter_flush(&s, collect, &c);
    CHECK(c.n == 5 && !strcmp(c.got[4], "Yes"), "flush emits the rest");
    splitter_flush(&s, collect, &c);
    CHECK(c.n == 5, "nothing left to flush");

    SentenceSplitter long_one = {0};
    Collected d = {0};
    for (int i = 0; i < 400; i++) splitter_feed(&long_one, "and on ", collect, &d);
    CHECK(d.n >= 2, "a run-on sentence is cut, not overflowed (%d)", d.n);
    for (int i = 0; i < d.n && i < 8; i++)
        CHECK(strlen(d.got[i]) <= SENTENCE_MAX, "cut pieces fit");
}

static void test_config(void) {
    Config c;
    Error err;
    config_defaults(&c);
    CHECK(config_set(&c, "voice", "en-us", "t", &err) == 0 && !strcmp(c.voice, "en-us"), "voice");
    CHECK(config_set(&c, "steps", "128", "t", &err) == 0 && c.steps == 128, "steps");
    CHECK(config_set(&c, "steps", "0", "x.conf:3", &err) == -1 && strstr(err.msg, "x.conf:3"),
          "steps 0 rejected with its origin");
    CHECK(config_set(&c, "topp", "1.5", "t", &err) == -1, "topp out of range");
    CHECK(config_set(&c, "speed", "fast", "t", &err) == -1, "speed must be a number");
    CHECK(config_set(&c, "colour", "red", "t", &err) == -1 && strstr(err.msg, "unknown setting"),
          "unknown key");
    CHECK(config_set(&c, "path", "ref", "t", &err) == 0 && !strcmp(c.path, "ref"), "path");
    CHECK(config_set(&c, "path", "turbo", "t", &err) == -1, "bad path");
    /* D2 (issue 14): NaN, infinities and non-integers never pass a range check */
    static const char *const keys[] = {"temperature", "topp", "seed", "steps", "speed", "pitch",
                                       "button_gpio"};
    static const char *const bad[] = {"nan", "NaN", "-nan", "inf", "-inf", "infinity", "1e999",
                                      "", " ", "0x", "12abc", "99999999999999999999"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++)
            CHECK(config_set(&c, keys[k], bad[b], "bad.conf:7", &err) == -1 &&
                      strstr(err.msg, "bad.conf:7") && strstr(err.msg, keys[k]),
                  "%s = '%s' is rejected naming the key and the file", keys[k], bad[b]);
    static const char *const not_whole[] = {"seed", "steps", "speed", "pitch", "button_gpio"};
    for (size_t k = 0; k < sizeof not_whole / sizeof not_whole[0]; k++)
        CHECK(config_set(&c, not_whole[k], "100.5", "t", &err) == -1, "%s takes whole numbers",
              not_whole[k]);
    CHECK(config_set(&c, "seed", "4294967295", "t", &err) == 0 && c.seed == 4294967295LL,
          "the largest seed");
    CHECK(config_set(&c, "seed", "4294967296", "t", &err) == -1, "seed above 32 bits");
    CHECK(config_set(&c, "button_gpio", "-1", "t", &err) == 0 && c.button_gpio == -1, "gpio -1");
    CHECK(config_set(&c, "button_gpio", "-2", "t", &err) == -1, "gpio -2");
    CHECK(config_set(&c, "temperature", "0.5", "t", &err) == 0 && c.temperature == 0.5f, "0.5");
    CHECK(config_load(&c, "/nonexistent/storyteller.conf", 0, &err) == 0, "optional file");
    CHECK(config_load(&c, "/nonexistent/storyteller.conf", 1, &err) == -1, "required file");
}

/* Whole sentences at the step budget (issue 13): where the storyteller may stop. */
static void test_sentence_end(void) {
    static const struct {
        const char *text;
        int at_end;
    } cases[] = {
        {"", 1},           {"   ", 1},         {"It was s", 0},  {"It was sunny.", 1},
        {"It was sunny", 0}, {"\"Hi!\"", 1},   {"\"Hi!\"  ", 1}, {"Why?", 1},
        {"Mom said, \"", 0}, {"\"", 0},        {"Wow! Then", 0}, {"Wow! Then it rained.\n", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        SentenceSplitter s = {0};
        Collected c = {0};
        splitter_feed(&s, cases[i].text, collect, &c);
        CHECK(splitter_at_sentence_end(&s) == cases[i].at_end, "'%s': at end %d", cases[i].text,
              cases[i].at_end);
    }
    SentenceSplitter s = {0};
    Collected c = {0};
    splitter_feed(&s, "One day. It was s", collect, &c);
    splitter_drop(&s);
    splitter_flush(&s, collect, &c);
    CHECK(c.n == 1 && !strcmp(c.got[0], "One day."), "the dropped fragment is never emitted");
}

/* The LED against a fake sysfs tree (issue 13): what each state writes. */
static void put_file(const char *dir, const char *name, const char *text) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int file_is(const char *dir, const char *name, const char *want) {
    char path[700], got[64] = "";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    if (!fgets(got, sizeof got, f)) got[0] = '\0';
    fclose(f);
    return !strcmp(got, want);
}

static void test_feedback(void) {
    char root[] = "/tmp/fake-sysfs-XXXXXX", led[200], gpio[200], cmd[600];
    CHECK(mkdtemp(root) != NULL, "fake sysfs");
    snprintf(led, sizeof led, "%s/class/leds/led-user", root);
    snprintf(gpio, sizeof gpio, "%s/class/gpio/gpio440", root);
    snprintf(cmd, sizeof cmd, "mkdir -p %s %s", led, gpio);
    CHECK(system(cmd) == 0, "%s", cmd);
    put_file(led, "brightness", "0");
    put_file(led, "trigger", "[none] timer heartbeat");
    put_file(led, "max_brightness", "255\n");
    put_file(gpio, "value", "0");
    put_file(gpio, "direction", "in");

    Feedback f;
    Error err;
    CHECK(feedback_open(&f, root, "led-user", &err) == 0, "LED class device: %s", err.msg);
    CHECK(feedback_set(&f, FEEDBACK_LISTENING, &err) == 0 && file_is(led, "trigger", "none") &&
              file_is(led, "brightness", "255"), "listening: steady at max_brightness");
    CHECK(feedback_set(&f, FEEDBACK_THINKING, &err) == 0 && file_is(led, "trigger", "timer"),
          "thinking: blinks (timer trigger)");
    CHECK(feedback_set(&f, FEEDBACK_SPEAKING, &err) == 0 && file_is(led, "trigger", "heartbeat"),
          "speaking: heartbeat");
    CHECK(feedback_set(&f, FEEDBACK_IDLE, &err) == 0 && file_is(led, "trigger", "none") &&
              file_is(led, "brightness", "0"), "idle: off");

    CHECK(feedback_open(&f, root, "gpio440", &err) == 0 && file_is(gpio, "direction", "out"),
          "GPIO: made an output: %s", err.msg);
    feedback_set(&f, FEEDBACK_LISTENING, &err);
    CHECK(file_is(gpio, "value", "1"), "GPIO listening: on");
    feedback_set(&f, FEEDBACK_THINKING, &err);
    feedback_tick(&f);
    CHECK(file_is(gpio, "value", "0"), "GPIO thinking: a token toggles it");
    feedback_tick(&f);
    CHECK(file_is(gpio, "value", "1"), "GPIO thinking: and back");
    feedback_set(&f, FEEDBACK_SPEAKING, &err);
    feedback_tick(&f);
    CHECK(file_is(gpio, "value", "1"), "GPIO speaking: steady on");
    feedback_set(&f, FEEDBACK_IDLE, &err);
    CHECK(file_is(gpio, "value", "0"), "GPIO idle: off");

    CHECK(feedback_open(&f, root, "none", &err) == 0 &&
              feedback_set(&f, FEEDBACK_SPEAKING, &err) == 0, "led = none: nothing to do");
    CHECK(feedback_open(&f, root, "led-missing", &err) == -1 && strstr(err.msg, "led-missing") &&
              strstr(err.msg, "led = none"), "a missing LED names itself and the way out");
    CHECK(feedback_open(&f, root, "gpio441", &err) == -1 && strstr(err.msg, "gpio441"),
          "an unexported, unexportable GPIO: %s", err.msg);
    CHECK(feedback_open(&f, root, "../../etc", &err) == -1, "no paths as LED names");
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    CHECK(system(cmd) == 0, "cleanup");

    size_t n = 0;
    int16_t *pcm = feedback_chime(22050, &n);
    int peak = 0;
    for (size_t i = 0; pcm && i < n; i++) peak = abs(pcm[i]) > peak ? abs(pcm[i]) : peak;
    CHECK(pcm && n > 22050 / 10 && n < 22050 / 2, "a short chime: %zu samples", n);
    CHECK(peak > 5000 && peak < 16000, "audible, not clipped: peak %d", peak);
    CHECK(pcm && abs(pcm[0]) < 100 && abs(pcm[n - 1]) < 300, "faded in and out (no click)");
    free(pcm);
}

int main(void) {
    test_splitter();
    test_feedback();
    test_sentence_end();
    test_config();
    return report();
}
