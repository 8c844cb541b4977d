/* `llama2`: run.c's command line over the engine library. The story goes to stdout as it
 * is generated and `achieved tok/s: X` to stderr, exactly as run.c, so contest scripts
 * work unchanged. Every failure is one line on stderr and a non-zero exit. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../include/llama2.h"

static void usage(void) {
    fprintf(stderr,
            "Usage:   llama2 <checkpoint> [options]\n"
            "Example: llama2 model.bin -n 256 -i \"Once upon a time\"\n"
            "Options:\n"
            "  -t <float>  temperature in [0,inf], default 1.0\n"
            "  -p <float>  p value in top-p (nucleus) sampling in [0,1] default 0.9\n"
            "  -s <int>    random seed, default time(NULL)\n"
            "  -n <int>    number of steps to run for, default 256. 0 = max_seq_len\n"
            "  -i <string> input prompt\n"
            "  -z <string> optional path to custom tokenizer\n"
            "  -m <string> mode: generate|chat, default: generate\n"
            "  -y <string> (optional) system prompt in chat mode\n"
            "  -k <string> compute path: ref (fp32, run.c's exact arithmetic), fast (fp32),\n"
            "              quant (q8/q4/Q8_0 files; also spelled q80), faithful (faithful\n"
            "              files: run.c's tokens from an int8 classifier with certified\n"
            "              bounds); default: the fastest path for the file's format\n"
            "Reads llama2.c checkpoints (v0 legacy fp32, v1 fp32, v2 Q8_0) and the engine's\n"
            "packed fp32/q8/q4/faithful files (engine/FORMAT.md). Kernels: %s\n"
            "LLAMA2_FAITHFUL_STATS=1 prints the faithful sampler's counters to stderr (2: and\n"
            "the rows recomputed at each step);\n"
            "LLAMA2_FAITHFUL_VERIFY=1 also checks every step against all logits exact.\n",
            llama2_kernels());
    exit(EXIT_FAILURE);
}

static void die(const char *msg) {
    fprintf(stderr, "llama2: %s\n", msg);
    exit(EXIT_FAILURE);
}

static double parse_float(const char *flag, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v)) { /* NaN passes every range check after */
        char msg[128];
        snprintf(msg, sizeof msg, "option %s expects a number, got '%.40s'", flag, s);
        die(msg);
    }
    return v;
}

static long long parse_int(const char *flag, const char *s) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < -2147483648LL || v > 2147483647LL) {
        char msg[128];
        snprintf(msg, sizeof msg, "option %s expects an integer, got '%.40s'", flag, s);
        die(msg);
    }
    return v;
}

static int print_piece(void *user, const char *piece) {
    (void)user;
    if (llama2_piece_is_printable(piece)) {
        fputs(piece, stdout);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    Llama2Options o = {.tokenizer_path = "tokenizer.bin", .temperature = 1.0f, .topp = 0.9f,
                       .steps = 256, .path = LLAMA2_PATH_AUTO};
    const char *prompt = NULL, *mode = "generate", *system_prompt = NULL;
    long long seed = 0;
    if (argc < 2) usage();
    o.checkpoint_path = argv[1];
    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc || argv[i][0] != '-' || strlen(argv[i]) != 2) usage();
        const char *v = argv[i + 1];
        switch (argv[i][1]) {
        case 't': o.temperature = (float)parse_float("-t", v); break;
        case 'p': o.topp = (float)parse_float("-p", v); break;
        case 's': seed = parse_int("-s", v); break;
        case 'n': o.steps = (int)parse_int("-n", v); break;
        case 'i': prompt = v; break;
        case 'z': o.tokenizer_path = v; break;
        case 'm': mode = v; break;
        case 'y': system_prompt = v; break;
        case 'k':
            if (strcmp(v, "ref") == 0) o.path = LLAMA2_PATH_REF;
            else if (strcmp(v, "fast") == 0) o.path = LLAMA2_PATH_FAST;
            else if (strcmp(v, "quant") == 0 || strcmp(v, "q80") == 0) o.path = LLAMA2_PATH_QUANT;
            else if (strcmp(v, "faithful") == 0) o.path = LLAMA2_PATH_FAITHFUL;
            else if (strcmp(v, "auto") == 0) o.path = LLAMA2_PATH_AUTO;
            else die("option -k expects ref, fast, quant (or q80), faithful or auto");
            break;
        default: usage();
        }
    }
    /* run.c's overrides, including its seed quirk: the int is taken as unsigned long long */
    o.seed = (unsigned long long)seed;
    if (seed == 0) o.seed = (unsigned int)time(NULL);
    if (o.temperature < 0.0f) o.temperature = 0.0f;
    if (o.topp < 0.0f || 1.0f < o.topp) o.topp = 0.9f;
    if (o.steps < 0) o.steps = 0;
    if (strcmp(mode, "generate") != 0 && strcmp(mode, "chat") != 0) {
        fprintf(stderr, "unknown mode: %s\n", mode);
        usage();
    }

    Llama2Error err = {{0}};
    Llama2 *engine = llama2_open(&o, &err);
    if (!engine) die(err.msg);
    int rc;
    if (strcmp(mode, "generate") == 0) {
        Llama2Stats stats;
        rc = llama2_generate(engine, prompt, print_piece, NULL, &stats, &err);
        if (rc == 0) {
            printf("\n");
            double tps = llama2_tokens_per_second(&stats);
            if (tps >= 0) fprintf(stderr, "achieved tok/s: %f\n", tps);
        }
    } else {
        rc = llama2_chat(engine, prompt, system_prompt, stdin, print_piece, NULL, &err);
    }
    const char *stats = getenv("LLAMA2_FAITHFUL_STATS");
    if (stats && *stats) llama2_print_faithful_stats(engine, stderr, strcmp(stats, "2") == 0);
    llama2_close(engine);
    if (rc) die(err.msg);
    if (fflush(stdout) != 0 || ferror(stdout)) die("writing the story to stdout failed");
    return 0;
}
