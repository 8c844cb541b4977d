/* The faithful path's decision (faithful_decide.h): run.c's token on logit intervals.
 *
 * faithful_decide follows sampler.c step by step, on intervals instead of numbers. Every
 * step is monotone in the logits (dividing by T, subtracting max_val, expf, fp32 sums of
 * non-negative terms, dividing by S), so bounds on the inputs bound every intermediate;
 * a comparison whose two sides' intervals do not overlap has run.c's outcome for every
 * logit vector inside the bounds. When one overlaps, the rows that would separate them are
 * asked for (FAITHFUL_REFINE); when nothing inexact is left, FAITHFUL_EXACT.
 *   - the maximum: every row whose upper bound reaches the largest lower bound is made
 *     exact, so run.c's max_val is known exactly;
 *   - x_i = expf(l_i / T - max): exact rows give run.c's own float (libm's expf); the
 *     others an interval from the vectorised exp_fast (exp_fast.h, within 2^-22 of e^v),
 *     widened to hold libm's expf, assumed within 2^-22 of e^v (glibc and musl: 0.51 ulp);
 *   - the denominator S (run.c's fp32 sum in index order) is bounded twice: by the same
 *     fp32 sum of the lower and of the upper ends (rounding is monotone), and by the
 *     real sum of x plus an a posteriori bound on the fp32 sum's rounding error;
 *   - top-p: run.c keeps p >= cutoff, sorts by p (ties by index) and stops at the first
 *     position L whose cumulative sum exceeds topp; r = coin * cum_L and the token is the
 *     first position i with r < cum_i. With F(m) the sum of the m+1 largest x, every
 *     cum_m = F(m) / S within a relative gamma_(m+2), so comparing r with cum_i is
 *     comparing coin F(L) with F(i): S cancels. S matters only for L (and the cutoff).
 *     The exact rows that surely rank above every inexact row form a certain prefix; the
 *     ranks past it are bounded by the largest lower and upper ends of the other rows.
 *     x values within 2^-20 of each other may round to equal p and swap (run.c breaks p
 *     ties by index): their positions are uncertain and the sums allow for the swap;
 *   - multinomial (topp <= 0 or >= 1): every cdf_i is bounded by the fp32 sums of the
 *     probability bounds and by C_i / S with an a posteriori error bound;
 *   - temperature 0: argmax, first index among equals.
 * Whatever cannot be proved asks for rows: those that could extend the prefix, else the
 * tiles whose intervals widen S the most. */
#include "faithful_decide.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"
#include "kernels.h"
#include "ops.h"

#define U 0x1p-24    /* fp32 unit roundoff */
#define TIE 0x1p-20  /* x values closer than this (relative) may round to equal p */
#define KMAX 64      /* ranks past the certain prefix whose sums are bounded */

double faithful_gamma(double k) {
    double ku = k * U;
    return ku / (1.0 - ku);
}

/* Bounds on run.c's expf(v') from exp_fast(v) (exp_fast.h, vectorised: kernels.h's
 * exp_fast_array), for every v' >= v (lower) or v' <= v (upper). With |exp_fast(v) - e^v|
 * <= EXP_FAST_REL e^v and libm's |expf(y) - e^y| <= 2^-22 e^y for normal results (glibc
 * and musl: 0.51 ulp), expf(v') / exp_fast(v) lies within (1 -+ 2^-22) / (1 +- 2^-22),
 * inside 1 -+ 2^-20.9; one more rounding of the product by 1 -+ 2^-19 keeps it outside.
 * Where e^v may be subnormal (exp_fast(v) < 2^-100, or 0 below EXP_FAST_MIN) expf is only
 * within 2^-149: 0 below, 2^-99 above, as before. Only exact rows call libm's expf. */
_Static_assert(EXP_FAST_REL_BITS >= 22, "the bounds below assume exp_fast within 2^-22 of e^x");
#define EXP_WIDEN 0x1p-19f
static inline float exp_lower_of(float f) {
    /* (+inf past EXP_FAST_MAX, where expf may still be finite: 0) */
    return f >= 0x1p-100f && f < INFINITY ? f * (1.0f - EXP_WIDEN) : 0.0f;
}
static inline float exp_upper_of(float f) {
    return f >= 0x1p-100f ? f * (1.0f + EXP_WIDEN) : 0x1p-99f;
}

/* run.c's logits[q] /= temperature, monotone: the bounds divide too. x / 1.0f is x
 * exactly, so at -t 1 (the contest's) no divide is done per logit. */
static inline float scaled(float logit, float temperature) {
    return temperature == 1.0f ? logit : logit / temperature;
}

