/* The requests the robot understands: the grammar the recogniser listens for, and what a
 * recognised word string means. Interpretation looks for the subject words, not for the
 * whole sentence, so a dropped "tell me" or an extra "please" changes nothing. */
#include <stdio.h>
#include <string.h>

#include "prompts.h"

/* make_dict.py reads this literal (one quoted piece per line) to build story.dict: every
 * word here needs a pronunciation there. Keep the words lower case, letters only, but for
 * the ph_ words (make_dict.py spells each as its phone).
 *
 * <other> is the garbage loop that refuses what is not a request: any run of phones, each
 * weighed 1e-8, so a request's own words win when they fit the sound and the loop wins
 * when they do not (`invoke bench --asr`: 1e-4 let through too few requests, 1e-10 let
 * through more other speech). `<phone> <phone>*`, not `<phone>+` or right recursion:
 * sphinxbase 0.8 builds those into a grammar where garbage can lead into a request. A
 * weight on the public rule's alternatives, on a sequence or on a lone word changed
 * nothing (it lands on a null transition), hence one weight per phone.
 *
 * The stop words are weighed too, against decoys ("halt", "be silent") that
 * prompts_interpret does not know: a "stop" must fit the sound well, since a false one
 * silences the robot ("read me a book" was heard as "please be quiet"; false stops in the
 * bench went from 4 to 1; no "please" before "be quiet", the last one: 1 to 0, nothing
 * else changed). A weight needs a second alternative to take effect. "moon" is
 * weighed down likewise: a final "Tim", "Ben" or "bird" followed by a noisy tail was heard
 * as "the moon" (requests understood 92.1 -> 94.5 %; "the moon" itself is still heard). */
static const char GRAMMAR[] =
    "#JSGF V1.0;\n"
    "grammar story;\n"
    "public <request> = <understood> | <other>;\n"
    "<understood> = [please] (<story> | <again>) [please] | <stop>;\n"
    "<story> = [tell me] a story [about <subject>];\n"
    "<again> = [tell (it | me) | [tell me] the same story] again;\n"
    "<stop> = [please] (/1e-3/ stop | /1e-3/ halt) [it] [please]\n"
    "       | be (/1e-3/ quiet | /1e-3/ silent);\n"
    "<subject> = <thing> | <name> [and (<thing> | <name>)];\n"
    "<thing> = a (dragon | cat | dog | bird | fish | bear | bunny | frog | monkey\n"
    "           | princess | robot | tree | flower | little (girl | boy))\n"
    "        | an elephant | the (/1e-5/ moon | /1/ sea);\n"
    "<name> = lily | ben | tim | sam;\n"
    "<other> = <phone> <phone>*;\n"
    "<phone> = /1e-8/ ph_aa | /1e-8/ ph_ae | /1e-8/ ph_ah | /1e-8/ ph_ao | /1e-8/ ph_aw\n"
    "        | /1e-8/ ph_ay | /1e-8/ ph_b | /1e-8/ ph_ch | /1e-8/ ph_d | /1e-8/ ph_dh\n"
    "        | /1e-8/ ph_eh | /1e-8/ ph_er | /1e-8/ ph_ey | /1e-8/ ph_f | /1e-8/ ph_g\n"
    "        | /1e-8/ ph_hh | /1e-8/ ph_ih | /1e-8/ ph_iy | /1e-8/ ph_jh | /1e-8/ ph_k\n"
    "        | /1e-8/ ph_l | /1e-8/ ph_m | /1e-8/ ph_n | /1e-8/ ph_ng | /1e-8/ ph_ow\n"
    "        | /1e-8/ ph_oy | /1e-8/ ph_p | /1e-8/ ph_r | /1e-8/ ph_s | /1e-8/ ph_sh\n"
    "        | /1e-8/ ph_t | /1e-8/ ph_th | /1e-8/ ph_uh | /1e-8/ ph_uw | /1e-8/ ph_v\n"
    "        | /1e-8/ ph_w | /1e-8/ ph_y | /1e-8/ ph_z | /1e-8/ ph_zh;\n";

#define ONCE "Once upon a time, "

/* A thing the story can be about: the word that identifies it, the opening when it is
 * alone, and what a named child does with it ("Lily had a cat"). */
typedef struct {
    const char *word, *alone, *with_name;
} Thing;

