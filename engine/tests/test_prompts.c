/* C-level tests of what a recognised request means (prompts_interpret) and of the grammar
 * text the recogniser gets. Prints "N passed, N failed". */
#include <stdio.h>
#include <string.h>

#include "../storyteller/prompts.h"

#include "check.h"

static void expect_story(const char *words, const char *opening) {
    Request r = prompts_interpret(words);
    CHECK(r.kind == REQUEST_STORY && strcmp(r.opening, opening) == 0,
          "'%s': kind %d, opening '%s', want '%s'", words, r.kind, r.opening, opening);
}

static void expect_kind(const char *words, RequestKind kind) {
    Request r = prompts_interpret(words);
    CHECK(r.kind == kind, "'%s': kind %d, want %d", words, r.kind, kind);
    if (kind != REQUEST_STORY) CHECK(r.opening[0] == '\0', "'%s': opening '%s'", words, r.opening);
}

static void test_stories(void) {
    const char *dragon = "Once upon a time, there was a little dragon";
    expect_story("tell me a story about a dragon", dragon);
    expect_story("a story about a dragon", dragon);
    expect_story("please tell me a story about a dragon please", dragon);
    expect_story("story dragon", dragon);  /* fillers dropped by the recogniser */
    expect_story("dragon", dragon);
    expect_story("TELL ME A STORY ABOUT A DRAGON", dragon);
    expect_story("  tell me\ta story about a(2) dragon\n", dragon);
    expect_story("a story about a cat", "Once upon a time, there was a little cat");
    expect_story("a story about a princess", "Once upon a time, there was a kind princess");
    expect_story("a story about a little girl", "Once upon a time, there was a little girl");
    expect_story("a story about a little boy", "Once upon a time, there was a little boy");
    expect_story("a story about an elephant", "Once upon a time, there was a big elephant");
    expect_story("tell me a story about the sea",
                 "Once upon a time, a little girl went to the sea");
    expect_story("tell me a story", "Once upon a time");
    expect_story("a story", "Once upon a time");
    expect_story("story please", "Once upon a time");
}

static void test_names(void) {
    expect_story("a story about lily", "Once upon a time, there was a little girl named Lily");
    expect_story("tell me a story about ben", "Once upon a time, there was a little boy named Ben");
    expect_story("a story about lily and a cat", "Once upon a time, Lily had a cat");
    expect_story("lily cat", "Once upon a time, Lily had a cat");
    expect_story("tell me a story about tim and a dragon", "Once upon a time, Tim met a dragon");
    expect_story("a story about sam and the moon", "Once upon a time, Sam looked up at the moon");
    expect_story("a story about lily and ben", "Once upon a time, Lily and Ben");
    expect_story("a story about lily and lily",
                 "Once upon a time, there was a little girl named Lily");
    /* a thing named first still gets the child's name first */
    expect_story("a dog and ben", "Once upon a time, Ben had a dog");
}

static void test_commands(void) {
    expect_kind("stop", REQUEST_STOP);
    expect_kind("stop it", REQUEST_STOP);
    expect_kind("please stop", REQUEST_STOP);
    expect_kind("be quiet", REQUEST_STOP);
    expect_kind("stop the story about a dragon", REQUEST_STOP); /* stop always wins */
    expect_kind("again", REQUEST_AGAIN);
    expect_kind("tell it again", REQUEST_AGAIN);
    expect_kind("tell me again", REQUEST_AGAIN);
    expect_kind("tell me the same story again", REQUEST_AGAIN);
    expect_kind("the same story", REQUEST_AGAIN);
}

static void test_nonsense(void) {
    expect_kind("", REQUEST_NONE);
    expect_kind(NULL, REQUEST_NONE);
    expect_kind("tell me", REQUEST_NONE);
    expect_kind("a the about and", REQUEST_NONE);
    expect_kind("please", REQUEST_NONE);
    expect_kind("hello robot friend", REQUEST_STORY); /* "robot" is a subject */
    expect_kind("what is the weather", REQUEST_NONE);
    expect_kind("stories dragons cats", REQUEST_NONE);   /* whole words only */
    expect_kind("dragonfly catalogue", REQUEST_NONE);
    expect_kind("123 !!! ???", REQUEST_NONE);
    char longest[600];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    expect_kind(longest, REQUEST_NONE);
    /* a subject past the 32 words we look at is not seen, but nothing breaks */
    char many[400] = "";
    for (int i = 0; i < 40; i++) strcat(many, "la ");
    strcat(many, "dragon");
    expect_kind(many, REQUEST_NONE);
    /* an over-long word is no word, not its first letters */
    expect_kind("dragonxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", REQUEST_NONE);
}

/* Every opening is a sentence start the model continues: no trailing space or period. */
static void test_openings_shape(void) {
    const char *subjects[] = {"dragon", "cat", "dog", "bird", "fish", "bear", "bunny", "frog",
                              "monkey", "elephant", "princess", "robot", "tree", "flower",
                              "little girl", "little boy", "the moon", "the sea", "lily",
                              "ben", "tim", "sam"};
    for (size_t i = 0; i < sizeof subjects / sizeof subjects[0]; i++) {
        char words[64];
        snprintf(words, sizeof words, "a story about %s", subjects[i]);
        Request r = prompts_interpret(words);
        size_t len = strlen(r.opening);
        CHECK(r.kind == REQUEST_STORY, "'%s' is a story", words);
        CHECK(strncmp(r.opening, "Once upon a time", 16) == 0, "'%s': '%s'", words, r.opening);
        CHECK(len > 0 && r.opening[len - 1] != ' ' && r.opening[len - 1] != '.',
              "'%s': opening ends cleanly: '%s'", words, r.opening);
    }
}

static void test_grammar(void) {
    const char *g = prompts_grammar();
    CHECK(g && strncmp(g, "#JSGF V1.0;", 11) == 0, "grammar has the JSGF header");
    CHECK(g && strstr(g, "public <request>") != NULL, "one public rule");
    CHECK(g && strstr(g, "dragon") && strstr(g, "lily") && strstr(g, "again"),
          "grammar holds the subjects and commands");
    CHECK(prompts_grammar() == g, "a static string");
}

int main(void) {
    test_stories();
    test_names();
    test_commands();
    test_nonsense();
    test_openings_shape();
    test_grammar();
    return report();
}