struct FaithfulWork {
    int n, tiles, tile_rows;
    int budget;              /* tiles the caller can still recompute (faithful_decide) */
    float *xl, *xh;          /* bounds on run.c's x_i = expf(l_i / T - max) */
    unsigned char *xexact;   /* xl[i] == xh[i] is run.c's x_i */
    int *order;              /* the certain prefix: exact rows, by x descending */
    unsigned char *in_prefix, *sure;
    double *flo, *fhi;       /* bounds on F(m), m < prefix + KMAX */
    double *score;           /* per tile: how much its inexact rows widen S */
    int *tile_order;
};

FaithfulWork *faithful_work_new(int n, int tile_rows) {
    FaithfulWork *w = calloc(1, sizeof *w);
    if (!w || n < 1 || tile_rows < 1) {
        free(w);
        return NULL;
    }
    size_t N = (size_t)n, R = (size_t)tile_rows;
    w->n = n;
    w->tile_rows = tile_rows;
    w->tiles = (int)((N + R - 1) / R);
    w->xl = malloc(N * sizeof *w->xl);
    w->xh = malloc(N * sizeof *w->xh);
    w->xexact = malloc(N);
    w->order = malloc(N * sizeof *w->order);
    w->in_prefix = calloc(N, 1);
    w->sure = malloc(N);
    w->flo = malloc((N + KMAX) * sizeof *w->flo);
    w->fhi = malloc((N + KMAX) * sizeof *w->fhi);
    w->score = malloc((size_t)w->tiles * sizeof *w->score);
    w->tile_order = malloc((size_t)w->tiles * sizeof *w->tile_order);
    if (!w->xl || !w->xh || !w->xexact || !w->order || !w->in_prefix || !w->sure || !w->flo ||
        !w->fhi || !w->score || !w->tile_order) {
        faithful_work_free(w);
        return NULL;
    }
    return w;
}

void faithful_work_free(FaithfulWork *w) {
    if (!w) return;
    free(w->xl);
    free(w->xh);
    free(w->xexact);
    free(w->order);
    free(w->in_prefix);
    free(w->sure);
    free(w->flo);
    free(w->fhi);
    free(w->score);
    free(w->tile_order);
    free(w);
}

/* Sums of the fp32 denominator: run.c's S lies in [s_lo, s_hi] and within es of every
 * real sum of the x_i (sum_l <= sum x_i <= sum_h). */
typedef struct {
    float s_lo, s_hi;
    double sum_l, sum_h, es, eabs; /* eabs: the double sums' own rounding, absolute */
    float xh_in;                   /* the largest upper end of an inexact row (0: none) */
    int inexact;                   /* how many rows are inexact */
} Denominator;

/* The KMAX largest of a stream of values, descending, and their running sums. */
typedef struct {
    double v[KMAX];
    int n;
} TopK;

static void topk_add(TopK *t, double v) {
    if (t->n == KMAX && v <= t->v[KMAX - 1]) return;
    int i = t->n < KMAX ? t->n++ : KMAX - 1;
    while (i > 0 && t->v[i - 1] < v) {
        t->v[i] = t->v[i - 1];
        i--;
    }
    t->v[i] = v;
}

/* Indices by key descending, ties by index ascending: a total order, so the result is
 * qsort's would-be one. Shell sort (gaps 1, 4, 13, ...), taking its keys as an argument:
 * qsort's comparator has no context but a global, and the library keeps none. */
static int key_before(int a, int b, const float *fk, const double *dk) {
    double ka = fk ? (double)fk[a] : dk[a], kb = fk ? (double)fk[b] : dk[b];
    return ka > kb || (ka == kb && a < b);
}

static void sort_desc(int *idx, int k, const float *fk, const double *dk) {
    int gap = 1;
    while (gap < k / 3) gap = 3 * gap + 1;
    for (; gap > 0; gap /= 3)
        for (int i = gap; i < k; i++) {
            int v = idx[i], j = i;
            for (; j >= gap && key_before(v, idx[j - gap], fk, dk); j -= gap) idx[j] = idx[j - gap];
            idx[j] = v;
        }
}

/* a >= b closer than TIE: fl(a / S) and fl(b / S) may be equal for some S. */
static int near(double a, double b) { return a < b * (1.0 + TIE); }

/* The tiles whose inexact rows widen the denominator most, one row of each listed: as
 * many as bring the rest's width below `target` (FAITHFUL_EXACT when that takes more than
 * the budget), or without a target 4 << effort of them. */
