/* The faithful path's certified decision (faithful_decide.c, driven directly: no model)
 * against run.c's sampler: constructed logit vectors (the coin exactly on, just inside and
 * just outside a cdf boundary, ties, a nucleus of one token, -p 1, -p 0, -t 0, a budget of
 * nothing), a property test over random logit vectors with random bounds; then the path
 * (faithful.c): the int8 classifier's bounds against run.c's fp32 logits. Built and run by
 * `make check` (and under ASan/UBSan by the Python suite). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/faithful.h"
#include "../src/faithful_decide.h"
#include "../src/kernels.h"
#include "../src/ops.h"
#include "../src/sampler.h"

#include "check.h"

static unsigned long long rng = 7;
static float unit(void) { return random_f32(&rng); } /* [0, 1) */

/* ---- the decision (faithful_decide.c) on logits and bounds made here ------------------- */

typedef struct {
    int rounds, exact; /* refinement rounds; 1 when it took every logit exact */
} Outcome;

/* faithful_decide driven like faithful_sample: a refined row's whole tile becomes exact
 * (its true value), FAITHFUL_EXACT runs run.c's sampler on the true logits. */
static int certified(const float *truth, const float *lo0, const float *hi0, int n, float t,
                     float topp, float coin, int budget, Outcome *out) {
    LogitBounds b = {n, malloc(n * sizeof(float)), malloc(n * sizeof(float)), malloc(n)};
    int *refine = malloc((n + 1) * sizeof *refine);
    FaithfulWork *w = faithful_work_new(n, PACK_ROWS);
    memcpy(b.lo, lo0, n * sizeof(float));
    memcpy(b.hi, hi0, n * sizeof(float));
    for (int i = 0; i < n; i++) b.exact[i] = lo0[i] == hi0[i] && lo0[i] == truth[i];
    int token = -1, used = 0;
    *out = (Outcome){0, 0};
    for (;;) {
        int n_refine = 0;
        FaithfulVerdict v = faithful_decide(&b, t, topp, coin, out->rounds, budget - used, w,
                                            &token, refine, &n_refine);
        if (v == FAITHFUL_TOKEN) break;
        int progress = 0;
        if (v == FAITHFUL_REFINE) {
            for (int k = 0; k < n_refine; k++) {
                int t0 = refine[k] / PACK_ROWS * PACK_ROWS;
                if (!b.exact[t0]) used++;
                for (int i = t0; i < t0 + PACK_ROWS && i < n; i++) {
                    progress |= !b.exact[i];
                    b.lo[i] = b.hi[i] = truth[i];
                    b.exact[i] = 1;
                }
            }
            out->rounds++;
        }
        if (v == FAITHFUL_EXACT || !progress) {
            float *l = malloc(n * sizeof(float));
            ProbIndex *pi = malloc(n * sizeof *pi);
            memcpy(l, truth, n * sizeof(float));
            token = faithful_exact_sample(l, n, t, topp, coin, pi);
            free(l);
            free(pi);
            out->exact = 1;
            CHECK(v == FAITHFUL_EXACT, "a refinement that refines nothing");
            break;
        }
    }
    faithful_work_free(w);
    free(refine);
    free(b.lo);
    free(b.hi);
    free(b.exact);
    return token;
}

static int exact_token(const float *truth, int n, float t, float topp, float coin) {
    float *l = malloc(n * sizeof(float));
    ProbIndex *pi = malloc(n * sizeof *pi);
    memcpy(l, truth, n * sizeof(float));
    int token = faithful_exact_sample(l, n, t, topp, coin, pi);
    free(l);
    free(pi);
    return token;
}

/* Bounds truth - a*width .. truth + c*width, a and c random in [0, 1] (0: that end tight). */
static void make_bounds(const float *truth, float *lo, float *hi, int n, float width,
                        float exact_share) {
    for (int i = 0; i < n; i++) {
        if (unit() < exact_share) {
            lo[i] = hi[i] = truth[i];
            continue;
        }
        lo[i] = truth[i] - width * unit();
        hi[i] = truth[i] + width * unit();
        if (lo[i] == hi[i]) hi[i] = nextafterf(hi[i], INFINITY); /* not marked exact */
    }
}

