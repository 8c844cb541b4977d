/* -k faithful (faithful.h): run.c's token from int8 logits with certified bounds.
 *
 * 1. Bounds. For the final hidden state x (run.c's own: the layers ran in its arithmetic)
 *    the approximate logit a_i is the int8 row q_i * s_i (FORMAT.md, section 11) times x
 *    quantized to int16 per group (x^ = x - d). With r_i = w_i - q_i s_i the row's
 *    quantization residual, run.c's fp32 logit l_i = fl(w_i . x) satisfies
 *      |l_i - a_i| <= |r_i . x| + |(q_i s_i) . d|                (the exact products)
 *                    + gamma_dim |w_i| . |x|                      (run.c's fp32 sum)
 *                    + gamma_(groups+3) |q_i s_i| . |x^|          (a_i's fp32 scaling)
 *                 <= nr_i |x| (1 + gamma_dim)
 *                    + nq (|d| + gamma_(groups+3) (|x| + |d|) + gamma_dim |x|)
 *    (Cauchy-Schwarz; |w_i| <= nr_i + nq), where nr_i >= |r_i|_2 and nq >= max_i |q_i s_i|_2
 *    are written by the converter, rounded up; gamma_k = k u / (1 - k u), u = 2^-24. The
 *    norms of x and d are summed in double and rounded up; the interval's ends are
 *    rounded outwards.
 * 2. The decision (faithful_decide.c, pure) follows sampler.c step by step on these
 *    intervals: it proves run.c's token, or names the rows it needs exact.
 * 3. faithful_sample drives it in stages: a tile asked for is first narrowed with section
 *    11's second level (the residual in int4, faithful_refine_tile: the same bound with the
 *    residual-of-residual's norm, ~15x smaller, for 1/8 of the fp32 tile's bytes); asked
 *    for again, its rows come exact from the fp32 classifier's tiles
 *    (matvec_packed_f32_ref: run.c's sum bit for bit); past a budget of tiles every
 *    logit is computed. */
#define _DEFAULT_SOURCE /* madvise */
#include "faithful.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"

#define RELEASE_BYTES ((size_t)4 << 20) /* fp32 classifier pages kept mapped, at most */

/* nextafterf(v, +INFINITY) by the bits (a libm call per logit was ~10% of a token):
 * NaN and +inf stay, zeros go to the smallest subnormal, else one ulp up. */
static inline float next_up(float v) {
    if (v != v || v == INFINITY) return v;
    if (v == 0.0f) return 0x1p-149f;
    uint32_t bits;
    memcpy(&bits, &v, 4);
    bits = v > 0.0f ? bits + 1u : bits - 1u;
    memcpy(&v, &bits, 4);
    return v;
}

/* nextafterf(v, -INFINITY) */
static inline float next_down(float v) { return -next_up(-v); }

/* The smallest float >= d. */
static float float_up(double d) {
    float f = (float)d;
    return (double)f < d ? next_up(f) : f;
}

/* ---- the path ----------------------------------------------------------------------- */

/* Section 11's second level (tiles x 2.3 KB; 4.6 MB on stories15M's shape), read once,
 * sequentially, into RAM: read a tile at a time, its scattered small blocks missed the
 * page cache and went to the SD card on a 55 MB board (`invoke bench --storage`). Its
 * page-cache copy is dropped afterwards. NULL (then pread per tile) when the file has no
 * second level, the model is not a mapped file, or memory is short. */
static unsigned char *read_second_level(const Faithful *f, const Model *m) {
    if (f->fd < 0 || !m->classifier_refine || m->classifier_refine_block != f->refine_bytes)
        return NULL;
    size_t want = f->tiles * f->refine_bytes;
    unsigned char *all = malloc(want);
    if (all && model_pread(m, all, want, m->classifier_refine) != 0) {
        free(all);
        return NULL;
    }
    off_t at = (off_t)(m->classifier_refine - (const unsigned char *)m->map);
    if (all) posix_fadvise(f->fd, at, (off_t)want, POSIX_FADV_DONTNEED);
    return all;
}