static FaithfulVerdict refine_widest(const LogitBounds *b, FaithfulWork *w, int effort,
                                     double target, int *refine, int *n_refine) {
    const int T = w->tiles, R = w->tile_rows;
    int k = 0;
    for (int t = 0; t < T; t++) {
        double score = 0.0;
        for (int i = t * R; i < b->n && i < (t + 1) * R; i++)
            if (!b->exact[i]) score += (double)w->xh[i] - (double)w->xl[i];
        w->score[t] = score;
        if (score > 0.0) w->tile_order[k++] = t;
    }
    if (k == 0) {
        for (int i = 0; i < b->n; i++)
            if (!b->exact[i]) refine[(*n_refine)++] = i;
        return *n_refine ? FAITHFUL_REFINE : FAITHFUL_EXACT;
    }
    sort_desc(w->tile_order, k, NULL, w->score);
    int want = 4 << (effort < 12 ? effort : 12);
    if (target > 0.0) {
        double rest = 0.0;
        for (int j = 0; j < k; j++) rest += w->score[w->tile_order[j]];
        for (want = 0; want < k && rest > target; want++) rest -= w->score[w->tile_order[want]];
        if (want == 0) want = 1;
    }
    if (want > w->budget) {
        if (target > 0.0 || w->budget <= 0) return FAITHFUL_EXACT;
        want = w->budget;
    }
    for (int j = 0; j < k && j < want; j++) refine[(*n_refine)++] = w->tile_order[j] * R;
    return FAITHFUL_REFINE;
}

/* ---- temperature 0: sample_argmax ---------------------------------------------------- */

static FaithfulVerdict decide_greedy(const LogitBounds *b, int *token, int *refine,
                                     int *n_refine) {
    float maxlo = b->lo[0];
    for (int i = 1; i < b->n; i++)
        if (b->lo[i] > maxlo) maxlo = b->lo[i];
    int candidates = 0, only = -1;
    for (int i = 0; i < b->n; i++)
        if (b->hi[i] >= maxlo) candidates++, only = i;
    if (candidates == 1) { /* every other row lies surely below it */
        *token = only;
        return FAITHFUL_TOKEN;
    }
    for (int i = 0; i < b->n; i++)
        if (!b->exact[i] && b->hi[i] >= maxlo) refine[(*n_refine)++] = i;
    if (*n_refine) return FAITHFUL_REFINE;
    /* every row that could reach the maximum is exact: sample_argmax among them */
    int best = -1;
    for (int i = 0; i < b->n; i++)
        if (b->exact[i] && (best < 0 || b->lo[i] > b->lo[best])) best = i;
    *token = best;
    return FAITHFUL_TOKEN;
}

/* ---- sample_mult: the first i with coin < cdf_i, else n - 1 -------------------------- */

static FaithfulVerdict decide_mult(const LogitBounds *b, FaithfulWork *w, const Denominator *d,
                                   float coin, int effort, int *token, int *refine,
                                   int *n_refine) {
    const int n = b->n;
    /* run.c's p_i = fl(x_i / S) is monotone in x_i and in S */
    float s_up = d->s_hi, s_dn = d->s_lo;
    float cf_lo = 0.0f, cf_hi = 0.0f;
    double c_l = 0.0, c_h = 0.0, ec = 0.0, es = d->es + d->eabs;
    const double rel = (double)n * 0x1p-50 + 0x1p-45; /* the double sums and quotient */
    for (int i = 0; i < n; i++) {
        float pl = w->xl[i] / s_up, ph = w->xh[i] / s_dn;
        cf_lo += pl;
        cf_hi += ph;
        c_l += w->xl[i];
        c_h += w->xh[i];
        /* the cdf's distance from C_i / S: each p_i's division, each addition */
        ec += fmin((double)ph, U * (double)cf_hi + 0x1p-150) + 0x1p-23 * (double)ph + 0x1p-149;
        if (!(coin < cf_hi)) continue; /* the cheap test first: surely cdf_i <= coin */
        /* with S = C_i + R_i +- es: C / (C + a) rises with C when a > 0, falls with a */
        double r_h = d->sum_h - c_h + d->eabs, r_l = d->sum_l - c_l - d->eabs;
        double hi = cf_hi, lo = cf_lo;
        if (r_l - es > 0.0) hi = fmin(hi, c_h / (c_h + r_l - es) * (1.0 + rel) + ec);
        lo = fmax(lo, c_l / (c_l + r_h + es) * (1.0 - rel) - ec);
        if (!((double)coin < hi)) continue;
        if ((double)coin < lo) {
            *token = i; /* every earlier cdf is surely <= coin, this one surely above */
            return FAITHFUL_TOKEN;
        }
        /* the rows' intervals must shrink below the coin's distance from the cdf's middle */
        double s_mid = 0.5 * ((double)d->s_lo + (double)d->s_hi);
        double target = 0.9 * fabs((double)coin - 0.5 * (lo + hi)) * s_mid;
        if (target <= 0.0) return FAITHFUL_EXACT;
        return refine_widest(b, w, effort, target, refine, n_refine);
    }
    *token = n - 1; /* coin >= every cdf: run.c's fall-through */
    return FAITHFUL_TOKEN;
}

/* ---- sample_topp ---------------------------------------------------------------------- */