/* Every bound width on the same case, each checked against run.c's sampler. */
static void check_all_widths(const char *what, const float *truth, int n, float t, float topp,
                             float coin, int want) {
    float *lo = malloc(n * sizeof(float)), *hi = malloc(n * sizeof(float));
    int exact = exact_token(truth, n, t, topp, coin);
    if (want >= 0)
        CHECK(exact == want, "%s: run.c's sampler gives %d, expected %d", what, exact, want);
    const float widths[] = {0.0f, 1e-6f, 1e-3f, 0.05f, 0.5f, 3.0f};
    for (size_t k = 0; k < sizeof widths / sizeof widths[0]; k++)
        for (int rep = 0; rep < 4; rep++) {
            make_bounds(truth, lo, hi, n, widths[k], rep == 3 ? 0.5f : 0.0f);
            Outcome o;
            int got = certified(truth, lo, hi, n, t, topp, coin, 1 << 30, &o);
            CHECK(got == exact, "%s, width %g: certified %d, run.c %d", what, (double)widths[k],
                  got, exact);
        }
    free(lo);
    free(hi);
}

/* run.c's top-p internals on exact logits: the cumulative sums in sorted order, the rows
 * in that order, and `last`. Returns the number of candidates. */
static int by_prob(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return (x->index > y->index) - (x->index < y->index);
}

static int topp_internals(const float *truth, int n, float t, float topp, float *cum, int *row,
                          int *last) {
    float *p = malloc(n * sizeof(float));
    ProbIndex *pi = malloc(n * sizeof *pi);
    for (int i = 0; i < n; i++) p[i] = truth[i] / t;
    softmax(p, n);
    const float cutoff = (1.0f - topp) / (float)(n - 1);
    int n0 = 0;
    for (int i = 0; i < n; i++)
        if (p[i] >= cutoff) pi[n0++] = (ProbIndex){p[i], i};
    qsort(pi, n0, sizeof *pi, by_prob);
    float c = 0.0f;
    *last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        c += pi[i].prob;
        cum[i] = c;
        row[i] = pi[i].index;
        if (c > topp) {
            *last = i;
            break;
        }
    }
    free(p);
    free(pi);
    return n0;
}

static void test_coin_on_boundaries(void) {
    /* multinomial (-p 1, -p 0): coin == cdf_i picks i + 1, just below picks i */
    float logits[6] = {0.3f, 2.0f, 1.1f, -0.4f, 1.7f, 0.9f};
    const int n = 6;
    float p[6], cdf[6], c = 0.0f;
    memcpy(p, logits, sizeof p);
    softmax(p, n); /* temperature 1 */
    for (int i = 0; i < n; i++) cdf[i] = c += p[i];
    int found = 0;
    for (int i = 0; i + 1 < n; i++) {
        if (!(cdf[i] >= 0.5f && cdf[i] < 1.0f)) continue; /* coins are k / 2^24 */
        found++;
        const float topps[2] = {1.0f, 0.0f};
        for (int k = 0; k < 2; k++) {
            check_all_widths("coin on a cdf step", logits, n, 1.0f, topps[k], cdf[i], i + 1);
            check_all_widths("coin just inside", logits, n, 1.0f, topps[k],
                             nextafterf(cdf[i], 0.0f), i);
            check_all_widths("coin just outside", logits, n, 1.0f, topps[k],
                             nextafterf(cdf[i], 1.0f), i + 1);
        }
    }
    CHECK(found >= 2, "the multinomial case has %d usable boundaries", found);

    /* top-p: r = fl(coin * cum_last) exactly on cum_i, and the neighbouring coins */
    float tl[40];
    for (int i = 0; i < 40; i++) tl[i] = (float)((i * 37) % 11) * 0.35f - (float)i * 0.02f;
    const int m = 40;
    float cum[40];
    int row[40], last, hits = 0;
    topp_internals(tl, m, 1.0f, 0.9f, cum, row, &last);
    for (int i = 0; i < last; i++) {
        double ideal = (double)cum[i] / (double)cum[last] * 16777216.0;
        for (long k = (long)ideal - 64; k <= (long)ideal + 64; k++) {
            if (k <= 0 || k >= 16777216) continue;
            float coin = (float)k / 16777216.0f;
            if (coin * cum[last] != cum[i]) continue;
            hits++;
            check_all_widths("top-p: r on cdf_i", tl, m, 1.0f, 0.9f, coin, row[i + 1]);
            float below = (float)(k - 1) / 16777216.0f, above = (float)(k + 1) / 16777216.0f;
            check_all_widths("top-p: coin below", tl, m, 1.0f, 0.9f, below, -1);
            check_all_widths("top-p: coin above", tl, m, 1.0f, 0.9f, above, -1);
            break;
        }
    }
    CHECK(hits >= 2, "found %d coins with r exactly on a cdf step", hits);
}