Faithful *faithful_new(const Model *m, Error *err) {
    const Tensor *q = &m->classifier_q8;
    if (m->cfg.format != FORMAT_PACKED_FAITHFUL || !q->p || !m->classifier_residual_norms) {
        fail(err, "the faithful path needs a faithful file; this one is %s (convert it with "
             "`invoke convert --format faithful`)", format_name(m->cfg.format));
        return NULL;
    }
    Faithful *f = calloc(1, sizeof *f);
    if (!f) {
        fail(err, "out of memory for the faithful sampler");
        return NULL;
    }
    size_t n = (size_t)m->cfg.vocab_size;
    f->b.n = (int)n;
    f->b.lo = malloc(n * sizeof *f->b.lo);
    f->b.hi = malloc(n * sizeof *f->b.hi);
    f->b.exact = calloc(n, 1);
    f->xq = calloc(q->groups * PACK_GROUP, sizeof *f->xq);
    f->xs = calloc(q->groups, sizeof *f->xs);
    f->tiles = q->tiles;
    f->tile_exact = calloc(q->tiles, 1);
    f->tile_refined = calloc(q->tiles, 1);
    /* a tile's block: two fp32 norms per row, then the int4 values (FORMAT.md) */
    f->refine_bytes = 2 * PACK_ROWS * 4 + q->groups * (PACK_ROWS * PACK_GROUP / 2);
    f->refine_buf = malloc(f->refine_bytes);
    f->approx = malloc(n * sizeof *f->approx);
    f->refine = malloc((n + 1) * sizeof *f->refine);
    f->work = faithful_work_new((int)n, PACK_ROWS);
    if (!f->b.lo || !f->b.hi || !f->b.exact || !f->xq || !f->xs || !f->tile_exact ||
        !f->tile_refined || !f->refine_buf || !f->approx || !f->refine || !f->work) {
        faithful_free(f);
        fail(err, "out of memory for the faithful sampler");
        return NULL;
    }
    f->tile_bytes = m->classifier.cols * PACK_ROWS * sizeof(float);
    f->fd = m->map ? m->fd : -1;
    f->buf_tiles = 16;
    f->buf = malloc(f->buf_tiles * f->tile_bytes);
    if (!f->buf) {
        faithful_free(f);
        fail(err, "out of memory for the faithful sampler");
        return NULL;
    }
    /* tiles are read where they lie: no readahead around them (the mapping's own faults
     * follow the mapping's advice, not the file's) */
    if (f->fd >= 0) posix_fadvise(f->fd, 0, 0, POSIX_FADV_RANDOM);
    f->refine_all = read_second_level(f, m);
    f->base_bytes = model_streamed_bytes(m);
    long page = sysconf(_SC_PAGESIZE);
    f->page = page > 0 ? (size_t)page : 4096;
    const char *verify = getenv("LLAMA2_FAITHFUL_VERIFY");
    f->verify = verify && *verify && strcmp(verify, "0") != 0;
    return f;
}

void faithful_free(Faithful *f) {
    if (!f) return;
    free(f->b.lo);
    free(f->b.hi);
    free(f->b.exact);
    free(f->xq);
    free(f->xs);
    free(f->tile_exact);
    free(f->tile_refined);
    free(f->refine_buf);
    free(f->approx);
    free(f->refine_all);
    free(f->refine);
    faithful_work_free(f->work);
    free(f->buf);
    free(f->stats.rows_per_step);
    free(f);
}