/* What the bounds know of run.c's sorted order. Positions 0..J-1 (the certain prefix) hold
 * the exact rows w->order[0..J), in run.c's order; a position m in J..M-1 holds an unknown
 * row whose x lies between low.v[m - J] and up.v[m - J] (the rows outside the prefix, by
 * lower and by upper end). w->flo[m] <= F(m) <= w->fhi[m] for every m < M. */
typedef struct {
    int J, M;
    TopK up, low;         /* the rows outside the prefix: their largest upper / lower ends */
    double sum_u, sum_lw; /* ... and the sums of all their upper / lower ends */
    double fj;            /* F(J - 1): the prefix's sum */
    double es, eabs;      /* the denominator's error bounds, Denominator's es + eabs, eabs */
} Ranking;

/* cum_m = F(m) / S within this relative error: the fp32 sum of m+1 quotients, TIE swaps,
 * the double sums of F. */
static double cum_gamma(int m) {
    return faithful_gamma((double)m + 2.0) + 2.0 * TIE + ((double)m + 2.0) * 0x1p-50;
}

/* S cum_m, run.c's fp32 cumulative sum at m times S, lies in [cum_lo(m), cum_hi(m)]. */
static double cum_lo(const FaithfulWork *w, int m) {
    return w->flo[m] * (1.0 - cum_gamma(m)) * (1.0 - 0x1p-45);
}

static double cum_hi(const FaithfulWork *w, int m) {
    return w->fhi[m] * (1.0 + cum_gamma(m)) * (1.0 + 0x1p-45);
}

/* The certain prefix: the exact rows whose x is above every inexact row's upper
 * end by more than TIE (so their p cannot tie one), sorted as run.c sorts. Returns J, or
 * -1 when no row is inexact. */
static int certain_prefix(FaithfulWork *w, const Denominator *d, int n) {
    if (d->inexact == 0) return -1;
    const float xh_in = d->xh_in; /* exp_bounds' maximum over the inexact rows */
    double thr = (double)xh_in * (1.0 + TIE);
    int J = 0;
    for (int i = 0; i < n; i++)
        if (w->xexact[i] && (double)w->xl[i] >= thr) w->order[J++] = i;
    sort_desc(w->order, J, w->xl, NULL);
    return J;
}

/* The rows outside the prefix: the KMAX largest lower and upper ends, and the totals.
 * topk_add's own early-out (full and v <= its smallest) is tested here first against a
 * local threshold, -inf until KMAX values are kept, then the smallest kept: the same calls
 * do the same, and the row loop keeps its state in registers. */
static void rank_rest(FaithfulWork *w, int n, Ranking *r) {
    const float *xh = w->xh, *xl = w->xl;
    unsigned char *in_prefix = w->in_prefix;
    for (int j = 0; j < r->J; j++) in_prefix[w->order[j]] = 1;
    double tu = r->up.n == KMAX ? r->up.v[KMAX - 1] : -INFINITY;
    double tl = r->low.n == KMAX ? r->low.v[KMAX - 1] : -INFINITY;
    double sum_u = r->sum_u, sum_lw = r->sum_lw;
    for (int i = 0; i < n; i++) {
        if (in_prefix[i]) continue;
        const double u = xh[i], l = xl[i];
        if (!(u <= tu)) {
            topk_add(&r->up, u);
            if (r->up.n == KMAX) tu = r->up.v[KMAX - 1];
        }
        if (!(l <= tl)) {
            topk_add(&r->low, l);
            if (r->low.n == KMAX) tl = r->low.v[KMAX - 1];
        }
        sum_u += u;
        sum_lw += l;
    }
    r->sum_u = sum_u;
    r->sum_lw = sum_lw;
    for (int j = 0; j < r->J; j++) in_prefix[w->order[j]] = 0;
}

/* The prefix's positions whose row is certain: not within TIE of a neighbour
 * (their p could round equal and run.c's index order swap them), unless the neighbours
 * are exactly equal (then run.c orders them by index, as the sort did). */
static void mark_sure(FaithfulWork *w, const Ranking *r) {
    const float *xl = w->xl;
    const int J = r->J;
    for (int j = 0; j < J;) {
        int e = j;
        while (e + 1 < J && near(xl[w->order[e]], xl[w->order[e + 1]])) e++;
        int outside = e == J - 1 && r->up.n > 0 && near(xl[w->order[e]], r->up.v[0]);
        int equal = 1;
        for (int k = j; k < e; k++) equal &= xl[w->order[k]] == xl[w->order[k + 1]];
        for (int k = j; k <= e; k++) w->sure[k] = !outside && equal;
        j = e + 1;
    }
}