static void test_constructed(void) {
    /* ties: equal logits keep index order, in argmax and in the top-p sort */
    float tie[5] = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f};
    check_all_widths("greedy tie", tie, 5, 0.0f, 0.9f, 0.5f, 1);
    float ptie[6] = {0.5f, 2.0f, 2.0f, 2.0f, -1.0f, 0.0f};
    float cum[6];
    int row[6], last;
    topp_internals(ptie, 6, 1.0f, 0.9f, cum, row, &last);
    CHECK(row[0] == 1 && row[1] == 2 && row[2] == 3, "top-p ties sort by index");
    for (int k = 0; k < 3; k++) {
        float coin = (k + 0.5f) / 3.0f * cum[2] / cum[last];
        check_all_widths("top-p tie", ptie, 6, 1.0f, 0.9f, coin, row[k]);
    }
    /* near ties: logits one ulp apart */
    float near[4] = {1.0f, nextafterf(1.0f, 2.0f), -3.0f, nextafterf(1.0f, 0.0f)};
    for (int k = 0; k < 8; k++)
        check_all_widths("near tie", near, 4, 1.0f, 0.9f, (float)k / 8.0f, -1);
    /* a nucleus of one token: every coin picks it */
    float one[8] = {0.0f, 9.0f, 0.5f, -1.0f, 0.2f, 0.1f, -2.0f, 0.3f};
    for (int k = 0; k < 5; k++)
        check_all_widths("nucleus of one", one, 8, 1.0f, 0.9f, (float)k / 4.0f * 0.999f, 1);
    /* -p 1, -p 0 (multinomial over everything), -t 0 (greedy), low and high temperature */
    float v[12];
    for (int i = 0; i < 12; i++) v[i] = sinf((float)i * 1.7f) * 2.0f;
    const int top = sample_argmax(v, 12);
    for (int k = 0; k < 6; k++) {
        float coin = unit();
        check_all_widths("-p 1", v, 12, 1.0f, 1.0f, coin, -1);
        check_all_widths("-p 0", v, 12, 0.5f, 0.0f, coin, -1);
        check_all_widths("-t 0", v, 12, 0.0f, 0.9f, coin, top);
        check_all_widths("-t 0.2", v, 12, 0.2f, 0.9f, coin, -1);
        check_all_widths("-t 3", v, 12, 3.0f, 0.95f, coin, -1);
    }
    /* coin 0 picks the first sorted token; the largest coin stays inside the nucleus */
    check_all_widths("coin 0", v, 12, 1.0f, 0.9f, 0.0f, top);
    check_all_widths("coin max", v, 12, 1.0f, 0.9f, 1.0f - 0x1p-24f, -1);
    /* a budget of nothing: every undecided case goes to run.c's sampler, still right */
    float *lo = malloc(12 * sizeof(float)), *hi = malloc(12 * sizeof(float));
    make_bounds(v, lo, hi, 12, 0.5f, 0.0f);
    Outcome o;
    CHECK(certified(v, lo, hi, 12, 1.0f, 0.9f, 0.3f, 0, &o) == exact_token(v, 12, 1.0f, 0.9f, 0.3f),
          "zero budget");
    free(lo);
    free(hi);
}

