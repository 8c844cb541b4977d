/* storyteller: a prompt typed, given on the command line or spoken into a microphone;
 * the story written by the llama2 engine and spoken by eSpeak while it is being written. */
#define _DEFAULT_SOURCE /* readlink, realpath */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../include/llama2.h"
#include "asr.h"
#include "config.h"
#include "feedback.h"
#include "mic.h"
#include "prompts.h"
#include "sentences.h"
#include "speech.h"
#include "wav.h"

#define DEFAULT_CONFIG "/etc/storyteller.conf"
#define SORRY "Sorry, say it again."
/* At the step budget in the middle of a sentence, at most this many more tokens finish it;
 * if they do not, the fragment is dropped (never spoken). */
#define FINISH_TOKENS 48

typedef struct {
    Config cfg;
    const char *config_path, *prompt, *mic_wav, *wav_out;
    int mic, quiet;
    Tts *tts;
    Llama2 *engine;
    int budget, engine_steps; /* the story's tokens; the engine's (budget + FINISH_TOKENS) */
    Feedback fb;              /* the LED */
} App;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: storyteller [options]\n"
            "Tells a story with the llama2 engine and speaks it with eSpeak as it is written.\n"
            "  --prompt TEXT    tell one story that starts with TEXT, then exit\n"
            "  --mic            listen for requests (push-to-talk), tell stories until 'stop'\n"
            "  --mic-wav FILE   recognise the request spoken in FILE, tell that story, exit\n"
            "  (none of these)  read prompts from stdin, one per line, until 'stop' or EOF\n"
            "  --wav FILE       write the speech to FILE instead of playing it\n"
            "  --config FILE    settings file (default %s, if it exists)\n"
            "  --quiet          do not print the story on stdout\n"
            "  --KEY VALUE      override a setting; keys: %s\n"
            "Exit status: 0 told, 1 error, 2 the request was not understood.\n",
            DEFAULT_CONFIG, config_keys());
}

static void report(const char *msg) { fprintf(stderr, "storyteller: %s\n", msg); }

/* The LED shows the state; a failing LED is reported once and then left alone. */
static void show(App *a, FeedbackState state) {
    Error err;
    if (feedback_set(&a->fb, state, &err) == 0) return;
    fprintf(stderr, "storyteller: %s; going on without the LED\n", err.msg);
    a->fb.dir[0] = '\0';
}

/* The "I am listening" chime through the sound card (listen_sound = on). */
static void chime(App *a) {
    if (!a->cfg.listen_sound || a->wav_out) return;
    size_t n;
    int16_t *pcm = feedback_chime(22050, &n);
    Error err;
    PcmOut *out = pcm ? pcm_open(a->cfg.device, 22050, &err) : NULL;
    if (out && (pcm_write(out, pcm, n, &err) || pcm_close(out, &err)))
        report(err.msg);
    else if (pcm && !out)
        report(err.msg);
    free(pcm);
}

static double peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb / 1024.0;
}

/* Speaks a short message whole (errors and apologies); printing it is the caller's job. */
static void say(App *a, const char *text) {
    if (!a->tts) return;
    Speech s;
    SpeechStats st;
    Error err;
    if (speech_start(&s, a->tts, a->wav_out, a->cfg.device, &err)) return;
    speech_say(&s, text, &err);
    speech_finish(&s, &st, &err);
}

typedef struct {
    App *app;
    Speech speech;
    SentenceSplitter splitter;
    Error err;
    int failed;
    int pieces;    /* positions so far (one piece each) */
    int finishing; /* past the budget, finishing the sentence */
    int dropped;   /* gave up on the sentence: its text is neither printed nor spoken */
    char held[SENTENCE_MAX]; /* text past the budget, printed once its sentence is whole */
    size_t n_held;
} StoryRun;

static int speak_sentence(void *user, const char *sentence) {
    StoryRun *r = user;
    if (r->app->fb.state != FEEDBACK_SPEAKING) show(r->app, FEEDBACK_SPEAKING);
    if (speech_say(&r->speech, sentence, &r->err)) r->failed = 1;
    return r->failed;
}

