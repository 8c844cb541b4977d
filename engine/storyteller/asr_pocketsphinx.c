/* The request recogniser: PocketSphinx with the JSGF grammar from prompts.c and a small
 * dictionary (story.dict), never a language model. Beside the requests the grammar holds a
 * garbage loop of single phones (<other>): speech that is no request is heard as phones,
 * and asr_decode returns "" for it, so the robot says sorry instead of acting on the
 * nearest request. (A phone-loop search scored against the grammar's, tried first, took
 * 220 MB and 11 s per utterance: not for a 64 MB board.)
 *
 * Two PocketSphinx APIs exist and both must build: 0.8/5prealpha (Debian bookworm, with
 * sphinxbase: cmd_ln_init, ps_set_jsgf_string, ps_set_search) and 5.x (Debian sid:
 * ps_config_*, ps_add_jsgf_string, ps_activate_search). 5.x's <pocketsphinx.h>
 * always includes <pocketsphinx/vad.h>, whose PS_VAD_DEFAULT_SAMPLE_RATE no earlier release
 * defines, so that macro picks the API without a configure step. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pocketsphinx.h>

#if defined(PS_VAD_DEFAULT_SAMPLE_RATE)
#define ASR_PS5 1
#else
#define ASR_PS5 0
#include <sphinxbase/jsgf.h> /* 0.8 only; 5.x keeps its JSGF parser private */
#endif

#include "asr.h"
#include "prompts.h"

#define SEARCH_NAME "story"
#define TRIM_FRAME (ASR_RATE / 100) /* 10 ms */
#define TRIM_PAD (ASR_RATE / 4)     /* 250 ms of quiet kept around the speech */

struct Recognizer {
    ps_decoder_t *ps;
    int trace; /* STORYTELLER_ASR_TRACE set: the decoder's raw hypothesis on stderr */
};

/* ---- the two configuration APIs ---------------------------------------------------- */

/* Both turn bestpath off: its lattice rescoring can leave the grammar (5.x answered "a"
 * for "again"), while the grammar search's own result is always a whole request or "".
 * Both dither (half a bit of noise, fixed seed so results repeat): perfectly silent input,
 * as synthetic or heavily gated audio has, upsets the feature normalisation ("a cat" was
 * heard as "tim" without it). */

#if ASR_PS5
static ps_decoder_t *decoder_init(const char *model_dir, const char *dict) {
    ps_config_t *config = ps_config_init(NULL);
    if (!config) return NULL;
    ps_decoder_t *ps = NULL;
    /* logfn first: everything the decoder says while loading goes to /dev/null */
    if (ps_config_set_str(config, "logfn", "/dev/null") &&
        ps_config_set_str(config, "hmm", model_dir) && ps_config_set_str(config, "dict", dict) &&
        ps_config_set_float(config, "samprate", ASR_RATE) &&
        ps_config_set_bool(config, "bestpath", FALSE) &&
        ps_config_set_bool(config, "dither", TRUE) && ps_config_set_int(config, "seed", 1))
        ps = ps_init(config);
    ps_config_free(config); /* the decoder keeps its own reference */
    return ps;
}

static int grammar_activate(ps_decoder_t *ps, const char *jsgf) {
    if (ps_add_jsgf_string(ps, SEARCH_NAME, jsgf) < 0) return -1;
    return ps_activate_search(ps, SEARCH_NAME);
}

#else
static ps_decoder_t *decoder_init(const char *model_dir, const char *dict) {
    char rate[16];
    snprintf(rate, sizeof rate, "%d", ASR_RATE);
    cmd_ln_t *config = cmd_ln_init(NULL, ps_args(), TRUE, "-logfn", "/dev/null", "-hmm",
                                   model_dir, "-dict", dict, "-samprate", rate, "-bestpath",
                                   "no", "-dither", "yes", "-seed", "1", NULL);
    if (!config) return NULL;
    ps_decoder_t *ps = ps_init(config);
    cmd_ln_free_r(config); /* the decoder keeps its own reference */
    return ps;
}

