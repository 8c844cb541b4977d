/* How faithful is a model file to the fp32 reference? For each seed:
 *  - departure: both generate freely with the same sampler and seed; the index of the
 *    first generated token where MODEL's story differs from REF's under -k ref (= steps
 *    when they never differ);
 *  - teacher forcing: MODEL is fed REF's tokens; at every position its next-token
 *    distribution (softmax of the logits, temperature 1) is compared with REF's: top-1
 *    agreement and KL(REF || MODEL) in nats.
 * Prints one line per seed and a summary line; used by `invoke bench --fidelity`. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../include/llama2.h"

static void usage(void) {
    fprintf(stderr,
            "usage: fidelity REF_MODEL MODEL TOKENIZER [-n steps] [-s first_seed] [-c seeds]\n"
            "                [-t temperature] [-p topp] [-i prompt]\n"
            "REF_MODEL runs the fp32 reference path (-k ref); MODEL its default path.\n");
    exit(2);
}

static void die(const char *msg) {
    fprintf(stderr, "fidelity: %s\n", msg);
    exit(1);
}

/* log-softmax of n logits into out (double, so the KL is not lost in rounding). */
static void log_softmax(double *out, const float *logits, int n) {
    double max = logits[0], sum = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > max) max = logits[i];
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    double lse = max + log(sum);
    for (int i = 0; i < n; i++) out[i] = (double)logits[i] - lse;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

typedef struct {
    int generated, departure, top1_same, compared;
    double kl;
} SeedResult;

static void reseed(Llama2 *e, unsigned long long seed) {
    if (llama2_reseed(e, seed)) die("out of memory for the sampler");
}

static SeedResult run_seed(Llama2 *ref, Llama2 *model, const int *prompt, int n_prompt,
                           unsigned long long seed, int *ref_tokens, double *lp, double *lq,
                           float *logits) {
    Llama2Shape shape;
    llama2_shape(ref, &shape);
    int vocab = shape.vocab_size, steps = shape.steps;
    SeedResult r = {0};
    reseed(ref, seed);
    /* REF generates; MODEL is fed the same tokens (teacher forcing) */
    int token = prompt[0], n = 0;
    for (int pos = 0; pos < steps; pos++) {
        float *p = llama2_forward(ref, token, pos);
        float *q = llama2_forward(model, token, pos);
        if (pos >= n_prompt - 1) {
            log_softmax(lp, p, vocab);
            log_softmax(lq, q, vocab);
            double kl = 0;
            for (int i = 0; i < vocab; i++) kl += exp(lp[i]) * (lp[i] - lq[i]);
            r.kl += kl;
            r.top1_same += argmax(p, vocab) == argmax(q, vocab);
            r.compared++;
        }
        memcpy(logits, p, sizeof(float) * (size_t)vocab);
        int next = pos < n_prompt - 1 ? prompt[pos + 1] : llama2_sample(ref, logits);
        ref_tokens[n++] = next;
        if (next == LLAMA2_TOKEN_BOS) break;
        token = next;
    }
    r.generated = n;
    /* MODEL generates freely from the same seed */
    reseed(model, seed);
    token = prompt[0];
    r.departure = n;
    for (int pos = 0; pos < n; pos++) {
        float *q = llama2_forward(model, token, pos);
        int next = pos < n_prompt - 1 ? prompt[pos + 1] : llama2_sample(model, q);
        if (next != ref_tokens[pos]) {
            r.departure = pos - (n_prompt - 1);
            break;
        }
        token = next;
    }
    if (r.departure == n) r.departure = n - (n_prompt - 1);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 4) usage();
    Llama2Options o = {.tokenizer_path = argv[3], .temperature = 1.0f, .topp = 0.9f,
                       .steps = 256, .path = LLAMA2_PATH_REF};
    long long first_seed = 1, seeds = 20;
    const char *text = "Once upon a time";
    for (int i = 4; i < argc; i += 2) {
        if (i + 1 >= argc || argv[i][0] != '-' || strlen(argv[i]) != 2) usage();
        const char *v = argv[i + 1];
        switch (argv[i][1]) {
        case 'n': o.steps = atoi(v); break;
        case 's': first_seed = atoll(v); break;
        case 'c': seeds = atoll(v); break;
        case 't': o.temperature = (float)atof(v); break;
        case 'p': o.topp = (float)atof(v); break;
        case 'i': text = v; break;
        default: usage();
        }
    }
    if (seeds < 1 || o.steps < 1) usage();
    Llama2Error err = {{0}};
    o.checkpoint_path = argv[1];
    Llama2 *ref = llama2_open(&o, &err);
    if (!ref) die(err.msg);
    Llama2Options mo = o;
    mo.checkpoint_path = argv[2];
    mo.path = LLAMA2_PATH_AUTO;
    Llama2 *model = llama2_open(&mo, &err);
    if (!model) die(err.msg);
    Llama2Shape a, b;
    llama2_shape(ref, &a);
    llama2_shape(model, &b);
    if (a.dim != b.dim || a.n_layers != b.n_layers || a.vocab_size != b.vocab_size ||
        a.seq_len != b.seq_len)
        die("the two models have different shapes");

    int vocab = a.vocab_size, n_prompt;
    int *prompt = llama2_encode(ref, text, &n_prompt, &err);
    if (!prompt) die(err.msg);
    int *ref_tokens = malloc(sizeof(int) * (size_t)a.steps);
    double *lp = malloc(sizeof(double) * (size_t)vocab), *lq = malloc(sizeof(double) * (size_t)vocab);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    if (!ref_tokens || !lp || !lq || !logits) die("out of memory");
    if (n_prompt >= a.steps) die("the prompt fills every step");

    double departure = 0, kl = 0;
    long top1 = 0, compared = 0, identical = 0;
    for (long long s = first_seed; s < first_seed + seeds; s++) {
        SeedResult r = run_seed(ref, model, prompt, n_prompt, (unsigned long long)s, ref_tokens,
                                lp, lq, logits);
        int same = r.departure == r.generated - (n_prompt - 1);
        printf("seed %lld: departs at token %d of %d%s, top-1 %.4f, mean KL %.3g\n", s,
               r.departure, r.generated - (n_prompt - 1), same ? " (identical)" : "",
               (double)r.top1_same / r.compared, r.kl / r.compared);
        departure += r.departure;
        identical += same;
        kl += r.kl;
        top1 += r.top1_same;
        compared += r.compared;
    }
    printf("summary: seeds %lld identical %ld mean_departure %.1f top1 %.4f mean_kl %.4g\n",
           seeds, identical, departure / (double)seeds, (double)top1 / (double)compared,
           kl / (double)compared);
    free(prompt), free(ref_tokens), free(lp), free(lq), free(logits);
    llama2_close(ref);
    llama2_close(model);
    return 0;
}