static void print_text(StoryRun *r, const char *text, size_t n) {
    if (r->app->quiet || n == 0) return;
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

/* Each piece is printed and fed to the splitter. At the budget the story stops at the end
 * of a sentence: a sentence under way gets up to FINISH_TOKENS more pieces (held back from
 * stdout until it is whole), else it is dropped. */
static int on_piece(void *user, const char *piece) {
    StoryRun *r = user;
    r->pieces++;
    feedback_tick(&r->app->fb);
    if (llama2_piece_is_printable(piece)) {
        size_t n = strlen(piece);
        if (!r->finishing) {
            print_text(r, piece, n);
        } else if (r->n_held + n <= sizeof r->held) {
            memcpy(r->held + r->n_held, piece, n);
            r->n_held += n;
        } else {
            r->dropped = 1; /* a "sentence" longer than the buffer: give up on it */
            return 1;
        }
        if (splitter_feed(&r->splitter, piece, speak_sentence, r)) return 1;
    }
    if (r->pieces < r->app->budget) return 0;
    if (splitter_at_sentence_end(&r->splitter)) return 1; /* stop here: a whole sentence */
    r->finishing = 1;
    return 0;
}

static int tell_story(App *a, const char *prompt) {
    StoryRun r = {.app = a};
    Error err;
    if (speech_start(&r.speech, a->tts, a->wav_out, a->cfg.device, &err)) {
        report(err.msg);
        return 1;
    }
    Llama2Stats gen;
    show(a, FEEDBACK_THINKING);
    int rc = llama2_generate(a->engine, prompt, on_piece, &r, &gen, &err);
    /* whole: not past the budget, stopped at a sentence end, or the story itself ended */
    int whole = !r.dropped && (!r.finishing || gen.stopped || gen.positions < a->engine_steps);
    if (rc == 0 && !r.failed && r.finishing) {
        if (whole) {
            print_text(&r, r.held, r.n_held);
            fprintf(stderr, "storyteller: finished the last sentence in %d more tokens\n",
                    r.pieces - a->budget);
        } else {
            splitter_drop(&r.splitter);
            fprintf(stderr, "storyteller: dropped the unfinished last sentence (no end within "
                            "%d more tokens)\n", FINISH_TOKENS);
        }
    }
    if (!a->quiet) {
        fputs("\n", stdout);
        fflush(stdout);
    }
    if (rc == 0 && !r.failed) splitter_flush(&r.splitter, speak_sentence, &r);
    SpeechStats sp;
    Error speech_err;
    int speech_rc = speech_finish(&r.speech, &sp, &speech_err);
    show(a, FEEDBACK_IDLE);
    if (rc) {
        report(err.msg);
        return 1;
    }
    if (r.failed || speech_rc) {
        report(r.failed ? r.err.msg : speech_err.msg);
        return 1;
    }
    double tps = llama2_tokens_per_second(&gen);
    fprintf(stderr, "storyteller: generation: %.1f tok/s (%d tokens)\n", tps < 0 ? 0 : tps,
            gen.positions);
    fprintf(stderr, "storyteller: tts: %.2f s CPU for %.2f s of audio (%d sentences)\n",
            sp.tts_cpu_seconds, sp.audio_seconds, sp.sentences);
    fprintf(stderr, "storyteller: first sound after %.2f s\n", sp.first_sound_seconds);
    fprintf(stderr, "storyteller: memory: peak RSS %.1f MB\n", peak_rss_mb());
    return 0;
}

/* Acts on a recognised request; returns 0 told, 2 not understood, 3 stop, 1 error. */
static int act(App *a, const char *words, char *last_opening, size_t cap) {
    Request req = prompts_interpret(words);
    fprintf(stderr, "storyteller: heard \"%s\"\n", words);
    switch (req.kind) {
    case REQUEST_STORY:
        snprintf(last_opening, cap, "%s", req.opening);
        return tell_story(a, req.opening);
    case REQUEST_AGAIN:
        return tell_story(a, last_opening[0] ? last_opening : "Once upon a time");
    case REQUEST_STOP:
        return 3;
    case REQUEST_NONE:
        break;
    }
    report("not a story request: " SORRY);
    say(a, SORRY);
    return 2;
}

/* In a loop, --wav story.wav becomes story-1.wav, story-2.wav, ...: one file per story. */
static void number_wav(App *a, const char *base, int n, char *buf, size_t cap) {
    if (!base) return;
    size_t len = strlen(base);
    int ext = len > 4 && !strcmp(base + len - 4, ".wav");
    snprintf(buf, cap, "%.*s-%d%s", (int)(ext ? len - 4 : len), base, n, ext ? ".wav" : "");
    a->wav_out = buf;
}

static Recognizer *open_recognizer(App *a) {
    Error err;
    Recognizer *r = asr_open(a->cfg.asr_model, a->cfg.asr_dict, &err);
    if (!r) report(err.msg);
    return r;
}

static int run_mic_wav(App *a) {
    WavData w;
    Error err;
    if (wav_read(a->mic_wav, &w, &err)) {
        report(err.msg);
        return 1;
    }
    size_t n;
    int16_t *pcm = wav_to_mono(&w, ASR_RATE, &n);
    wav_free(&w);
    Recognizer *r = pcm ? open_recognizer(a) : NULL;
    char words[512], last[256] = "";
    int rc = 1;
    show(a, FEEDBACK_THINKING);
    if (r && asr_decode(r, pcm, n, words, sizeof words, &err) == 0)
        rc = act(a, words, last, sizeof last);
    else if (r)
        report(err.msg);
    asr_close(r);
    free(pcm);
    return rc == 3 ? 0 : rc;
}

static int run_mic(App *a) {
    Recognizer *r = open_recognizer(a);
    if (!r) return 1;
    MicOptions mo = {a->cfg.mic_device, a->cfg.button_gpio, 8.0, 0.8};
    char words[512], last[256] = "", wav[4096];
    const char *base = a->wav_out;
    report("ready");
    int rc = 0;
    for (int turn = 1;; turn++) {
        number_wav(a, base, turn, wav, sizeof wav);
        chime(a);
        show(a, FEEDBACK_LISTENING);
        int16_t *pcm = NULL;
        size_t n = 0;
        Error err;
        int got = mic_listen(&mo, &pcm, &n, &err);
        if (got == 1) break; /* no more input */
        if (got < 0) {
            report(err.msg);
            rc = 1;
            break;
        }
        show(a, FEEDBACK_THINKING);
        int decoded = asr_decode(r, pcm, n, words, sizeof words, &err);
        free(pcm);
        if (decoded) {
            report(err.msg);
            continue;
        }
        int done = act(a, words, last, sizeof last);
        if (done == 3) break;
    }
    asr_close(r);
    return rc;
}

static int run_stdin(App *a) {
    char line[1024], wav[4096];
    const char *base = a->wav_out;
    int stories = 0;
    report("ready");
    while (fprintf(stderr, "prompt> "), fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!strcmp(line, "stop") || !strcmp(line, "quit")) break;
        number_wav(a, base, ++stories, wav, sizeof wav);
        if (tell_story(a, line[0] ? line : "Once upon a time")) return 1;
        if (base) fprintf(stderr, "storyteller: wrote %s\n", a->wav_out);
    }
    return 0;
}

