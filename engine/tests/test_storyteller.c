/* C-level tests of the storyteller's text and settings handling. */
#include <stdio.h>
#include <string.h>

#include "../storyteller/config.h"
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
    CHECK(config_load(&c, "/nonexistent/storyteller.conf", 0, &err) == 0, "optional file");
    CHECK(config_load(&c, "/nonexistent/storyteller.conf", 1, &err) == -1, "required file");
}

int main(void) {
    test_splitter();
    test_config();
    return report();
}