/* What ps_set_jsgf_string does, but freeing the parsed grammar: 0.8+5prealpha's version
 * leaks it (fixed in 5.x), which LeakSanitizer reports on every run. */
static int grammar_activate(ps_decoder_t *ps, const char *jsgf_text) {
    jsgf_t *jsgf = jsgf_parse_string(jsgf_text, NULL);
    if (!jsgf) return -1;
    int rc = -1;
    jsgf_rule_t *rule = jsgf_get_public_rule(jsgf);
    if (rule) {
        float32 lw = cmd_ln_float32_r(ps_get_config(ps), "-lw");
        fsg_model_t *fsg = jsgf_build_fsg(jsgf, rule, ps_get_logmath(ps), lw);
        if (fsg) {
            rc = ps_set_fsg(ps, SEARCH_NAME, fsg); /* the search keeps its own reference */
            fsg_model_free(fsg);
        }
    }
    jsgf_grammar_free(jsgf);
    return rc < 0 ? -1 : ps_set_search(ps, SEARCH_NAME);
}

#endif

/* ---- checks that turn the decoder's silent failures into clear sentences ------------ */

static int check_paths(const char *model_dir, const char *dict, Error *err) {
    struct stat st;
    char file[4096];
    const char *why = stat(model_dir, &st) != 0 ? strerror(errno)
                      : !S_ISDIR(st.st_mode)     ? "not a directory"
                                                 : NULL;
    if (why)
        return fail(err, "speech model directory %s: %s (set asr_model to the acoustic model, "
                    "e.g. /usr/share/pocketsphinx/model/en-us/en-us)", model_dir, why);
    /* PocketSphinx exits the process (silently, its log being /dev/null) when a model file
     * is missing, so look for the ones every acoustic model has before it does */
    static const char *const needed[] = {"mdef", "means", "variances", "transition_matrices"};
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++) {
        snprintf(file, sizeof file, "%s/%s", model_dir, needed[i]);
        if (access(file, R_OK) != 0)
            return fail(err, "speech model directory %s has no readable %s: is it a "
                        "PocketSphinx acoustic model?", model_dir, needed[i]);
    }
    if (access(dict, R_OK) != 0)
        return fail(err, "speech dictionary %s: %s (set asr_dict to story.dict)", dict,
                    strerror(errno));
    return 0;
}

/* Calls fn on each word of the JSGF text: what remains after the header lines, rule names,
 * weights and `public`. The grammar is ours (prompts.c), so this need not parse all of JSGF. */
static int each_grammar_word(const char *g, int (*fn)(void *, const char *), void *user) {
    while (*g) {
        const char *eol = strchr(g, '\n');
        size_t line_len = eol ? (size_t)(eol - g) : strlen(g);
        if (strncmp(g, "#JSGF", 5) == 0 || strncmp(g, "grammar ", 8) == 0) {
            g += line_len + (eol ? 1 : 0);
            continue;
        }
        if (*g == '<' || *g == '/') { /* a rule name, or a weight such as /1e-3/ */
            const char *end = strchr(g + 1, *g == '<' ? '>' : '/');
            g = end ? end + 1 : g + strlen(g);
            continue;
        }
        size_t n = strspn(g, "abcdefghijklmnopqrstuvwxyz_'");
        if (n == 0) {
            g++;
            continue;
        }
        char word[64];
        snprintf(word, sizeof word, "%.*s", (int)n, g);
        g += n;
        if (strcmp(word, "public") != 0 && fn(user, word) != 0) return -1;
    }
    return 0;
}

typedef struct {
    ps_decoder_t *ps;
    char missing[64];
} WordCheck;

static int word_known(void *user, const char *word) {
    WordCheck *c = user;
    char *phones = ps_lookup_word(c->ps, word);
    if (phones) {
        free(phones); /* allocated for the caller, as both APIs document */
        return 0;
    }
    snprintf(c->missing, sizeof c->missing, "%s", word);
    return -1;
}

/* ---- the interface ------------------------------------------------------------------ */