static int parse_args(App *a, int argc, char **argv) {
    Error err;
    for (int i = 1; i < argc; i++) /* the config file first: the command line overrides it */
        if (!strcmp(argv[i], "--config") && i + 1 < argc) a->config_path = argv[i + 1];
    config_defaults(&a->cfg);
    if (config_load(&a->cfg, a->config_path ? a->config_path : DEFAULT_CONFIG,
                    a->config_path != NULL, &err)) {
        report(err.msg);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(arg, "--mic")) { a->mic = 1; continue; }
        if (!strcmp(arg, "--quiet")) { a->quiet = 1; continue; }
        if (strncmp(arg, "--", 2) != 0 || !val) {
            fprintf(stderr, "storyteller: unexpected argument '%s'\n", arg);
            usage(stderr);
            return 1;
        }
        i++;
        if (!strcmp(arg, "--config")) continue;
        else if (!strcmp(arg, "--prompt")) a->prompt = val;
        else if (!strcmp(arg, "--mic-wav")) a->mic_wav = val;
        else if (!strcmp(arg, "--wav")) a->wav_out = val;
        else {
            char key[64];
            snprintf(key, sizeof key, "%s", arg + 2);
            for (char *k = key; *k; k++)
                if (*k == '-') *k = '_';
            if (config_set(&a->cfg, key, val, arg, &err)) {
                report(err.msg);
                return 1;
            }
        }
    }
    if (!!a->prompt + !!a->mic_wav + a->mic > 1) {
        report("choose one of --prompt, --mic and --mic-wav");
        return 1;
    }
    return 0;
}

/* A data file still at its built-in default (/usr/share/storyteller/..., the board's) that
 * is not there: the same file next to the binary, then in the source tree the binary was
 * built in (build/<target>/storyteller: the repository's models/ and engine/storyteller/).
 * Sets `looked` to where it looked when none exists. */
static void find_data(char *value, size_t cap, const char *dflt, const char *exe_dir,
                      const char *const *tree, char *looked, size_t looked_cap) {
    looked[0] = '\0';
    if (strcmp(value, dflt) != 0 || access(value, R_OK) == 0) return; /* set, or there */
    const char *base = strrchr(dflt, '/') ? strrchr(dflt, '/') + 1 : dflt;
    char cand[3][CONFIG_STR * 2];
    int n = 0;
    if (exe_dir[0]) {
        snprintf(cand[n++], sizeof cand[0], "%s/%s", exe_dir, base);
        for (; *tree && n < 3; tree++)
            snprintf(cand[n++], sizeof cand[0], "%s/../../%s", exe_dir, *tree);
    }
    snprintf(looked, looked_cap, "%s", dflt);
    for (int i = 0; i < n; i++) {
        char real[4096];
        const char *found = access(cand[i], R_OK) == 0 && realpath(cand[i], real) ? real : NULL;
        if (found && strlen(found) < cap) {
            memcpy(value, found, strlen(found) + 1);
            looked[0] = '\0';
            return;
        }
        size_t used = strlen(looked), add = strlen(cand[i]);
        if (used + 2 + add < looked_cap) { /* else the list is cut short */
            memcpy(looked + used, ", ", 2);
            memcpy(looked + used + 2, cand[i], add + 1);
        }
    }
}