static const Thing THINGS[] = {
    {"dragon", ONCE "there was a little dragon", "met a dragon"},
    {"cat", ONCE "there was a little cat", "had a cat"},
    {"dog", ONCE "there was a little dog", "had a dog"},
    {"bird", ONCE "there was a little bird", "found a little bird"},
    {"fish", ONCE "there was a little fish", "had a fish"},
    {"bear", ONCE "there was a big bear", "met a big bear"},
    {"bunny", ONCE "there was a little bunny", "had a bunny"},
    {"frog", ONCE "there was a little frog", "found a frog"},
    {"monkey", ONCE "there was a little monkey", "met a monkey"},
    {"elephant", ONCE "there was a big elephant", "met an elephant"},
    {"princess", ONCE "there was a kind princess", "met a princess"},
    {"robot", ONCE "there was a little robot", "had a toy robot"},
    {"tree", ONCE "there was a big tree", "found a big tree"},
    {"flower", ONCE "there was a pretty flower", "found a pretty flower"},
    {"girl", ONCE "there was a little girl", "met a little girl"},
    {"boy", ONCE "there was a little boy", "met a little boy"},
    {"moon", ONCE "there was a little boy who wanted to go to the moon",
     "looked up at the moon"},
    {"sea", ONCE "a little girl went to the sea", "went to the sea"},
};

typedef struct {
    const char *word, *display, *alone;
} Name;

static const Name NAMES[] = {
    {"lily", "Lily", ONCE "there was a little girl named Lily"},
    {"ben", "Ben", ONCE "there was a little boy named Ben"},
    {"tim", "Tim", ONCE "there was a little boy named Tim"},
    {"sam", "Sam", ONCE "there was a little boy named Sam"},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_WORDS 32
#define WORD_LEN 24

/* The recognised text split into lower-case words; anything but letters separates words,
 * so an alternate pronunciation marker such as "a(2)" still reads as "a". */
typedef struct {
    char w[MAX_WORDS][WORD_LEN];
    size_t n;
} Words;

static Words split_words(const char *text) {
    Words ws = {.n = 0};
    size_t len = 0;
    for (const char *p = text ? text : "";; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c >= 'a' && c <= 'z') {
            if (ws.n < MAX_WORDS && len < WORD_LEN - 1) ws.w[ws.n][len] = c;
            len++;
            continue;
        }
        if (len > 0 && ws.n < MAX_WORDS) {
            /* an over-long word is no word of ours: keep it, but never matching */
            ws.w[ws.n][len < WORD_LEN ? len : WORD_LEN - 1] = '\0';
            if (len >= WORD_LEN) ws.w[ws.n][0] = '#';
            ws.n++;
        }
        len = 0;
        if (c == '\0') break;
    }
    return ws;
}

static int has_word(const Words *ws, const char *word) {
    for (size_t i = 0; i < ws->n; i++)
        if (strcmp(ws->w[i], word) == 0) return 1;
    return 0;
}

static const Thing *find_thing(const char *word) {
    for (size_t i = 0; i < COUNT(THINGS); i++)
        if (strcmp(THINGS[i].word, word) == 0) return &THINGS[i];
    return NULL;
}

static const Name *find_name(const char *word) {
    for (size_t i = 0; i < COUNT(NAMES); i++)
        if (strcmp(NAMES[i].word, word) == 0) return &NAMES[i];
    return NULL;
}

/* The opening for the first thing and the first two distinct names mentioned. */
static int story_opening(const Words *ws, char *out, size_t cap) {
    const Thing *thing = NULL;
    const Name *names[2] = {NULL, NULL};
    for (size_t i = 0; i < ws->n; i++) {
        const Thing *t = find_thing(ws->w[i]);
        const Name *nm = find_name(ws->w[i]);
        if (t && !thing) thing = t;
        if (nm && !names[0]) names[0] = nm;
        else if (nm && !names[1] && nm != names[0]) names[1] = nm;
    }
    if (names[0] && thing)
        snprintf(out, cap, ONCE "%s %s", names[0]->display, thing->with_name);
    else if (names[1])
        snprintf(out, cap, ONCE "%s and %s", names[0]->display, names[1]->display);
    else if (names[0]) snprintf(out, cap, "%s", names[0]->alone);
    else if (thing) snprintf(out, cap, "%s", thing->alone);
    else if (has_word(ws, "story")) snprintf(out, cap, "Once upon a time");
    else return 0;
    return 1;
}

const char *prompts_grammar(void) { return GRAMMAR; }

Request prompts_interpret(const char *words) {
    Request r = {.kind = REQUEST_NONE, .opening = ""};
    Words ws = split_words(words);
    /* a command wins over a subject: "stop" must always stop the robot */
    if (has_word(&ws, "stop") || has_word(&ws, "quiet")) r.kind = REQUEST_STOP;
    else if (has_word(&ws, "again") || has_word(&ws, "same")) r.kind = REQUEST_AGAIN;
    else if (story_opening(&ws, r.opening, sizeof r.opening)) r.kind = REQUEST_STORY;
    return r;
}