/* F(m): exact below J; past it, F(J-1) plus the largest lower / upper ends. */
static void bound_partial_sums(FaithfulWork *w, Ranking *r) {
    double f = 0.0;
    for (int j = 0; j < r->J; j++) {
        f += w->xl[w->order[j]];
        w->flo[j] = w->fhi[j] = f;
    }
    r->fj = f;
    r->M = r->J + r->up.n;
    double gl = 0.0, gh = 0.0;
    for (int k = 0; k < r->up.n; k++) {
        gl += r->low.v[k];
        gh += r->up.v[k];
        w->flo[r->J + k] = r->fj + gl;
        w->fhi[r->J + k] = r->fj + gh;
    }
}

/* The nucleus's end: L, the first m with cum_m > topp, lies in [*L1, *L2]: L1 the
 * first m whose cum_m may exceed topp, L2 the first whose cum_m surely does (-1: none). */
static void locate_end(const FaithfulWork *w, const Ranking *r, const Denominator *d,
                       float topp, int *L1, int *L2) {
    const int J = r->J;
    const double fj = r->fj, eabs = r->eabs, es = r->es;
    *L1 = *L2 = -1;
    for (int m = 0; m < r->M; m++) {
        double g = cum_gamma(m), fl = w->flo[m], fh = w->fhi[m];
        double rl, rh; /* the rest of the sum: rows ranked after m */
        if (m < J) {
            rl = fj - fl + r->sum_lw - eabs;
            rh = fj - fh + r->sum_u + eabs;
        } else {
            rl = r->sum_lw - (fl - fj) - eabs;
            rh = r->sum_u - (fh - fj) + eabs;
        }
        if (rl < 0.0) rl = 0.0;
        double lower = fmax(fl / d->s_hi, fl / (fl + rh + es)) * (1.0 - g) * (1.0 - 0x1p-45);
        double upper = fh / d->s_lo;
        if (rl - es > 0.0) upper = fmin(upper, fh / (fh + rl - es)); /* rises with F */
        upper *= (1.0 + g) * (1.0 + 0x1p-45);
        if (*L1 < 0 && upper > (double)topp) *L1 = m;
        if (lower > (double)topp) {
            *L2 = m;
            return;
        }
    }
}

/* No end is certain: rank deeper (*need = M-1) when the ranks bounded past the
 * prefix are the wider interval, else leave *need and narrow the denominator (the rows
 * ranked past them). FAITHFUL_EXACT when every row is ranked already. */
static FaithfulVerdict no_end_in_sight(const FaithfulWork *w, const Ranking *r, int *need) {
    if (r->up.n < KMAX) return FAITHFUL_EXACT; /* every row ranked, still no certain end */
    int m = r->M - 1;
    double gw = w->fhi[m] - w->flo[m];
    double tw = (r->sum_u - (w->fhi[m] - r->fj)) - (r->sum_lw - (w->flo[m] - r->fj)) + 2.0 * r->es;
    if (gw >= tw) *need = m;
    return FAITHFUL_REFINE;
}

/* Every position up to L2 passed run.c's cutoff (p >= cutoff), its x being at
 * least L2's lower end. */
static int passes_cutoff(const FaithfulWork *w, const Ranking *r, const Denominator *d, int L2,
                         float cutoff) {
    double y = L2 < r->J ? w->xl[w->order[L2]] : r->low.v[L2 - r->J];
    double s_max = fmin((double)d->s_hi, d->sum_h + r->es);
    return y / (1.0 + TIE) / s_max * (1.0 - 0x1p-23) >= (double)cutoff;
}

/* The coin: for every possible end L in [L1, L2], r = fl(coin cum_L) against the
 * cum_i, S-free: coin F(L) against F(i). The token when every L gives the same certain
 * position; else FAITHFUL_REFINE with *need the deepest position whose row must become
 * certain (the ranks past the prefix are intervals) and *widen set when the denominator's
 * intervals (which L) are in the way; FAITHFUL_EXACT for rounding-level ties, which only
 * all exact logits decide. */
static FaithfulVerdict place_coin(const FaithfulWork *w, const Ranking *r, float coin, int L1,
                                  int L2, int *token, int *need, int *widen) {
    const int J = r->J;
    int undecided = 0, tok = -1;
    for (int L = L1; L <= L2; L++) {
        double g = cum_gamma(L);
        double r_lo = (double)coin * w->flo[L] * (1.0 - g) * (1.0 - 0x1p-23) * (1.0 - 0x1p-45);
        double r_hi = (double)coin * w->fhi[L] * (1.0 + g) * (1.0 + 0x1p-23) * (1.0 + 0x1p-45);
        int i = 0;
        while (i <= L && r_lo >= cum_hi(w, i)) i++; /* surely r >= cum_i: not there */
        if (i > L) return FAITHFUL_EXACT;          /* r < cum_L always: cannot happen */
        if (i >= J) {
            /* the crossing lies past the prefix: rank everything up to where it surely is */
            int last = i;
            while (last + 1 < r->M && !(r_hi < cum_lo(w, last))) last++;
            if (last > *need) *need = last;
            undecided = 1;
            continue;
        }
        if (!(r_hi < cum_lo(w, i))) {
            if (L < J) return FAITHFUL_EXACT; /* every sum exact: a rounding-level tie */
            if (L > *need) *need = L;         /* F(L) is an interval: rank up to L */
            undecided = 1;
            continue;
        }
        if (!w->sure[i]) return FAITHFUL_EXACT; /* p may tie its neighbour's */
        if (tok >= 0 && tok != w->order[i]) undecided = *widen = 1; /* L itself is unsure */
        tok = w->order[i];
    }
    if (undecided) return FAITHFUL_REFINE;
    *token = tok;
    return FAITHFUL_TOKEN;
}