/* Random true logits, random approximations within random bounds, exact fallback. */
static void test_property(void) {
    const int sizes[] = {2, 3, 5, 16, 17, 40, 130, 512, 2000};
    const float temps[] = {0.0f, 0.25f, 0.7f, 1.0f, 1.0f, 1.6f};
    const float topps[] = {0.0f, 0.5f, 0.9f, 0.9f, 0.95f, 0.99f, 1.0f, -1.0f};
    int cases = 0, wrong = 0, without_full = 0, by_bounds = 0;
    float *truth = malloc(2000 * sizeof(float)), *lo = malloc(2000 * sizeof(float));
    float *hi = malloc(2000 * sizeof(float));
    for (int c = 0; c < 30000; c++) {
        int n = sizes[c % 9 == 8 ? 8 : (int)(unit() * 8)];
        float t = temps[(int)(unit() * 6)], topp = topps[(int)(unit() * 8)];
        if (topp < 0) topp = unit();
        float scale = powf(10.0f, unit() * 2.0f - 1.0f); /* 0.1 .. 10 */
        int flat = unit() < 0.15f; /* a few distinct values: many exact p ties */
        for (int i = 0; i < n; i++)
            truth[i] = flat ? floorf(unit() * 4.0f) * 0.5f * scale
                            : scale * (unit() + unit() + unit() - 1.5f) * 2.0f;
        if (unit() < 0.5f) truth[(int)(unit() * n)] += unit() * 12.0f; /* a peak */
        int dups = unit() < 0.3f ? 1 + (int)(unit() * 4) : 0;
        for (int k = 0; k < dups; k++) { /* equal and one-ulp-apart logits */
            int a = (int)(unit() * n), b = (int)(unit() * n);
            float away = unit() < 0.5f ? -INFINITY : INFINITY;
            truth[a] = k % 2 ? truth[b] : nextafterf(truth[b], away);
        }
        float width = powf(10.0f, unit() * 7.0f - 6.5f); /* 3e-7 .. 3 */
        make_bounds(truth, lo, hi, n, width, unit() < 0.3f ? unit() : 0.0f);
        float coin = unit();
        if (c % 97 == 0) coin = 0.0f;
        if (c % 89 == 0) coin = 1.0f - 0x1p-24f;
        Outcome o;
        int got = certified(truth, lo, hi, n, t, topp, coin, 1 << 30, &o);
        int want = exact_token(truth, n, t, topp, coin);
        cases++;
        wrong += got != want;
        without_full += !o.exact;
        by_bounds += !o.exact && o.rounds == 0;
        if (got != want && wrong <= 5)
            fprintf(stderr, "property case %d: n %d t %g topp %g coin %.9g width %g: %d vs %d\n",
                    c, n, (double)t, (double)topp, (double)coin, (double)width, got, want);
    }
    CHECK(wrong == 0, "%d of %d random cases decided differently from run.c", wrong, cases);
    /* the certified paths must be what is exercised, not only the fallback */
    CHECK(without_full > cases * 7 / 10, "only %d of %d decided without every logit exact",
          without_full, cases);
    CHECK(by_bounds > cases / 10, "only %d of %d decided by the bounds alone", by_bounds, cases);
    printf("property: %d cases, %d without every logit exact, %d by the bounds alone\n", cases,
           without_full, by_bounds);
    free(truth);
    free(lo);
    free(hi);
}

/* ---- the int8 classifier's bounds ------------------------------------------------------ */

static float bf16_up(float s) {
    uint32_t bits;
    memcpy(&bits, &s, 4);
    if (bits & 0xFFFFu) bits = (bits & 0xFFFF0000u) + 0x10000u;
    else bits &= 0xFFFF0000u;
    memcpy(&s, &bits, 4);
    return s;
}

static float up(double d) {
    float f = (float)d;
    return (double)f < d ? nextafterf(f, INFINITY) : f;
}

/* A faithful classifier built in memory as the converter writes it (FORMAT.md). */
typedef struct {
    Model m;
    float *w, *f32, *norms;
    unsigned char *q8, *q2;
} FakeModel;