void faithful_classify(Faithful *f, const Model *m, const float *x, float *logits) {
    const Tensor *q = &m->classifier_q8;
    const size_t dim = q->cols, n = (size_t)f->b.n;
    f->x = x;
    memset(f->tile_exact, 0, f->tiles);
    memset(f->tile_refined, 0, f->tiles);
    f->refine_ok = 0;
    memset(f->b.exact, 0, n);
    double nx2 = 0.0;
    for (size_t j = 0; j < dim; j++) nx2 += (double)x[j] * (double)x[j];
    if (!isfinite(nx2)) { /* nothing to bound: every logit will be computed */
        for (size_t i = 0; i < n; i++) {
            logits[i] = NAN;
            f->b.lo[i] = -INFINITY;
            f->b.hi[i] = INFINITY;
        }
        return;
    }
    quantize_a16(f->xq, f->xs, x, dim, PACK_GROUP);
    matvec_packed_q8a16(logits, q, f->xq, f->xs);
    double nd2 = 0.0;
    for (size_t j = 0; j < dim; j++) {
        /* exact: x_j and s q_j are within a factor 2 of each other (or q_j = 0) */
        double dj = (double)x[j] - (double)f->xs[j / PACK_GROUP] * (double)f->xq[j];
        nd2 += dj * dj;
    }
    const double grow = 1.0 + ((double)dim + 8.0) * 0x1p-52; /* the double sums, sqrt */
    const double nx = sqrt(nx2) * grow, nd = sqrt(nd2) * grow;
    const double gn = faithful_gamma((double)dim), ga = faithful_gamma((double)q->groups + 3.0);
    const float alpha = float_up(nx * (1.0 + gn));
    const double nq = m->classifier_q8_norm_max;
    const float beta = float_up(nq * (nd + ga * (nx + nd) + gn * nx));
    const float *nr = m->classifier_residual_norms;
    int finite = isfinite(alpha) && isfinite(beta);
    f->alpha = alpha;
    f->row_factor = float_up(nd + gn * nx);   /* faithful_refine_tile's factors */
    f->sum_factor = float_up(ga * (nx + nd));
    f->refine_ok = finite && isfinite(f->row_factor) && isfinite(f->sum_factor) &&
                   m->classifier_refine && m->classifier_refine_block == f->refine_bytes;
    for (size_t i = 0; i < n; i++) {
        /* three roundings of non-negative terms, covered by the factor */
        float e = fmaxf((nr[i] * alpha + beta) * (1.0f + 0x1p-19f), 0x1p-90f);
        float a = logits[i];
        f->approx[i] = a;
        f->b.lo[i] = finite ? next_down(a - e) : -INFINITY;
        f->b.hi[i] = finite ? next_up(a + e) : INFINITY;
    }
}

/* ---- section 11's second level (FORMAT.md) ------------------------------------------- */

/* Tile t's int4 second level: from the copy read at start, else read with pread into
 * f->refine_buf (the page cache keeps it, the resident set does not), else the mapping. */
static const unsigned char *refine_block(Faithful *f, const Model *m, size_t t) {
    if (f->refine_all) return f->refine_all + t * f->refine_bytes;
    const unsigned char *mapped = m->classifier_refine + t * f->refine_bytes;
    if (f->fd < 0) return mapped;
    if (model_pread(m, f->refine_buf, f->refine_bytes, mapped) != 0)
        return mapped; /* the same bytes */
    return f->refine_buf;
}

/* Narrow tile t's inexact rows with the second level (its block: nr2 and nw2 per row,
 * then the int4 values q2). Row i's second-level weights are w'_i = q_i s_i + q2_i s_i / 16
 * and r2_i = w_i - w'_i what is left. The correction c_i = (q2_i s_i / 16) . x^ is computed
 * as the int8 logits are (exact int32 sums of q2 x xq per group, (float)isum exact below
 * 2^24, ((float)isum * s_w) * s_x summed in group order) and divided by 16 (exact, or below
 * 2^-126 where the 2^-90 floor covers it); a2_i = fl(a_i + c_i) with a_i the int8 logit.
 * With the header's argument (|qs|.|x^| <= nq |x^|, |q2 s / 16| = |r - r2| <= nr + nr2,
 * |w| <= nr2 + nw2, fl(z) within u |fl(z)| of z):
 *   |l_i - a2_i| <= nr2_i |x| (1 + g_dim) + nw2_i (|d| + g_dim |x|)
 *                   + g_(groups+3) (nq + nr_i + nr2_i) (|x| + |d|) + u |a2_i|
 * with nr2_i >= |r2_i|_2 and nw2_i >= |w'_i|_2 from the file. The interval is intersected
 * with the first level's (both hold run.c's logit). */