/* Every F exact but L unsure: the width below which S must narrow, from the
 * closest cum_m's distance from topp (<= 0: only all exact logits decide). */
static double denominator_target(const FaithfulWork *w, const Denominator *d, float topp,
                                 int L1, int L2) {
    double s_mid = 0.5 * ((double)d->s_lo + (double)d->s_hi), gap = INFINITY;
    for (int m = L1; m < L2; m++) gap = fmin(gap, fabs(w->flo[m] - (double)topp * s_mid));
    return 0.9 * gap / (double)topp - s_mid * cum_gamma(L2);
}

/* The rows that could rank anywhere in J..need: upper end reaching the lower end
 * of whatever surely ranks at `need`. Returns how many were listed. */
static int list_contenders(const LogitBounds *b, const FaithfulWork *w, const Ranking *r,
                           int need, int *refine, int *n_refine) {
    if (need < r->J || !(r->low.v[need - r->J] > 0.0)) return 0;
    double floor = r->low.v[need - r->J];
    for (int i = 0; i < b->n; i++)
        if (!b->exact[i] && (double)w->xh[i] * (1.0 + 2.0 * TIE) >= floor)
            refine[(*n_refine)++] = i;
    return *n_refine;
}

static FaithfulVerdict decide_topp(const LogitBounds *b, FaithfulWork *w, const Denominator *d,
                                   float topp, float coin, int effort, int *token, int *refine,
                                   int *n_refine) {
    const int n = b->n;
    const float cutoff = (1.0f - topp) / (float)(n - 1);
    Ranking r = {.es = d->es + d->eabs, .eabs = d->eabs};
    /* 1. what is known of run.c's sorted order: the certain prefix, then bounded ranks */
    r.J = certain_prefix(w, d, n);
    if (r.J < 0) return FAITHFUL_EXACT; /* nothing inexact: run.c's sampler is as cheap */
    rank_rest(w, n, &r);
    mark_sure(w, &r);
    /* 2. bounds on the partial sums F(m), then on where the nucleus ends */
    bound_partial_sums(w, &r);
    int L1, L2;
    locate_end(w, &r, d, topp, &L1, &L2);

    /* 3. the token, if every possible end gives the same one; else what to refine */
    int need = -1;       /* rows must become certain up to this position */
    double target = 0.0; /* the denominator's width that would settle L (0: by effort) */
    if (L2 < 0) {
        if (no_end_in_sight(w, &r, &need) == FAITHFUL_EXACT) return FAITHFUL_EXACT;
    } else {
        if (!passes_cutoff(w, &r, d, L2, cutoff)) return FAITHFUL_EXACT;
        int widen = 0;
        FaithfulVerdict v = place_coin(w, &r, coin, L1, L2, token, &need, &widen);
        if (v != FAITHFUL_REFINE) return v;
        if (widen && L2 >= r.J && L2 > need) need = L2;
        if (widen && need < r.J) {
            target = denominator_target(w, d, topp, L1, L2);
            if (target <= 0.0) return FAITHFUL_EXACT;
        }
    }
    /* 4. the request: the rows that could rank up to `need`, else the widest tiles */
    if (list_contenders(b, w, &r, need, refine, n_refine)) return FAITHFUL_REFINE;
    return refine_widest(b, w, effort, target, refine, n_refine);
}

/* ---- the steps shared by multinomial and top-p: max_val, x_i, S ---------------------- */

/* Every bound finite and ordered: else nothing can be proved. */
static int bounds_usable(const LogitBounds *b) {
    for (int i = 0; i < b->n; i++)
        if (!(isfinite(b->lo[i]) && isfinite(b->hi[i]) && b->lo[i] <= b->hi[i])) return 0;
    return 1;
}