static int find_data_files(App *a) {
    Config d, *c = &a->cfg;
    config_defaults(&d);
    char exe[CONFIG_STR] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    static const char *const model[] = {"models/stories260K.bin", NULL};
    static const char *const tok[] = {"models/tok512.bin", NULL};
    static const char *const dict[] = {"engine/storyteller/story.dict", NULL};
    struct {
        char *value;
        const char *dflt, *const *tree, *what, *key;
        int needed;
    } files[] = {
        {c->model, d.model, model, "model", "model", 1},
        {c->tokenizer, d.tokenizer, tok, "tokenizer", "tokenizer", 1},
        {c->asr_dict, d.asr_dict, dict, "speech dictionary", "asr_dict", a->mic || a->mic_wav},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char looked[4 * CONFIG_STR];
        find_data(files[i].value, CONFIG_STR, files[i].dflt, exe, files[i].tree, looked,
                  sizeof looked);
        if (looked[0] && files[i].needed) {
            fprintf(stderr,
                    "storyteller: no %s: looked for %s; give --%s FILE or set %s = FILE in %s\n",
                    files[i].what, looked, files[i].key, files[i].key,
                    a->config_path ? a->config_path : DEFAULT_CONFIG);
            return 1;
        }
    }
    return 0;
}

static int open_app(App *a) {
    Error err;
    Config *c = &a->cfg;
    const char *sysfs = getenv("STORYTELLER_SYSFS"); /* tests: a fake sysfs tree */
    if (feedback_open(&a->fb, sysfs && *sysfs ? sysfs : "/sys", c->led, &err))
        fprintf(stderr, "storyteller: %s; going on without the LED\n", err.msg);
    a->tts = tts_open(c->voice, c->speed, c->pitch, c->espeak_data[0] ? c->espeak_data : NULL, &err);
    if (!a->tts) {
        report(err.msg);
        return 1;
    }
    if (!a->wav_out) { /* find a missing sound card now, not after the first story */
        PcmOut *probe = pcm_open(c->device, tts_rate(a->tts), &err);
        if (!probe || pcm_close(probe, &err)) {
            report(err.msg);
            return 1;
        }
    }
    Llama2Options eo = {.checkpoint_path = c->model, .tokenizer_path = c->tokenizer,
                        .temperature = c->temperature, .topp = c->topp,
                        .seed = c->seed ? (unsigned long long)c->seed : (unsigned long long)time(NULL),
                        .steps = c->steps > 0 ? c->steps + FINISH_TOKENS : 0,
                        .path = !strcmp(c->path, "ref") ? LLAMA2_PATH_REF
                                : !strcmp(c->path, "fast") ? LLAMA2_PATH_FAST : LLAMA2_PATH_AUTO};
    a->engine = llama2_open(&eo, &err);
    if (!a->engine) {
        char *z = strstr(err.msg, "with -z)"); /* the llama2 command's option; ours: */
        if (z && z + sizeof "with --tokenizer)" <= err.msg + sizeof err.msg)
            memcpy(z, "with --tokenizer)", sizeof "with --tokenizer)");
        report(err.msg);
        say(a, "Sorry, I cannot find my story book.");
        return 1;
    }
    Llama2Shape shape;
    llama2_shape(a->engine, &shape);
    a->engine_steps = shape.steps; /* the engine caps steps at the model's context */
    a->budget = c->steps > 0 && c->steps < shape.seq_len ? c->steps : shape.seq_len;
    return 0;
}

int main(int argc, char **argv) {
    App a = {0};
    int rc = parse_args(&a, argc, argv);
    if (rc == 0) rc = find_data_files(&a);
    if (rc == 0) rc = open_app(&a);
    if (rc == 0) {
        if (a.prompt) rc = tell_story(&a, a.prompt);
        else if (a.mic_wav) rc = run_mic_wav(&a);
        else if (a.mic) rc = run_mic(&a);
        else rc = run_stdin(&a);
    }
    show(&a, FEEDBACK_IDLE);
    llama2_close(a.engine);
    tts_close(a.tts);
    return rc;
}