void faithful_refine_tile(Faithful *f, const Model *m, size_t t) {
    f->tile_refined[t] = 1;
    if (!f->refine_ok) return;
    const Tensor *q = &m->classifier_q8;
    const unsigned char *block = refine_block(f, m, t), *q2 = block + 2 * PACK_ROWS * 4;
    const BlockQ8 *blocks = (const BlockQ8 *)(const void *)q->p + t * q->groups;
    float val[PACK_ROWS]; /* the exact int32 sums per group, scaled (kernels.h) */
    refine_q4a16(val, q2, blocks, q->groups, f->xq, f->xs);
    const float *nr = m->classifier_residual_norms, nq = m->classifier_q8_norm_max;
    for (size_t r = 0; r < PACK_ROWS; r++) {
        size_t i = t * PACK_ROWS + r;
        if (i >= (size_t)f->b.n || f->b.exact[i]) continue;
        float nr2, nw2; /* checked finite and >= 0 by the loader */
        memcpy(&nr2, block + 4 * r, 4);
        memcpy(&nw2, block + 4 * (PACK_ROWS + r), 4);
        float a = f->approx[i] + val[r] * 0.0625f;
        /* non-negative terms, at most 9 roundings: covered by the factor (2^-19 = 32 u) */
        float e = ((nr2 * f->alpha + nw2 * f->row_factor) + (nq + nr[i] + nr2) * f->sum_factor +
                   fabsf(a) * 0x1p-24f) * (1.0f + 0x1p-19f);
        e = fmaxf(e, 0x1p-90f);
        if (!isfinite(a) || !isfinite(e)) continue;
        float lo = next_down(a - e), hi = next_up(a + e);
        if (lo > f->b.lo[i]) f->b.lo[i] = lo;
        if (hi < f->b.hi[i]) f->b.hi[i] = hi;
    }
}

/* Tiles [t, t + count) of a packed fp32 tensor of the file: read with pread into f->buf,
 * so the page cache keeps them and the process's resident set does not (a page fault on
 * the mapping may map far more than the page: large folios), or else from the mapping. */
static const unsigned char *read_tiles(Faithful *f, const Model *m, const Tensor *w, size_t t,
                                       size_t count) {
    const unsigned char *mapped = w->p + t * f->tile_bytes;
    if (f->fd < 0 || count > f->buf_tiles) {
        f->touched += count * f->tile_bytes;
        return mapped;
    }
    size_t want = count * f->tile_bytes;
    if (model_pread(m, f->buf, want, mapped) != 0) {
        f->touched += want;
        return mapped; /* the mapping holds the same bytes */
    }
    return f->buf;
}

void faithful_embed(Faithful *f, const Model *m, int token, float *x) {
    const Tensor *e = &m->embedding;
    size_t t = (size_t)token / PACK_ROWS, r = (size_t)token % PACK_ROWS;
    const float *b = (const float *)(const void *)read_tiles(f, m, e, t, 1);
    for (size_t j = 0; j < e->cols; j++) x[j] = b[j * PACK_ROWS + r];
}

/* Drop the fp32 classifier's pages from the mapping (they stay in the page cache): tiles
 * read from it would otherwise pile up in the resident set. */
static void release(Faithful *f, const Model *m) {
    const Tensor *c = &m->classifier;
    uintptr_t start = (uintptr_t)c->p, end = start + c->tiles * f->tile_bytes;
    uintptr_t map = (uintptr_t)m->map, map_end = map + m->map_size;
    start &= ~(uintptr_t)(f->page - 1);
    if (start < map) start = map;
    if (end > map_end) end = map_end;
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
    f->touched = 0;
}

/* Tiles [t, t + count) of the fp32 classifier in run.c's arithmetic. */
static void exact_tiles(Faithful *f, const Model *m, size_t t, size_t count, float *out) {
    const Tensor *c = &m->classifier;
    Tensor v = *c;
    v.tiles = count;
    v.rows = c->rows - t * PACK_ROWS < count * PACK_ROWS ? c->rows - t * PACK_ROWS
                                                         : count * PACK_ROWS;
    v.p = read_tiles(f, m, c, t, count);
    matvec_packed_f32_ref(out, &v, f->x); /* run.c's bits */
    for (size_t r = 0; r < v.rows; r++) {
        size_t i = t * PACK_ROWS + r;
        f->b.lo[i] = f->b.hi[i] = out[r];
        f->b.exact[i] = 1;
    }
    memset(f->tile_exact + t, 1, count);
}