/* The largest scaled lower end into *maxlo; 0 when a scaled end is not finite. */
static int scaled_max_lower(const LogitBounds *b, float T, float *maxlo) {
    *maxlo = -INFINITY;
    if (T == 1.0f) { /* nothing scaled: bounds_usable saw every end finite */
        float m = -INFINITY;
        for (int i = 0; i < b->n; i++)
            if (b->lo[i] > m) m = b->lo[i];
        *maxlo = m;
        return 1;
    }
    for (int i = 0; i < b->n; i++) {
        float a = scaled(b->lo[i], T), c = scaled(b->hi[i], T);
        if (!isfinite(a) || !isfinite(c)) return 0;
        if (a > *maxlo) *maxlo = a;
    }
    return 1;
}

/* The row holding run.c's max_val: the one row surely above all others (its x is expf(0)
 * = 1 whatever its logit), or else the largest of the rows that could hold it, all
 * exact. -1 after listing in refine[] the inexact rows that could hold it. */
static int max_row(const LogitBounds *b, float T, float maxlo, int *refine, int *n_refine) {
    int candidates = 0, top = -1;
    for (int i = 0; i < b->n; i++)
        if (scaled(b->hi[i], T) >= maxlo) candidates++, top = i;
    if (candidates > 1) {
        for (int i = 0; i < b->n; i++)
            if (!b->exact[i] && scaled(b->hi[i], T) >= maxlo) refine[(*n_refine)++] = i;
        if (*n_refine) return -1;
        for (int i = 0; i < b->n; i++)
            if (b->exact[i] && (top < 0 || scaled(b->lo[i], T) > scaled(b->lo[top], T))) top = i;
    }
    return top;
}

/* exp_bounds' running sums, in index order. */
typedef struct {
    float s_lo, s_hi, xh_in;
    double es, sum_l, sum_h;
    size_t inexact;
} ExpSums;

static inline void exp_sum(ExpSums *a, float lo, float hi, int inexact) {
    a->s_lo += lo;
    a->s_hi += hi;
    /* one addition's error: at most the addend, at most u |result| (+ underflow) */
    a->es += fmin((double)hi, U * (double)a->s_hi + 0x1p-150);
    a->sum_l += lo;
    a->sum_h += hi;
    a->inexact += (size_t)inexact;
    a->xh_in = inexact && hi > a->xh_in ? hi : a->xh_in;
}

/* Row i (not the top): xl[i], xh[i] hold exp_fast's values on entry, x's bounds on exit. */
static inline void exp_row(ExpSums *a, float *restrict xl, float *restrict xh,
                           unsigned char *restrict xe, const float *restrict bl,
                           const unsigned char *restrict be, int m_exact, float T, float m_lo,
                           size_t i) {
    float lo, hi;
    const int point = m_exact && be[i];
    if (point) {
        lo = hi = expf(scaled(bl[i], T) - m_lo); /* run.c's own float */
    } else {
        lo = exp_lower_of(xl[i]);
        hi = exp_upper_of(xh[i]);
    }
    xe[i] = (unsigned char)point;
    xl[i] = lo;
    xh[i] = hi;
    exp_sum(a, lo, hi, !point);
}

/* x_i = expf(x_i - max_val) into w->xl, w->xh (w->xexact: a point, run.c's own float), and
 * the denominator's bounds. The arguments of the bounds' exponentials first (fl(a - b): up
 * in a, down in b), every row's at once through exp_fast_array (vectorised), then libm's
 * expf for the exact rows alone. */
static Denominator exp_bounds(const LogitBounds *b, FaithfulWork *w, float T, int top) {
    const float m_lo = scaled(b->lo[top], T), m_hi = scaled(b->hi[top], T); /* equal when exact */
    const int m_exact = b->exact[top];
    const size_t n = (size_t)b->n;
    const float *restrict bl = b->lo, *restrict bh = b->hi;
    const unsigned char *restrict be = b->exact;
    float *restrict xl = w->xl, *restrict xh = w->xh;
    unsigned char *restrict xe = w->xexact;
    for (size_t i = 0; i < n; i++) {
        xh[i] = scaled(bh[i], T) - m_lo;
        xl[i] = scaled(bl[i], T) - m_hi;
    }
    exp_fast_array(xh, xh, n);
    exp_fast_array(xl, xl, n);
    /* one pass in index order (run.c's sum order): each row's x (run.c's own float from
     * libm's expf for a point, else bounds from exp_fast; expf(max_val - max_val) = 1 at
     * the top), the sums, and the largest upper end of an inexact row and how many there
     * are, for certain_prefix. Exact rows are points when max_val is exact too. */
    Denominator d = {0.0f, 0.0f, 0.0, 0.0, 0.0, 0.0, 0.0f, 0};
    ExpSums a = {0.0f, 0.0f, 0.0f, 0.0, 0.0, 0.0, 0};
    const size_t t = (size_t)top;
    for (size_t i = 0; i < t; i++) exp_row(&a, xl, xh, xe, bl, be, m_exact, T, m_lo, i);
    xe[t] = 1;
    xl[t] = xh[t] = 1.0f;
    exp_sum(&a, 1.0f, 1.0f, 0);
    for (size_t i = t + 1; i < n; i++) exp_row(&a, xl, xh, xe, bl, be, m_exact, T, m_lo, i);
    const float s_lo = a.s_lo, s_hi = a.s_hi, xh_in = a.xh_in;
    const double es = a.es, sum_l = a.sum_l, sum_h = a.sum_h;
    const size_t inexact = a.inexact;
    d.xh_in = xh_in;
    d.inexact = (int)inexact;
    d.s_lo = s_lo;
    d.s_hi = s_hi;
    d.es = es;
    d.sum_l = sum_l;
    d.sum_h = sum_h;
    /* double sums of n non-negative terms: relative error below n 2^-53 */
    d.eabs = (double)b->n * 0x1p-50 * d.sum_h;
    return d;
}