Recognizer *asr_open(const char *model_dir, const char *dict, Error *err) {
    if (check_paths(model_dir, dict, err) != 0) return NULL;
    Recognizer *r = calloc(1, sizeof *r);
    if (!r) {
        fail(err, "out of memory");
        return NULL;
    }
    r->ps = decoder_init(model_dir, dict);
    if (!r->ps) {
        fail(err, "PocketSphinx could not load the speech model %s with the dictionary %s "
             "(a damaged model, or a malformed dictionary line)", model_dir, dict);
        free(r);
        return NULL;
    }
    WordCheck check = {.ps = r->ps};
    if (each_grammar_word(prompts_grammar(), word_known, &check) != 0) {
        fail(err, "speech dictionary %s has no pronunciation for the grammar word '%s' "
             "(regenerate it with make_dict.py)", dict, check.missing);
        asr_close(r);
        return NULL;
    }
    if (grammar_activate(r->ps, prompts_grammar()) < 0) {
        fail(err, "PocketSphinx rejected the request grammar (model %s, dictionary %s)",
             model_dir, dict);
        asr_close(r);
        return NULL;
    }
    r->trace = getenv("STORYTELLER_ASR_TRACE") != NULL;
    return r;
}

static double rms(const int16_t *x, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return n ? sqrt(sum / (double)n) : 0;
}

/* The part worth decoding: 250 ms either side of the frames whose energy is more than
 * three times the quietest frame's and within 26 dB of the loudest (relative, as files
 * come at any level). 0.8 drops quiet frames itself (remove_silence); 5.x has no such
 * option, and a second of quiet around the words cost it words in our tests. Trimmed,
 * both versions heard the same test phrases alike. */
static void speech_span(const int16_t *pcm, size_t n, size_t *from, size_t *to) {
    size_t frames = n / TRIM_FRAME, first = SIZE_MAX, last = 0;
    double lo = INFINITY, hi = 0;
    for (size_t f = 0; f < frames; f++) {
        double e = rms(pcm + f * TRIM_FRAME, TRIM_FRAME);
        lo = fmin(lo, e);
        hi = fmax(hi, e);
    }
    double threshold = fmax(3 * lo, hi / 20);
    for (size_t f = 0; f < frames; f++) {
        if (rms(pcm + f * TRIM_FRAME, TRIM_FRAME) <= threshold) continue;
        if (first == SIZE_MAX) first = f;
        last = f;
    }
    *from = 0;
    *to = n;
    if (first == SIZE_MAX) return; /* level throughout: nothing to tell apart */
    size_t a = first * TRIM_FRAME, b = (last + 1) * TRIM_FRAME;
    *from = a > TRIM_PAD ? a - TRIM_PAD : 0;
    *to = n - b > TRIM_PAD ? b + TRIM_PAD : n;
}

int asr_decode(Recognizer *r, const int16_t *pcm, size_t n, char *text, size_t cap,
               Error *err) {
    if (cap > 0) text[0] = '\0';
    if (n > 0) {
        size_t from, to;
        speech_span(pcm, n, &from, &to);
        pcm += from;
        n = to - from;
    }
    if (ps_start_utt(r->ps) < 0) return fail(err, "speech recogniser: cannot start an utterance");
    /* the whole utterance at once: full_utt lets the decoder normalise over all of it */
    if (n > 0 && ps_process_raw(r->ps, pcm, n, FALSE, TRUE) < 0) {
        ps_end_utt(r->ps);
        return fail(err, "speech recogniser: decoding %zu samples failed", n);
    }
    if (ps_end_utt(r->ps) < 0) return fail(err, "speech recogniser: cannot end the utterance");
    int32 score = 0;
    const char *hyp = ps_get_hyp(r->ps, &score);
    if (!hyp) hyp = "";
    if (r->trace) fprintf(stderr, "asr: \"%s\"\n", hyp);
    if (strstr(hyp, PROMPTS_GARBAGE_PREFIX)) return 0; /* the garbage loop won: not a request */
    if (cap > 0) snprintf(text, cap, "%s", hyp);
    return 0;
}

void asr_close(Recognizer *r) {
    if (!r) return;
    if (r->ps) ps_free(r->ps);
    free(r);
}
