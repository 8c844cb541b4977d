/* What a recognised request means: a story opening the TinyStories models continue well,
 * or a command. */
#ifndef STORYTELLER_PROMPTS_H
#define STORYTELLER_PROMPTS_H

#include <stddef.h>

typedef enum {
    REQUEST_NONE,  /* not understood: say "Sorry, say it again" */
    REQUEST_STORY, /* opening holds the story's first words */
    REQUEST_AGAIN, /* tell the last story again (a new seed) */
    REQUEST_STOP,  /* stop talking / quit listening */
} RequestKind;

typedef struct {
    RequestKind kind;
    char opening[256];
} Request;

/* Words of the grammar's garbage loop start with this: each stands for one phone, and a
 * hypothesis holding one was not a request (the recogniser then returns ""). */
#define PROMPTS_GARBAGE_PREFIX "ph_"

/* The JSGF grammar the recogniser listens for (a static string). */
const char *prompts_grammar(void);
/* Maps recognised words (lower case, as PocketSphinx returns them) to a request. */
Request prompts_interpret(const char *words);

#endif