static void fake_model(FakeModel *fm, int rows, int cols, float spread) {
    const size_t R = PACK_ROWS, G = PACK_GROUP, tiles = (rows + R - 1) / R;
    const size_t groups = (cols + G - 1) / G, block = packed_block_bytes(TENSOR_PQ8);
    memset(fm, 0, sizeof *fm);
    fm->w = calloc(tiles * R * groups * G, sizeof(float)); /* padded, row-major */
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float v = (unit() - 0.5f) * 0.2f;
            if (unit() < 0.02f) v *= spread; /* outliers widen their group's step */
            fm->w[i * groups * G + j] = v;
        }
    fm->f32 = calloc(tiles * R * cols, sizeof(float));
    fm->q8 = calloc(tiles * groups * block, 1);
    fm->norms = calloc(tiles * R, sizeof(float));
    /* the second level, per tile: nr2 and nw2 per row, then the int4 values */
    const size_t half = R * G / 2, block2 = 2 * R * 4 + groups * half;
    fm->q2 = calloc(tiles * block2, 1);
    double nq_max = 0.0;
    for (size_t i = 0; i < (size_t)rows; i++) {
        const float *row = fm->w + i * groups * G;
        size_t t = i / R, r = i % R;
        for (int j = 0; j < cols; j++) fm->f32[(t * cols + j) * R + r] = row[j];
        double nr2 = 0.0, nq2 = 0.0, nrr2 = 0.0, nw2 = 0.0;
        for (size_t g = 0; g < groups; g++) {
            float mx = 0.0f;
            for (size_t j = 0; j < G; j++) mx = fmaxf(mx, fabsf(row[g * G + j]));
            float s = bf16_up(mx / 127.0f);
            unsigned char *b = fm->q8 + (t * groups + g) * block;
            for (size_t j = 0; j < G; j++) {
                float q = s == 0.0f ? 0.0f : roundf(row[g * G + j] / s);
                q = fmaxf(-127.0f, fminf(127.0f, q));
                b[j * R + r] = (unsigned char)(int8_t)q;
                double wh = (double)q * s, res = (double)row[g * G + j] - wh;
                nr2 += res * res;
                nq2 += wh * wh;
                /* the second level: the residual in int4 at s / 16 */
                double step = (double)s / 16.0;
                double v2 = s == 0.0f ? 0.0 : fmax(-8.0, fmin(7.0, round(res / step)));
                unsigned char *n = fm->q2 + t * block2 + 2 * R * 4 + g * half + (j / 2) * R + r;
                *n |= (unsigned char)(((unsigned)(int)v2 & 15u) << (j % 2 ? 4 : 0));
                double wh2 = wh + v2 * step, res2 = res - v2 * step;
                nrr2 += res2 * res2;
                nw2 += wh2 * wh2;
            }
            uint32_t bits;
            memcpy(&bits, &s, 4);
            uint16_t h = (uint16_t)(bits >> 16);
            memcpy(b + R * G + 2 * r, &h, 2);
        }
        fm->norms[i] = up(sqrt(nr2) * (1 + 1e-12));
        float n2[2] = {up(sqrt(nrr2) * (1 + 1e-12)), up(sqrt(nw2) * (1 + 1e-12))};
        memcpy(fm->q2 + t * block2 + 4 * r, &n2[0], 4);
        memcpy(fm->q2 + t * block2 + 4 * (R + r), &n2[1], 4);
        if (sqrt(nq2) > nq_max) nq_max = sqrt(nq2);
    }
    Model *m = &fm->m;
    m->cfg = (ModelConfig){.dim = cols, .hidden_dim = cols, .n_layers = 1, .n_heads = 1,
                           .n_kv_heads = 1, .vocab_size = rows, .seq_len = 8,
                           .shared_classifier = 1, .format = FORMAT_PACKED_FAITHFUL};
    m->classifier = (Tensor){.type = TENSOR_PF32, .rows = rows, .cols = cols, .tiles = tiles,
                             .p = (const unsigned char *)fm->f32};
    m->classifier_q8 = (Tensor){.type = TENSOR_PQ8, .rows = rows, .cols = cols, .tiles = tiles,
                                .groups = groups, .group_size = G, .p = fm->q8};
    m->classifier_residual_norms = fm->norms;
    m->classifier_q8_norm_max = up(nq_max * (1 + 1e-12));
    m->classifier_refine = fm->q2;
    m->classifier_refine_block = 2 * PACK_ROWS * 4 + groups * (PACK_ROWS * PACK_GROUP / 2);
}

static void free_fake(FakeModel *fm) {
    free(fm->w);
    free(fm->f32);
    free(fm->q8);
    free(fm->norms);
    free(fm->q2);
}