/* Every tile not yet exact, in runs of consecutive tiles. */
static size_t exact_all(Faithful *f, const Model *m, float *scratch) {
    const size_t chunk = f->buf_tiles;
    size_t done = 0;
    for (size_t t = 0; t < f->tiles;) {
        if (f->tile_exact[t]) {
            t++;
            continue;
        }
        size_t e = t;
        while (e < f->tiles && !f->tile_exact[e] && e - t < chunk) e++;
        exact_tiles(f, m, t, e - t, scratch);
        done += e - t;
        if (f->touched >= RELEASE_BYTES) release(f, m);
        t = e;
    }
    return done;
}

/* LLAMA2_FAITHFUL_VERIFY: every logit in run.c's arithmetic (the reference kernel) against
 * its bound (or its recomputed value), and run.c's own sampler against the decision. */
static void verify(Faithful *f, const Model *m, const Sampler *s, float coin, int token) {
    const int n = f->b.n;
    float *exact = malloc((size_t)n * sizeof *exact);
    ProbIndex *pi = malloc((size_t)n * sizeof *pi);
    if (!exact || !pi) {
        free(exact);
        free(pi);
        return;
    }
    matvec_packed_f32_ref(exact, &m->classifier, f->x);
    for (int i = 0; i < n; i++) {
        int ok = f->b.exact[i] ? exact[i] == f->b.lo[i]
                               : f->b.lo[i] <= exact[i] && exact[i] <= f->b.hi[i];
        f->stats.violations += !ok;
    }
    f->stats.mismatches +=
        faithful_exact_sample(exact, n, s->temperature, s->topp, coin, pi) != token;
    free(exact);
    free(pi);
}

static void record(Faithful *f, size_t tiles, size_t refined, int full) {
    FaithfulStats *s = &f->stats;
    if (s->steps == s->capacity) {
        long cap = s->capacity ? 2 * s->capacity : 256;
        int *p = realloc(s->rows_per_step, (size_t)cap * sizeof *p);
        if (p) {
            s->rows_per_step = p;
            s->capacity = cap;
        }
    }
    size_t rows = tiles * PACK_ROWS < (size_t)f->b.n ? tiles * PACK_ROWS : (size_t)f->b.n;
    if (s->steps < s->capacity) s->rows_per_step[s->steps] = (int)rows;
    s->steps++;
    s->by_bounds += tiles == 0;
    s->full += full;
    s->rows += (long)rows;
    s->tiles += (long)tiles;
    s->refined += (long)refined;
    s->bytes += (double)f->base_bytes + (double)tiles * (double)f->tile_bytes +
                (double)refined * (double)f->refine_bytes;
}

/* Before the first decision: narrow every tile holding a row that could come within
 * `margin` of the maximum (the decision would ask for them first, a whole pass each
 * time). Only the work changes, never the token. One pass: narrowing only raises lower
 * ends and lowers upper ends, so no row can join the candidates later. Returns the tiles
 * narrowed. */
static size_t narrow_top(Faithful *f, const Model *m, float margin) {
    const int n = f->b.n;
    size_t narrowed = 0;
    if (!f->refine_ok) return 0;
    if (!(margin >= 0.0f && margin < INFINITY)) margin = 0.0f;
    float maxlo = -INFINITY;
    for (int i = 0; i < n; i++)
        if (f->b.lo[i] > maxlo) maxlo = f->b.lo[i];
    for (int i = 0; i < n; i++) {
        size_t t = (size_t)i / PACK_ROWS;
        if (f->b.hi[i] >= maxlo - margin && !f->tile_refined[t]) {
            faithful_refine_tile(f, m, t);
            narrowed++;
            for (size_t k = t * PACK_ROWS; k < (t + 1) * PACK_ROWS && k < (size_t)n; k++)
                if (f->b.lo[k] > maxlo) maxlo = f->b.lo[k];
        }
    }
    return narrowed;
}

