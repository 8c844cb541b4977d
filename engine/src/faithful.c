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
 * 2. The decision (faithful_decide) follows sampler.c step by step on intervals:
 *    - the maximum: every row whose upper bound reaches the largest lower bound is made
 *      exact, so run.c's max_val is known exactly;
 *    - x_i = expf(l_i / T - max): exact rows give run.c's own float; the others an
 *      interval, assuming libm's expf is within 2^-22 of e^v (glibc and musl: 0.51 ulp);
 *    - the denominator S (run.c's fp32 sum in index order) is bounded twice: by the same
 *      fp32 sum of the lower and of the upper ends (rounding is monotone), and by the
 *      real sum of x plus an a posteriori bound on the fp32 sum's rounding error;
 *    - top-p: run.c keeps p >= cutoff, sorts by p (ties by index) and stops at the first
 *      position L whose cumulative sum exceeds topp; r = coin * cum_L and the token is the
 *      first position i with r < cum_i. With F(m) the sum of the m+1 largest x, every
 *      cum_m = F(m) / S within a relative gamma_(m+2), so comparing r with cum_i is
 *      comparing coin F(L) with F(i): S cancels. S matters only for L (and the cutoff).
 *      The exact rows that surely rank above every inexact row form a certain prefix; the
 *      ranks past it are bounded by the largest lower and upper ends of the other rows.
 *      x values within 2^-20 of each other may round to equal p and swap (run.c breaks p
 *      ties by index): their positions are uncertain and the sums allow for the swap;
 *    - multinomial (topp <= 0 or >= 1): every cdf_i is bounded by the fp32 sums of the
 *      probability bounds and by C_i / S with an a posteriori error bound;
 *    - temperature 0: argmax, first index among equals.
 *    Whatever cannot be proved asks for rows (FAITHFUL_REFINE): those that could extend
 *    the prefix, else the tiles whose intervals widen S the most; when nothing inexact is
 *    left to refine, FAITHFUL_EXACT: run.c's own sampler on the exact logits.
 * 3. faithful_sample drives it: exact rows come from the fp32 classifier's tiles
 *    (matvec_packed_f32 unfused: run.c's sum bit for bit); past a budget of tiles every
 *    logit is computed. */
#define _DEFAULT_SOURCE /* madvise */
#include "faithful.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"
#include "ops.h"

#if FLT_EVAL_METHOD != 0
#error "faithful.c reproduces run.c's float arithmetic: it needs FLT_EVAL_METHOD == 0"
#endif

#define U 0x1p-24         /* fp32 unit roundoff */
#define TIE 0x1p-20       /* x values closer than this (relative) may round to equal p */
#define TAU (-20.0f)      /* below e^TAU an inexact row's x is bounded by a power of 2 */
#define KMAX 64           /* ranks past the certain prefix whose sums are bounded */
#define RELEASE_BYTES ((size_t)4 << 20) /* fp32 classifier pages kept mapped, at most */

static double gam(double k) {
    double ku = k * U;
    return ku / (1.0 - ku);
}

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

/* Lower (upper) bounds on expf(v') for every v' >= v (<= v), assuming |expf(y) - e^y| <=
 * 2^-22 e^y for normal results and <= 2^-149 below them. */
static float exp_lower(float v) {
    float f = expf(v);
    return f >= 0x1p-100f ? f * (1.0f - 0x1p-20f) : 0.0f;
}

static float exp_upper(float v) {
    float f = expf(v);
    return f >= 0x1p-100f ? f * (1.0f + 0x1p-20f) : 0x1p-99f;
}

/* A cheap upper bound on expf(v') for every v' <= v < TAU: a power of two at most 4 times
 * e^v. v log2(e) is rounded by at most 2^-18 here, and expf's error is far below 2x. */
static float exp_upper_cheap(float v) {
    float k = floorf(v * 1.44269504f) + 2.0f;
    if (k < -126.0f) return 0x1p-99f;
    uint32_t bits = (uint32_t)((int)k + 127) << 23; /* 2^k: -126 <= k < -25 here */
    float p;
    memcpy(&p, &bits, 4);
    return p;
}

/* ---- the decision ------------------------------------------------------------------- */

struct FaithfulWork {
    int n, tiles;
    int budget;              /* tiles the caller can still recompute (faithful_decide) */
    float *xl, *xh;          /* bounds on run.c's x_i = expf(l_i / T - max) */
    unsigned char *xexact;   /* xl[i] == xh[i] is run.c's x_i */
    int *order;              /* the certain prefix: exact rows, by x descending */
    unsigned char *in_prefix, *sure;
    double *flo, *fhi;       /* bounds on F(m), m < prefix + KMAX */
    double *score;           /* per tile: how much its inexact rows widen S */
    int *tile_order;
};

FaithfulWork *faithful_work_new(int n) {
    FaithfulWork *w = calloc(1, sizeof *w);
    if (!w || n < 1) {
        free(w);
        return NULL;
    }
    size_t N = (size_t)n;
    w->n = n;
    w->tiles = (int)((N + PACK_ROWS - 1) / PACK_ROWS);
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
    int T = w->tiles, k = 0;
    for (int t = 0; t < T; t++) w->score[t] = 0.0;
    for (int i = 0; i < b->n; i++)
        if (!b->exact[i]) w->score[i / PACK_ROWS] += (double)w->xh[i] - (double)w->xl[i];
    for (int t = 0; t < T; t++)
        if (w->score[t] > 0.0) w->tile_order[k++] = t;
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
    for (int j = 0; j < k && j < want; j++) refine[(*n_refine)++] = w->tile_order[j] * PACK_ROWS;
    return FAITHFUL_REFINE;
}

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

/* sample_mult: the first i with coin < cdf_i, else n - 1. */
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

/* sample_topp. */
static FaithfulVerdict decide_topp(const LogitBounds *b, FaithfulWork *w, const Denominator *d,
                                   float topp, float coin, int effort, int *token, int *refine,
                                   int *n_refine) {
    const int n = b->n;
    const float cutoff = (1.0f - topp) / (float)(n - 1);
    const float *xl = w->xl, *xh = w->xh;
    float xh_in = 0.0f;
    int inexact = 0;
    for (int i = 0; i < n; i++)
        if (!w->xexact[i]) {
            inexact++;
            if (xh[i] > xh_in) xh_in = xh[i];
        }
    if (inexact == 0) return FAITHFUL_EXACT; /* run.c's sampler itself is as cheap */

    /* the certain prefix: exact rows above every inexact row's upper end, with margin */
    double thr = (double)xh_in * (1.0 + TIE);
    int J = 0;
    for (int i = 0; i < n; i++)
        if (w->xexact[i] && (double)xl[i] >= thr) w->order[J++] = i;
    sort_desc(w->order, J, xl, NULL);
    for (int j = 0; j < J; j++) w->in_prefix[w->order[j]] = 1;

    /* the other rows: the KMAX largest lower and upper ends, and the totals */
    TopK up = {.n = 0}, low = {.n = 0};
    double sum_u = 0.0, sum_lw = 0.0;
    for (int i = 0; i < n; i++) {
        if (w->in_prefix[i]) continue;
        topk_add(&up, xh[i]);
        topk_add(&low, xl[i]);
        sum_u += xh[i];
        sum_lw += xl[i];
    }
    for (int j = 0; j < J; j++) w->in_prefix[w->order[j]] = 0;

    /* positions whose row is certain: not within TIE of a neighbour, unless the
     * neighbours are exactly equal (then run.c orders them by index, as the sort did) */
    for (int j = 0; j < J;) {
        int e = j;
        while (e + 1 < J && near(xl[w->order[e]], xl[w->order[e + 1]])) e++;
        int outside = e == J - 1 && up.n > 0 && near(xl[w->order[e]], up.v[0]);
        int equal = 1;
        for (int k = j; k < e; k++) equal &= xl[w->order[k]] == xl[w->order[k + 1]];
        for (int k = j; k <= e; k++) w->sure[k] = !outside && equal;
        j = e + 1;
    }

    /* F(m): exact below J; past it, F(J-1) plus the largest lower / upper ends */
    double f = 0.0;
    for (int j = 0; j < J; j++) {
        f += xl[w->order[j]];
        w->flo[j] = w->fhi[j] = f;
    }
    const double fj = f;
    int M = J + up.n;
    double gl = 0.0, gh = 0.0;
    for (int k = 0; k < up.n; k++) {
        gl += low.v[k];
        gh += up.v[k];
        w->flo[J + k] = fj + gl;
        w->fhi[J + k] = fj + gh;
    }
    const double eabs = d->eabs, es = d->es + eabs;
    /* relative: the fp32 sum of m+1 quotients, TIE swaps, these double sums */
#define GAMMA(m) (gam((double)(m) + 2.0) + 2.0 * TIE + ((double)(m) + 2.0) * 0x1p-50)

    /* L: the first m with cum_m > topp, somewhere in [L1, L2] */
    int L1 = -1, L2 = -1;
    for (int m = 0; m < M; m++) {
        double g = GAMMA(m), fl = w->flo[m], fh = w->fhi[m];
        double rl, rh; /* the rest of the sum: rows ranked after m */
        if (m < J) {
            rl = fj - fl + sum_lw - eabs;
            rh = fj - fh + sum_u + eabs;
        } else {
            rl = sum_lw - (fl - fj) - eabs;
            rh = sum_u - (fh - fj) + eabs;
        }
        if (rl < 0.0) rl = 0.0;
        double lower = fmax(fl / d->s_hi, fl / (fl + rh + es)) * (1.0 - g) * (1.0 - 0x1p-45);
        double upper = fh / d->s_lo;
        if (rl - es > 0.0) upper = fmin(upper, fh / (fh + rl - es)); /* rises with F */
        upper *= (1.0 + g) * (1.0 + 0x1p-45);
        if (L1 < 0 && upper > (double)topp) L1 = m;
        if (lower > (double)topp) {
            L2 = m;
            break;
        }
    }
    /* Undecided: `need` is the deepest position whose row must become certain (the ranks
     * past the prefix are intervals), `widen` says the denominator's intervals (the rows
     * ranked past them) are in the way. Rounding-level ties only all exact logits decide. */
#define CUM_LO(m) (w->flo[m] * (1.0 - GAMMA(m)) * (1.0 - 0x1p-45))
#define CUM_HI(m) (w->fhi[m] * (1.0 + GAMMA(m)) * (1.0 + 0x1p-45))
    int need = -1, widen = 0, undecided = 0, tok = -1;
    double target = 0.0; /* the denominator's width that would settle L */
    if (L2 < 0) {
        if (up.n < KMAX) return FAITHFUL_EXACT; /* every row ranked, still no certain end */
        /* which is wider: the ranks bounded past the prefix, or the rest after them? */
        int m = M - 1;
        double gw = w->fhi[m] - w->flo[m];
        double tw = (sum_u - (w->fhi[m] - fj)) - (sum_lw - (w->flo[m] - fj)) + 2.0 * es;
        if (gw >= tw) need = m;
        else widen = 1;
    } else {
        /* every position up to L2 passed the cutoff: its x is at least y */
        double y = L2 < J ? xl[w->order[L2]] : low.v[L2 - J];
        double s_max = fmin((double)d->s_hi, d->sum_h + es);
        if (!(y / (1.0 + TIE) / s_max * (1.0 - 0x1p-23) >= (double)cutoff))
            return FAITHFUL_EXACT;
        for (int L = L1; L <= L2; L++) {
            /* r = fl(coin cum_L), S-free: coin F(L) against F(i) */
            double g = GAMMA(L);
            double r_lo = (double)coin * w->flo[L] * (1.0 - g) * (1.0 - 0x1p-23) * (1.0 - 0x1p-45);
            double r_hi = (double)coin * w->fhi[L] * (1.0 + g) * (1.0 + 0x1p-23) * (1.0 + 0x1p-45);
            int i = 0;
            while (i <= L && r_lo >= CUM_HI(i)) i++; /* surely r >= cum_i: not there */
            if (i > L) return FAITHFUL_EXACT;       /* r < cum_L always: cannot happen */
            if (i >= J) {
                /* the crossing lies past the prefix: rank everything up to where it surely is */
                int last = i;
                while (last + 1 < M && !(r_hi < CUM_LO(last))) last++;
                if (last > need) need = last;
                undecided = 1;
                continue;
            }
            if (!(r_hi < CUM_LO(i))) {
                if (L < J) return FAITHFUL_EXACT; /* every sum exact: a rounding-level tie */
                if (L > need) need = L;           /* F(L) is an interval: rank up to L */
                undecided = 1;
                continue;
            }
            if (!w->sure[i]) return FAITHFUL_EXACT; /* p may tie its neighbour's */
            if (tok >= 0 && tok != w->order[i]) undecided = widen = 1; /* L itself is unsure */
            tok = w->order[i];
        }
        if (!undecided) {
            *token = tok;
            return FAITHFUL_TOKEN;
        }
        if (widen && L2 >= J && L2 > need) need = L2;
        if (widen && need < J) {
            /* every F exact: S must narrow below the closest cum_m's distance from topp */
            double s_mid = 0.5 * ((double)d->s_lo + (double)d->s_hi), gap = INFINITY;
            for (int m = L1; m < L2; m++) gap = fmin(gap, fabs(w->flo[m] - (double)topp * s_mid));
            target = 0.9 * gap / (double)topp - s_mid * GAMMA(L2);
            if (target <= 0.0) return FAITHFUL_EXACT;
        }
    }
#undef CUM_LO
#undef CUM_HI
#undef GAMMA
    if (need >= J && low.v[need - J] > 0.0) {
        /* the rows that could rank anywhere in J..need: upper end reaching the lower end of
         * whatever surely ranks at `need` */
        double floor = low.v[need - J];
        for (int i = 0; i < n; i++)
            if (!b->exact[i] && (double)xh[i] * (1.0 + 2.0 * TIE) >= floor)
                refine[(*n_refine)++] = i;
        if (*n_refine) return FAITHFUL_REFINE;
    }
    return refine_widest(b, w, effort, target, refine, n_refine);
}

FaithfulVerdict faithful_decide(const LogitBounds *b, float temperature, float topp, float coin,
                                int effort, int budget, FaithfulWork *w, int *token,
                                int *refine, int *n_refine) {
    const int n = b->n;
    *n_refine = 0;
    if (n < 2 || n != w->n) return FAITHFUL_EXACT;
    w->budget = budget;
    for (int i = 0; i < n; i++)
        if (!(isfinite(b->lo[i]) && isfinite(b->hi[i]) && b->lo[i] <= b->hi[i]))
            return FAITHFUL_EXACT;
    if (temperature == 0.0f) return decide_greedy(b, token, refine, n_refine);
    if (!(temperature > 0.0f && isfinite(temperature)) || isnan(topp))
        return FAITHFUL_EXACT;

    /* logits[q] /= temperature is monotone: the bounds divide too; then run.c's max_val.
     * x / 1.0f is x exactly, so at -t 1 (the contest's) no divide is done per logit. */
    const float T = temperature;
    const int unit = T == 1.0f;
#define DIV_T(v) (unit ? (v) : (v) / T)
    float maxlo = -INFINITY;
    for (int i = 0; i < n; i++) {
        float a = DIV_T(b->lo[i]), c = DIV_T(b->hi[i]);
        if (!isfinite(a) || !isfinite(c)) return FAITHFUL_EXACT;
        if (a > maxlo) maxlo = a;
    }
    /* run.c's max_val: one row surely above all others (its x is expf(0) = 1 whatever its
     * logit), or else every row that could hold it exact */
    int candidates = 0, top = -1;
    for (int i = 0; i < n; i++)
        if (DIV_T(b->hi[i]) >= maxlo) candidates++, top = i;
    if (candidates > 1) {
        for (int i = 0; i < n; i++)
            if (!b->exact[i] && DIV_T(b->hi[i]) >= maxlo) refine[(*n_refine)++] = i;
        if (*n_refine) return FAITHFUL_REFINE;
        for (int i = 0; i < n; i++)
            if (b->exact[i] && (top < 0 || DIV_T(b->lo[i]) > DIV_T(b->lo[top]))) top = i;
    }
    const float m_lo = DIV_T(b->lo[top]), m_hi = DIV_T(b->hi[top]); /* equal when exact */
    const int m_exact = b->exact[top];

    /* x_i = expf(x_i - max_val), and the denominator */
    Denominator d = {0.0f, 0.0f, 0.0, 0.0, 0.0, 0.0};
    for (int i = 0; i < n; i++) {
        float lo, hi;
        int point = i == top || (b->exact[i] && m_exact);
        if (i == top) {
            lo = hi = 1.0f; /* expf(max_val - max_val) */
        } else if (point) {
            float t = DIV_T(b->lo[i]);
            lo = hi = expf(t - m_lo); /* run.c's own float */
        } else {
            float vh = DIV_T(b->hi[i]) - m_lo; /* fl(a - b): up in a, down in b */
            if (vh < TAU) {
                lo = 0.0f;
                hi = exp_upper_cheap(vh);
            } else {
                float vl = DIV_T(b->lo[i]) - m_hi;
                hi = exp_upper(vh);
                lo = vl < TAU ? 0.0f : exp_lower(vl);
            }
        }
        w->xexact[i] = (unsigned char)point;
        w->xl[i] = lo;
        w->xh[i] = hi;
        d.s_lo += lo;
        d.s_hi += hi;
        /* one addition's error: at most the addend, at most u |result| (+ underflow) */
        d.es += fmin((double)hi, U * (double)d.s_hi + 0x1p-150);
        d.sum_l += lo;
        d.sum_h += hi;
    }
    /* double sums of n non-negative terms: relative error below n 2^-53 */
    d.eabs = (double)n * 0x1p-50 * d.sum_h;
    FaithfulVerdict v = !(topp > 0.0f && topp < 1.0f)
                            ? decide_mult(b, w, &d, coin, effort, token, refine, n_refine)
                            : decide_topp(b, w, &d, topp, coin, effort, token, refine, n_refine);
#undef DIV_T
    /* an inexact maximum widens every row's x: make it exact with whatever else is asked */
    if (v == FAITHFUL_REFINE && !m_exact) refine[(*n_refine)++] = top;
    return v;
}

int faithful_exact_sample(float *logits, int n, float temperature, float topp, float coin,
                          ProbIndex *probindex) {
    if (temperature == 0.0f) return sample_argmax(logits, n);
    for (int q = 0; q < n; q++) logits[q] /= temperature;
    softmax(logits, n);
    if (topp <= 0 || topp >= 1) return sample_mult(logits, n, coin);
    return sample_topp(logits, n, topp, probindex, coin);
}

/* ---- the path ----------------------------------------------------------------------- */

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
    f->refine = malloc((n + 1) * sizeof *f->refine);
    f->work = faithful_work_new((int)n);
    if (!f->b.lo || !f->b.hi || !f->b.exact || !f->xq || !f->xs || !f->tile_exact ||
        !f->refine || !f->work) {
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
    const double gn = gam((double)dim), ga = gam((double)q->groups + 3.0);
    const float alpha = float_up(nx * (1.0 + gn));
    const double nq = m->classifier_q8_norm_max;
    const float beta = float_up(nq * (nd + ga * (nx + nd) + gn * nx));
    const float *nr = m->classifier_residual_norms;
    int finite = isfinite(alpha) && isfinite(beta);
    for (size_t i = 0; i < n; i++) {
        /* three roundings of non-negative terms, covered by the factor */
        float e = fmaxf((nr[i] * alpha + beta) * (1.0f + 0x1p-19f), 0x1p-90f);
        float a = logits[i];
        f->b.lo[i] = finite ? next_down(a - e) : -INFINITY;
        f->b.hi[i] = finite ? next_up(a + e) : INFINITY;
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
    size_t want = count * f->tile_bytes, done = 0;
    off_t at = (off_t)(mapped - (const unsigned char *)m->map);
    while (done < want) {
        ssize_t got = pread(f->fd, f->buf + done, want - done, at + (off_t)done);
        if (got > 0) done += (size_t)got;
        else if (!(got < 0 && errno == EINTR)) {
            f->touched += want;
            return mapped; /* the mapping holds the same bytes */
        }
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
    matvec_packed_f32(out, &v, f->x, 0); /* unfused: matvec_packed_f32_ref's bits */
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

static void record(Faithful *f, size_t tiles, int full) {
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
    s->bytes += (double)f->base_bytes + (double)tiles * (double)f->tile_bytes;
}

int faithful_sample(Faithful *f, const Model *m, Sampler *s, float *logits) {
    const int n = f->b.n;
    const float coin = s->temperature == 0.0f ? 0.0f : random_f32(&s->rng_state);
    /* refining past 3/4 of the tiles costs about what computing them all does */
    const size_t budget = f->tiles * 3 / 4 + 1;
    size_t used = 0;
    int effort = 0, token = -1, full = 0;
    for (;;) {
        int n_refine = 0;
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
            if (fresh > 0 && used + fresh <= budget) {
                for (size_t k = 0; k < fresh; k++)
                    exact_tiles(f, m, (size_t)f->refine[k], 1, logits);
                used += fresh;
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
    record(f, used, full);
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
            "token %.0f\n",
            s->steps, (double)s->by_bounds / steps, 1.0 - (double)s->full / steps,
            (double)s->rows / steps, p99, max, (double)s->tiles / steps, s->bytes / steps);
    if (f->verify)
        fprintf(out, "faithful verify: bound violations %ld, token mismatches %ld\n",
                s->violations, s->mismatches);
    if (per_step) {
        fputs("faithful rows per step:", out);
        for (long i = 0; i < kept; i++) fprintf(out, " %d", s->rows_per_step[i]);
        fputc('\n', out);
    }
}