static void test_classifier_bounds(void) {
    const int shapes[][2] = {{50, 64}, {37, 72}, {200, 288}};
    double tightest = 0.0, narrowed = 0.0;
    long checked = 0, outside = 0, outside2 = 0, refined = 0;
    for (size_t k = 0; k < 3; k++) {
        int rows = shapes[k][0], cols = shapes[k][1];
        FakeModel fm;
        fake_model(&fm, rows, cols, k == 2 ? 8.0f : 1.0f);
        Error err = {{0}};
        Faithful *f = faithful_new(&fm.m, &err);
        CHECK(f != NULL, "faithful_new: %s", err.msg);
        if (!f) continue;
        float *x = malloc(cols * sizeof(float)), *approx = malloc(rows * sizeof(float));
        float *exact = malloc(rows * sizeof(float));
        const size_t G = PACK_GROUP, groups = (cols + G - 1) / G;
        for (int trial = 0; trial < 40; trial++) {
            /* random activations of every magnitude, and activations along a row's residual
             * (where the Cauchy-Schwarz bound is tight) */
            float mag = powf(10.0f, unit() * 8.0f - 4.0f);
            int along = trial % 3 == 0 ? (int)(unit() * rows) : -1;
            for (int j = 0; j < cols; j++) {
                if (along >= 0) {
                    const float *row = fm.w + along * groups * G;
                    const unsigned char *b = fm.q8 + (along / PACK_ROWS * groups + j / G) *
                                                         packed_block_bytes(TENSOR_PQ8);
                    float s = bf16_at(b + PACK_ROWS * G, along % PACK_ROWS);
                    float q = (float)(int8_t)b[(j % G) * PACK_ROWS + along % PACK_ROWS];
                    x[j] = (row[j] - q * s) * mag * 1000.0f;
                } else {
                    x[j] = (unit() - 0.5f) * mag * (unit() < 0.05f ? 30.0f : 1.0f);
                }
            }
            faithful_classify(f, &fm.m, x, approx);
            matvec_packed_f32_ref(exact, &fm.m.classifier, x);
            for (int i = 0; i < rows; i++) {
                checked++;
                if (!(f->b.lo[i] <= exact[i] && exact[i] <= f->b.hi[i])) {
                    if (outside++ < 5)
                        fprintf(stderr, "row %d: %.9g outside [%.9g, %.9g]\n", i,
                                (double)exact[i], (double)f->b.lo[i], (double)f->b.hi[i]);
                }
                double half = 0.5 * ((double)f->b.hi[i] - (double)f->b.lo[i]);
                if (half > 0) tightest = fmax(tightest, fabs((double)exact[i] - approx[i]) / half);
            }
            /* the second level narrows every tile's intervals, still around run.c's logit */
            double *width = malloc(rows * sizeof(double));
            for (int i = 0; i < rows; i++) width[i] = (double)f->b.hi[i] - (double)f->b.lo[i];
            for (size_t t = 0; t < (size_t)(rows + PACK_ROWS - 1) / PACK_ROWS; t++)
                faithful_refine_tile(f, &fm.m, t);
            for (int i = 0; i < rows; i++) {
                if (!(f->b.lo[i] <= exact[i] && exact[i] <= f->b.hi[i]) && outside2++ < 5)
                    fprintf(stderr, "refined row %d: %.9g outside [%.9g, %.9g]\n", i,
                            (double)exact[i], (double)f->b.lo[i], (double)f->b.hi[i]);
                double w2 = (double)f->b.hi[i] - (double)f->b.lo[i];
                if (w2 > 0 && along < 0) narrowed += log(width[i] / w2), refined++;
            }
            free(width);
        }
        free(x);
        free(approx);
        free(exact);
        faithful_free(f);
        free_fake(&fm);
    }
    CHECK(outside == 0, "%ld of %ld exact logits outside their bounds", outside, checked);
    CHECK(outside2 == 0, "%ld of %ld exact logits outside their refined bounds", outside2,
          checked);
    /* Cauchy-Schwarz on the residual of the residual: intervals ~15x narrower */
    double factor = refined ? exp(narrowed / (double)refined) : 0.0;
    CHECK(factor > 8.0, "the second level narrows the intervals %.2fx", factor);
    printf("classifier bounds: the second level narrows them %.1fx (geometric mean)\n", factor);
    /* activations along a residual come close to the bound: it is not vacuous */
    CHECK(tightest > 0.5 && tightest <= 1.0, "largest error / bound %.3f", tightest);
    printf("classifier bounds: %ld logits inside, largest error %.3f of its bound\n", checked,
           tightest);
}

int main(void) {
    test_coin_on_boundaries();
    test_constructed();
    test_property();
    test_classifier_bounds();
    return report();
}