int faithful_sample(Faithful *f, const Model *m, Sampler *s, float *logits) {
    const int n = f->b.n;
    const float coin = s->temperature == 0.0f ? 0.0f : random_f32(&s->rng_state);
    /* refining past 3/4 of the tiles costs about what computing them all does */
    const size_t budget = f->tiles * 3 / 4 + 1;
    /* measured on synth15m at -t 1: two logits' margin (e^-2 of the top x) saves rounds */
    size_t used = 0, refined = narrow_top(f, m, 2.0f * s->temperature);
    int effort = 0, token = -1, full = 0;
    for (;;) {
        int n_refine = 0;
        f->stats.rounds++;
        FaithfulVerdict v = faithful_decide(&f->b, s->temperature, s->topp, coin, effort,
                                            (int)(budget - used), f->work, &token, f->refine,
                                            &n_refine);
        if (v == FAITHFUL_TOKEN) break;
        if (v == FAITHFUL_REFINE) {
            size_t fresh = 0;
            for (int k = 0; k < n_refine; k++) {
                size_t t = (size_t)f->refine[k] / PACK_ROWS;
                if (!f->tile_exact[t]) {
                    f->tile_exact[t] = 2; /* pending */
                    f->refine[fresh++] = (int)t;
                }
            }
            for (size_t k = 0; k < fresh; k++) f->tile_exact[f->refine[k]] = 0;
            /* staged: a tile asked for is first narrowed by the second level (an eighth of
             * its fp32 bytes), and read exact only when asked for again */
            size_t exact = 0, narrowed = 0;
            for (size_t k = 0; k < fresh; k++) {
                size_t t = (size_t)f->refine[k];
                if (f->refine_ok && !f->tile_refined[t]) {
                    faithful_refine_tile(f, m, t);
                    narrowed++;
                } else {
                    f->refine[exact++] = (int)t;
                }
            }
            refined += narrowed;
            if (fresh > 0 && used + exact <= budget) {
                for (size_t k = 0; k < exact; k++)
                    exact_tiles(f, m, (size_t)f->refine[k], 1, logits);
                used += exact;
                effort++;
                continue;
            }
        }
        /* run.c's own sampler on every logit exact */
        used += exact_all(f, m, logits);
        full = 1;
        memcpy(logits, f->b.lo, (size_t)n * sizeof *logits);
        token = faithful_exact_sample(logits, n, s->temperature, s->topp, coin, s->probindex);
        break;
    }
    if (f->verify) verify(f, m, s, coin, token);
    record(f, used, refined, full);
    if (f->touched >= RELEASE_BYTES) release(f, m);
    return token;
}

static int by_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void faithful_print_stats(const Faithful *f, FILE *out, int per_step) {
    const FaithfulStats *s = &f->stats;
    if (s->steps == 0) {
        fprintf(out, "faithful: no sampled positions\n");
        return;
    }
    long kept = s->steps < s->capacity ? s->steps : s->capacity, p99 = 0, max = 0;
    int *sorted = kept ? malloc((size_t)kept * sizeof *sorted) : NULL;
    if (sorted) {
        memcpy(sorted, s->rows_per_step, (size_t)kept * sizeof *sorted);
        qsort(sorted, (size_t)kept, sizeof *sorted, by_int);
        p99 = sorted[(kept * 99 + 99) / 100 - 1];
        max = sorted[kept - 1];
        free(sorted);
    }
    double steps = (double)s->steps;
    fprintf(out,
            "faithful: steps %ld, by bounds alone %.4f, without full fallback %.4f, rows "
            "recomputed per step mean %.2f p99 %ld max %ld, tiles per step %.2f, bytes per "
            "token %.0f, second-level tiles per step %.2f (%zu bytes each), decisions per step "
            "%.2f\n",
            s->steps, (double)s->by_bounds / steps, 1.0 - (double)s->full / steps,
            (double)s->rows / steps, p99, max, (double)s->tiles / steps, s->bytes / steps,
            (double)s->refined / steps, f->refine_bytes, (double)s->rounds / steps);
    if (f->verify)
        fprintf(out, "faithful verify: bound violations %ld, token mismatches %ld\n",
                s->violations, s->mismatches);
    if (per_step) {
        fputs("faithful rows per step:", out);
        for (long i = 0; i < kept; i++) fprintf(out, " %d", s->rows_per_step[i]);
        fputc('\n', out);
    }
}