/* At T = 1 (the contest's) bounds_usable, scaled_max_lower and max_row in one pass: the
 * rows that could hold max_val are those whose upper end reaches the largest lower end;
 * when the second largest upper end falls short of it, the only one is the largest's
 * (max_row's own answer), else max_row's loops as they were. */
static int scan_t1(const LogitBounds *b, int *usable, float *maxlo) {
    const float *restrict lo = b->lo, *restrict hi = b->hi;
    float m = -INFINITY, h1 = -INFINITY, h2 = -INFINITY;
    int ok = 1, i1 = -1;
    for (int i = 0; i < b->n; i++) {
        const float l = lo[i], h = hi[i];
        /* finite and ordered: -FLT_MAX <= l <= h <= FLT_MAX (false for NaN) */
        ok &= (l >= -FLT_MAX) & (h <= FLT_MAX) & (l <= h);
        m = l > m ? l : m;
        if (h > h1) {
            h2 = h1;
            h1 = h;
            i1 = i;
        } else if (h > h2) {
            h2 = h;
        }
    }
    *usable = ok;
    *maxlo = m;
    return h2 >= m ? -1 : i1;
}

/* From run.c's max_val on: the rows' x and the denominator, then the draw. */
static FaithfulVerdict faithful_decide_from(const LogitBounds *b, float temperature, float topp,
                                            float coin, int effort, FaithfulWork *w, int top,
                                            int *token, int *refine, int *n_refine) {
    if (top < 0) return FAITHFUL_REFINE;
    /* the softmax's numerators and denominator, then the draw */
    Denominator d = exp_bounds(b, w, temperature, top);
    FaithfulVerdict v = !(topp > 0.0f && topp < 1.0f)
                            ? decide_mult(b, w, &d, coin, effort, token, refine, n_refine)
                            : decide_topp(b, w, &d, topp, coin, effort, token, refine, n_refine);
    /* an inexact maximum widens every row's x: make it exact with whatever else is asked */
    if (v == FAITHFUL_REFINE && !b->exact[top]) refine[(*n_refine)++] = top;
    return v;
}

FaithfulVerdict faithful_decide(const LogitBounds *b, float temperature, float topp, float coin,
                                int effort, int budget, FaithfulWork *w, int *token,
                                int *refine, int *n_refine) {
    *n_refine = 0;
    if (b->n < 2 || b->n != w->n) return FAITHFUL_EXACT;
    w->budget = budget;
    if (temperature == 1.0f) {
        int usable;
        float maxlo;
        int top = scan_t1(b, &usable, &maxlo);
        if (!usable || isnan(topp)) return FAITHFUL_EXACT;
        if (top < 0) top = max_row(b, temperature, maxlo, refine, n_refine);
        if (top < 0) return FAITHFUL_REFINE;
        return faithful_decide_from(b, temperature, topp, coin, effort, w, top, token, refine,
                                    n_refine);
    }
    if (!bounds_usable(b)) return FAITHFUL_EXACT;
    if (temperature == 0.0f) return decide_greedy(b, token, refine, n_refine);
    if (!(temperature > 0.0f && isfinite(temperature)) || isnan(topp)) return FAITHFUL_EXACT;

    /* run.c's max_val, known exactly */
    float maxlo;
    if (!scaled_max_lower(b, temperature, &maxlo)) return FAITHFUL_EXACT;
    int top = max_row(b, temperature, maxlo, refine, n_refine);
    return faithful_decide_from(b, temperature, topp, coin, effort, w, top, token, refine,
                                n_refine);
}


int faithful_exact_sample(float *logits, int n, float temperature, float topp, float coin,
                          ProbIndex *probindex) {
    if (temperature == 0.0f) return sample_argmax(logits, n);
    sampler_scale(logits, n, temperature);
    softmax(logits, n);
    if (topp <= 0 || topp >= 1) return sample_mult(logits, n, coin);
    return sample_topp(logits, n, topp, probindex, coin);
}
