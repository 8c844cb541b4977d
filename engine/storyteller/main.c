/* storyteller: a prompt typed, given on the command line or spoken into a microphone;
 * the story written by the llama2 engine and spoken by eSpeak while it is being written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../include/llama2.h"
#include "asr.h"
#include "config.h"
#include "mic.h"
#include "prompts.h"
#include "sentences.h"
#include "speech.h"
#include "wav.h"

#define DEFAULT_CONFIG "/etc/storyteller.conf"
#define SORRY "Sorry, say it again."

typedef struct {
    Config cfg;
    const char *config_path, *prompt, *mic_wav, *wav_out;
    int mic, quiet;
    Tts *tts;
    Llama2 *engine;
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
} StoryRun;

static int speak_sentence(void *user, const char *sentence) {
    StoryRun *r = user;
    if (speech_say(&r->speech, sentence, &r->err)) r->failed = 1;
    return r->failed;
}

static int on_piece(void *user, const char *piece) {
    StoryRun *r = user;
    if (!llama2_piece_is_printable(piece)) return 0;
    if (!r->app->quiet) {
        fputs(piece, stdout);
        fflush(stdout);
    }
    return splitter_feed(&r->splitter, piece, speak_sentence, r);
}

static int tell_story(App *a, const char *prompt) {
    StoryRun r = {.app = a};
    Error err;
    if (speech_start(&r.speech, a->tts, a->wav_out, a->cfg.device, &err)) {
        report(err.msg);
        return 1;
    }
    Llama2Stats gen;
    int rc = llama2_generate(a->engine, prompt, on_piece, &r, &gen, &err);
    if (!a->quiet) {
        fputs("\n", stdout);
        fflush(stdout);
    }
    if (rc == 0 && !r.failed) splitter_flush(&r.splitter, speak_sentence, &r);
    SpeechStats sp;
    Error speech_err;
    int speech_rc = speech_finish(&r.speech, &sp, &speech_err);
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
    char words[512], last[256] = "";
    report("ready");
    int rc = 0;
    for (;;) {
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
    char line[1024];
    report("ready");
    while (fprintf(stderr, "prompt> "), fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!strcmp(line, "stop") || !strcmp(line, "quit")) break;
        if (tell_story(a, line[0] ? line : "Once upon a time")) return 1;
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

static int open_app(App *a) {
    Error err;
    Config *c = &a->cfg;
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
                        .steps = c->steps,
                        .path = !strcmp(c->path, "ref") ? LLAMA2_PATH_REF
                                : !strcmp(c->path, "fast") ? LLAMA2_PATH_FAST : LLAMA2_PATH_AUTO};
    a->engine = llama2_open(&eo, &err);
    if (!a->engine) {
        report(err.msg);
        say(a, "Sorry, I cannot find my story book.");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    App a = {0};
    int rc = parse_args(&a, argc, argv);
    if (rc == 0) rc = open_app(&a);
    if (rc == 0) {
        if (a.prompt) rc = tell_story(&a, a.prompt);
        else if (a.mic_wav) rc = run_mic_wav(&a);
        else if (a.mic) rc = run_mic(&a);
        else rc = run_stdin(&a);
    }
    llama2_close(a.engine);
    tts_close(a.tts);
    return rc;
}
