/* Exact, globally optimal, weighted 1D k-means: see kmeans1d.h for the contract.
 *
 * Steps for one group: reduce the values to sorted distinct points with total weights ->
 * centre them and scale by powers of two (exact) -> prefix sums -> the DP over
 * the points (divide and conquer per layer) -> cluster boundaries -> centroids, SSE -> labels.
 */
#include "kmeans1d.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define N_BINS 65536u

/* A distinct value with its total weight; during the sort path the same memory first holds
 * the order-preserving key of the value, hence the union. */
typedef union {
    struct { uint64_t key; double w; } k;
    struct { double v; double w; } p;
} rec_t;

/* Prefix sums over the points (y = centred, scaled value): w[t] = sum of the first t
 * weights, s1[t] of weight * y, s2[t] of weight * y^2. Kept as three arrays so the DP's
 * inner loop streams them. */
typedef struct { const double *w, *s1, *s2; } sums_t;

typedef struct {
    /* reduction */
    double *bin_w;        /* N_BINS total weight per 16-bit key */
    uint8_t *bin_seen;    /* N_BINS: the key occurs (maybe with zero weight) */
    uint16_t *bin_label;  /* N_BINS: label per key, for the labelling pass */
    rec_t *pts, *tmp;     /* distinct points; radix sort scratch */
    size_t pts_cap, tmp_cap;
    /* dynamic programme, sized for m points */
    double *pre_w, *pre_s1, *pre_s2, *rev_w, *rev_s1, *rev_s2;
    double *row_a, *row_b, *saved;
    uint32_t *arg_a, *arg_b;
    size_t dp_cap, hb_cap;
    uint64_t *table;      /* argmin table of the DP while it fits the budget */
    size_t table_cap;
    /* per cluster */
    uint32_t *starts;
    double *lower, *upper, *cent;
} workspace_t;

enum { FALLBACK = -1, PATH_FP16 = 1, PATH_BF16 = 2, PATH_SORT = 3 };

/* ------------------------------------------------------------------------------------------
 * Reading values and weights
 */

static double half_to_double(uint16_t h)
{
    int e = (h >> 10) & 0x1f, f = h & 0x3ff;
    double v = e == 0 ? ldexp((double)f, -24) : ldexp((double)(f | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

static double bf16_to_double(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return (double)f;
}

static inline double load_x(const void *x, int dt, size_t i)
{
    if (dt == OC_FLOAT32) return (double)((const float *)x)[i];
    if (dt == OC_FLOAT64) return ((const double *)x)[i];
    return half_to_double(((const uint16_t *)x)[i]);
}

static inline double load_w(const void *w, int dt, size_t i)
{
    if (!w) return 1.0;
    return dt == OC_FLOAT32 ? (double)((const float *)w)[i] : ((const double *)w)[i];
}

static inline int weight_ok(double w) { return w >= 0.0 && w <= DBL_MAX; }

/* Sign-magnitude 16-bit float -> key whose unsigned order is the value order; -0 -> +0 so
 * that equal values share a key. */
static inline uint32_t order16(uint32_t h)
{
    if (h == 0x8000u) h = 0;
    return (h & 0x8000u) ? (~h & 0xffffu) : (h | 0x8000u);
}

static inline uint32_t unorder16(uint32_t key)
{
    return (key & 0x8000u) ? (key & 0x7fffu) : (~key & 0xffffu);
}

/* The 16-bit key of value i when it is exactly an fp16 (PATH_FP16) or bf16 (PATH_BF16)
 * number; FALLBACK when it is not; -2 when it is NaN or infinite. */
static inline int32_t key16(const void *x, int dt, size_t i, int path)
{
    uint32_t u;
    if (dt == OC_FLOAT16) {
        uint32_t h = ((const uint16_t *)x)[i];
        return ((h >> 10) & 0x1f) == 0x1f ? -2 : (int32_t)order16(h);
    }
    if (dt == OC_FLOAT32) {
        memcpy(&u, (const float *)x + i, sizeof u);
    } else {
        double v = ((const double *)x)[i];
        if (!(fabs(v) <= DBL_MAX)) return -2;
        if (fabs(v) > FLT_MAX) return FALLBACK;
        float f = (float)v;
        if ((double)f != v) return FALLBACK;
        memcpy(&u, &f, sizeof u);
    }
    uint32_t ex = (u >> 23) & 0xffu, man = u & 0x7fffffu, sign = (u >> 16) & 0x8000u;
    if (ex == 0xffu) return -2;
    if (path == PATH_BF16) return (u & 0xffffu) ? FALLBACK : (int32_t)order16(u >> 16);
    if (ex == 0 && man == 0) return (int32_t)order16(0);
    if (ex >= 113 && ex <= 142) { /* fp16 normal range, exponents -14..15 */
        if (man & 0x1fffu) return FALLBACK;
        return (int32_t)order16(sign | ((ex - 112) << 10) | (man >> 13));
    }
    if (ex >= 103 && ex < 113) { /* fp16 subnormal range, exponents -24..-15 */
        uint32_t shift = 126 - ex, full = man | 0x800000u;
        if (full & ((1u << shift) - 1)) return FALLBACK;
        return (int32_t)order16(sign | (full >> shift));
    }
    return FALLBACK;
}

static inline double key16_value(uint32_t key, int path)
{
    uint16_t h = (uint16_t)unorder16(key);
    return path == PATH_BF16 ? bf16_to_double(h) : half_to_double(h);
}

static inline uint64_t order64(double v)
{
    uint64_t b;
    if (v == 0.0) v = 0.0; /* -0 -> +0 */
    memcpy(&b, &v, sizeof b);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}

static inline double unorder64(uint64_t key)
{
    uint64_t b = (key >> 63) ? (key & 0x7fffffffffffffffull) : ~key;
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* ------------------------------------------------------------------------------------------
 * Reduction to distinct points (ascending), with total weights
 */

/* One counting pass into 65536 bins. Returns FALLBACK as soon as a value is not exact in
 * this 16-bit format. */
static int reduce_bins(workspace_t *ws, const void *x, int xd, const void *w, int wd, size_t n,
                       int path, size_t base, size_t *m_out, size_t *bad)
{
    memset(ws->bin_w, 0, N_BINS * sizeof *ws->bin_w);
    memset(ws->bin_seen, 0, N_BINS);
    for (size_t i = 0; i < n; i++) {
        int32_t key = key16(x, xd, i, path);
        if (key < 0) {
            if (key == FALLBACK) return FALLBACK;
            *bad = base + i;
            return OC_ERR_NONFINITE;
        }
        double wi = load_w(w, wd, i);
        if (!weight_ok(wi)) {
            *bad = base + i;
            return OC_ERR_WEIGHT;
        }
        ws->bin_w[key] += wi;
        ws->bin_seen[key] = 1;
    }
    size_t m = 0;
    for (uint32_t key = 0; key < N_BINS; key++) {
        if (!ws->bin_seen[key]) continue;
        ws->pts[m].p.v = key16_value(key, path);
        ws->pts[m].p.w = ws->bin_w[key];
        m++;
    }
    *m_out = m;
    return OC_OK;
}

/* LSD radix sort of n records by key, 8 bits a pass; passes where every key shares the
 * digit are skipped. The sorted records end in ws->pts. */
static void radix_sort(workspace_t *ws, size_t n)
{
    size_t count[8][256];
    memset(count, 0, sizeof count);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = ws->pts[i].k.key;
        for (int d = 0; d < 8; d++) count[d][(key >> (8 * d)) & 0xff]++;
    }
    for (int d = 0; d < 8; d++) {
        size_t sum = 0, trivial = 0;
        for (int b = 0; b < 256; b++) {
            if (count[d][b] == n) trivial = 1;
            size_t c = count[d][b];
            count[d][b] = sum;
            sum += c;
        }
        if (trivial) continue;
        rec_t *src = ws->pts, *dst = ws->tmp;
        for (size_t i = 0; i < n; i++) dst[count[d][(src[i].k.key >> (8 * d)) & 0xff]++] = src[i];
        ws->pts = dst;
        ws->tmp = src;
    }
}

static int reduce_sorted(workspace_t *ws, const void *x, int xd, const void *w, int wd, size_t n,
                         size_t base, size_t *m_out, size_t *bad)
{
    for (size_t i = 0; i < n; i++) {
        double v = load_x(x, xd, i), wi = load_w(w, wd, i);
        if (!(fabs(v) <= DBL_MAX)) {
            *bad = base + i;
            return OC_ERR_NONFINITE;
        }
        if (!weight_ok(wi)) {
            *bad = base + i;
            return OC_ERR_WEIGHT;
        }
        ws->pts[i].k.key = order64(v);
        ws->pts[i].k.w = wi;
    }
    radix_sort(ws, n);
    free(ws->tmp); /* the scratch half of the sort is not needed past here */
    ws->tmp = NULL;
    ws->tmp_cap = 0;
    /* run-length encode in place: record i is read before slot m <= i is written */
    size_t m = 0;
    uint64_t last = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = ws->pts[i].k.key;
        double wi = ws->pts[i].k.w;
        if (m > 0 && key == last) {
            ws->pts[m - 1].p.w += wi;
        } else {
            ws->pts[m].p.v = unorder64(key);
            ws->pts[m].p.w = wi;
            last = key;
            m++;
        }
    }
    *m_out = m;
    return OC_OK;
}

/* ------------------------------------------------------------------------------------------
 * Workspace
 */

static void *grow(void *ptr, size_t *cap, size_t want, size_t elem)
{
    if (ptr && *cap >= want) return ptr;
    free(ptr);
    ptr = malloc(want * elem);
    *cap = ptr ? want : 0;
    return ptr;
}

/* The DP's arrays, sized for m points; kept across the groups of one call. */
static int reserve_dp(workspace_t *ws, size_t m)
{
    double **d[] = {&ws->pre_w, &ws->pre_s1, &ws->pre_s2, &ws->row_a, &ws->row_b};
    uint32_t **u[] = {&ws->arg_a, &ws->arg_b};
    size_t nd = sizeof d / sizeof d[0], nu = sizeof u / sizeof u[0], i;
    if (ws->dp_cap >= m && ws->pre_w) return OC_OK;
    int ok = 1;
    for (i = 0; i < nd; i++) {
        free(*d[i]);
        ok &= (*d[i] = malloc((m + 1) * sizeof(double))) != NULL;
    }
    for (i = 0; i < nu; i++) {
        free(*u[i]);
        ok &= (*u[i] = malloc((m + 1) * sizeof(uint32_t))) != NULL;
    }
    ws->dp_cap = ok ? m : 0;
    return ok ? OC_OK : OC_ERR_NOMEM;
}

/* What only the Hirschberg recursion needs (reversed sums, a saved row), on first use. */
static int reserve_hirschberg(workspace_t *ws)
{
    double **d[] = {&ws->rev_w, &ws->rev_s1, &ws->rev_s2, &ws->saved};
    size_t m = ws->dp_cap;
    if (ws->saved && ws->hb_cap >= m) return OC_OK;
    int ok = 1;
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        free(*d[i]);
        ok &= (*d[i] = malloc((m + 1) * sizeof(double))) != NULL;
    }
    ws->hb_cap = ok ? m : 0;
    return ok ? OC_OK : OC_ERR_NOMEM;
}

static void release(workspace_t *ws)
{
    void *all[] = {ws->bin_w, ws->bin_seen, ws->bin_label, ws->pts, ws->tmp, ws->pre_w,
                   ws->pre_s1, ws->pre_s2, ws->rev_w, ws->rev_s1, ws->rev_s2, ws->row_a,
                   ws->row_b, ws->saved, ws->arg_a, ws->arg_b, ws->table, ws->starts,
                   ws->lower, ws->upper, ws->cent};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* ------------------------------------------------------------------------------------------
 * The dynamic programme. Points 0..len-1; D_q[t] = least SSE of the first t points in q
 * clusters; D_q[t] = min over s in [q-1, t-1] of D_{q-1}[s] + cost(s, t), and the argmin
 * J_q[t] (where the last cluster starts) is nondecreasing in t and J_{q-1}[t] <= J_q[t].
 */

/* SSE of points [a, b) around their weighted mean, from the prefix sums. */
static inline double seg_cost(sums_t p, uint32_t a, uint32_t b)
{
    double w = p.w[b] - p.w[a], d1 = p.s1[b] - p.s1[a];
    if (!(w > 0.0)) return 0.0; /* weight lost to rounding: the cluster costs nothing */
    double c = (p.s2[b] - p.s2[a]) - d1 * d1 / w;
    return c > 0.0 ? c : 0.0;
}

/* Monotone divide and conquer over rows lo..hi whose argmins lie in [clo, chi]; lower[t]
 * (the previous layer's argmin, or NULL) bounds row t's argmin from below. Leftmost minima.
 * This beat SMAWK here: both make about ten evaluations a row, but these are independent
 * and pipeline, where SMAWK's REDUCE is a serial chain of compares. */
static void dc_rows(sums_t p, const double *prev, const uint32_t *lower, uint32_t lo, uint32_t hi,
                    uint32_t clo, uint32_t chi, uint32_t *arg, double *val)
{
    while (lo <= hi) {
        uint32_t t = lo + ((hi - lo) >> 1);
        uint32_t a = clo, b = chi < t - 1 ? chi : t - 1;
        if (lower && lower[t] > a) a = lower[t];
        if (a > b) a = b; /* the bounds crossed by rounding: keep the row valid */
        const double tw = p.w[t], t1 = p.s1[t], t2 = p.s2[t];
        double bv = INFINITY;
        uint32_t best = a;
        for (uint32_t s = a; s <= b; s++) {
            double w = tw - p.w[s], d1 = t1 - p.s1[s];
            double v = prev[s] + (t2 - p.s2[s]) - (w > 0.0 ? d1 * d1 / w : 0.0);
            if (v < bv) {
                bv = v;
                best = s;
            }
        }
        arg[t] = best;
        val[t] = bv;
        if (t > lo) dc_rows(p, prev, lower, lo, t - 1, clo, best, arg, val);
        lo = t + 1;
        clo = best;
    }
}

/* The argmin table stores each layer's nondecreasing row J_q[r0..len] in a header word (r0
 * and J_q[r0]) and at most 2 (len + 1) bits: for t = r0+1..len, (J_q[t] - J_q[t-1]) zero bits
 * then a one bit. 2 bits a point and layer instead of 32 keeps n = 1e7 all-distinct at
 * k = 256 in 640 MB. */
static size_t table_words(uint32_t len) { return ((size_t)2 * len + 2) / 64 + 2; }

static void table_put(uint64_t *row, const uint32_t *arg, uint32_t r0, uint32_t len, size_t words)
{
    memset(row, 0, words * sizeof *row);
    row[0] = ((uint64_t)r0 << 32) | arg[r0];
    size_t bit = 64;
    for (uint32_t t = r0 + 1; t <= len; t++) {
        bit += arg[t] - arg[t - 1];
        row[bit >> 6] |= (uint64_t)1 << (bit & 63);
        bit++;
    }
}

static unsigned popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (unsigned)((x * 0x0101010101010101ull) >> 56);
}

/* J_q[t] from a table row: J_q[r0] plus the zero bits before the (t - r0)-th one bit. */
static uint32_t table_get(const uint64_t *row, uint32_t t)
{
    uint32_t r0 = (uint32_t)(row[0] >> 32), base = (uint32_t)row[0], ones = t - r0;
    if (ones == 0) return base;
    size_t word = 1;
    unsigned c;
    while ((c = popcount64(row[word])) < ones) {
        ones -= c;
        word++;
    }
    uint64_t bits = row[word];
    unsigned pos = 0;
    for (;; pos++) {
        if (((bits >> pos) & 1u) && --ones == 0) break;
    }
    size_t zeros = (word - 1) * 64 + pos - (t - r0 - 1);
    return base + (uint32_t)zeros;
}

/* Runs `layers` layers of the DP over len points. Optionally stores every layer's argmins in
 * `table` (row q-2 for layer q), the optimal SSE of all len points for each layer count in
 * `curve`, and a copy of layer `save_layer` in ws->saved. Returns the last layer's row.
 *
 * With a table, only row len is wanted from the last layer, so layer q
 * computes only the rows that a path back from row len can reach: rows below
 * L_q = J_{q-1} applied (layers - q) times to len are never read, because J_q >= J_{q-1} and
 * both are nondecreasing. A third less time at n = 1e6, k = 256 (8.0 -> 5.3 s). */
static double *dp_forward(workspace_t *ws, sums_t p, uint32_t len, uint32_t layers,
                          uint64_t *table, uint32_t save_layer, double *curve)
{
    double *prev = ws->row_a, *cur = ws->row_b;
    uint32_t *arg = ws->arg_a, *lower = ws->arg_b;
    size_t stride = (size_t)len + 1, words = table_words(len);
    for (uint32_t t = 1; t <= len; t++) {
        prev[t] = seg_cost(p, 0, t);
        lower[t] = 0;
    }
    if (curve) curve[0] = prev[len];
    if (save_layer == 1) memcpy(ws->saved, prev, stride * sizeof *prev);
    uint32_t r0_prev = 1; /* the first row the previous layer computed */
    for (uint32_t q = 2; q <= layers; q++) {
        uint32_t r0 = q;
        if (table) { /* once the walk leaves the computed rows, it is below q anyway */
            uint32_t t = len;
            for (uint32_t j = q; j < layers && t >= r0_prev; j++) t = lower[t];
            if (t > r0) r0 = t;
        }
        r0_prev = r0;
        dc_rows(p, prev, lower, r0, len, q - 1, len - 1, arg, cur);
        if (table) table_put(table + (size_t)(q - 2) * words, arg, r0, len, words);
        if (curve) curve[q - 1] = cur[len];
        if (save_layer == q) memcpy(ws->saved, cur, stride * sizeof *cur);
        double *dswap = prev;
        prev = cur;
        cur = dswap;
        uint32_t *aswap = lower;
        lower = arg;
        arg = aswap;
    }
    return prev;
}

static sums_t shifted(sums_t p, uint32_t by)
{
    sums_t r = {p.w + by, p.s1 + by, p.s2 + by};
    return r;
}

/* Finds the optimal partition of points [0, len) of p into c clusters; writes the first
 * point of each cluster, plus `offset`, into starts[0..c). With a curve (top level only),
 * also the optimal SSE for every cluster count 1..c. */
static int solve(workspace_t *ws, sums_t p, uint32_t len, uint32_t c, size_t budget,
                 uint32_t offset, uint32_t *starts, double *curve)
{
    if (!curve && c == 1) {
        starts[0] = offset;
        return OC_OK;
    }
    if (!curve && c == len) {
        for (uint32_t i = 0; i < c; i++) starts[i] = offset + i;
        return OC_OK;
    }
    size_t words = table_words(len), need = (size_t)(c - 1) * words * sizeof(uint64_t);
    if (need <= budget) {
        if (need > ws->table_cap) {
            free(ws->table);
            ws->table = malloc(need);
            ws->table_cap = ws->table ? need : 0;
            if (!ws->table) return OC_ERR_NOMEM;
        }
        dp_forward(ws, p, len, c, need ? ws->table : NULL, 0, curve);
        uint32_t t = len;
        for (uint32_t q = c; q >= 2; q--) {
            t = table_get(ws->table + (size_t)(q - 2) * words, t);
            starts[q - 1] = offset + t;
        }
        starts[0] = offset;
        return OC_OK;
    }
    /* Hirschberg: find where cluster c1 ends from a forward and a backward pass, recurse */
    uint32_t c1 = c / 2, c2 = c - c1;
    if (reserve_hirschberg(ws) != OC_OK) return OC_ERR_NOMEM;
    dp_forward(ws, p, len, curve ? c : c1, NULL, c1, curve);
    for (uint32_t u = 0; u <= len; u++) { /* the points reversed */
        ws->rev_w[u] = p.w[len] - p.w[len - u];
        ws->rev_s1[u] = p.s1[len] - p.s1[len - u];
        ws->rev_s2[u] = p.s2[len] - p.s2[len - u];
    }
    sums_t rev = {ws->rev_w, ws->rev_s1, ws->rev_s2};
    const double *fwd = ws->saved, *bwd = dp_forward(ws, rev, len, c2, NULL, 0, NULL);
    uint32_t split = c1;
    double best = INFINITY;
    for (uint32_t t = c1; t <= len - c2; t++) {
        double v = fwd[t] + bwd[len - t];
        if (v < best) {
            best = v;
            split = t;
        }
    }
    int rc = solve(ws, p, split, c1, budget, offset, starts, NULL);
    if (rc == OC_OK) rc = solve(ws, shifted(p, split), len - split, c2, budget, offset + split, starts + c1, NULL);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * One group
 */

/* The cluster of value v: the first cluster whose largest member is >= v; a value that is
 * not a member (it had zero weight) goes to the nearer of the two clusters around it. */
static inline uint32_t label_of(const workspace_t *ws, double v, uint32_t kc)
{
    uint32_t lo = 0, hi = kc - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (v <= ws->upper[mid]) hi = mid;
        else lo = mid + 1;
    }
    if (lo > 0 && v < ws->lower[lo] && v - ws->cent[lo - 1] <= ws->cent[lo] - v) lo--;
    return lo;
}

static inline void put_label(void *labels, int wide, size_t i, uint32_t c)
{
    if (wide) ((uint16_t *)labels)[i] = (uint16_t)c;
    else ((uint8_t *)labels)[i] = (uint8_t)c;
}

/* e such that 2^-e scales |v| <= a into [0.5, 1); clamped so that 2^-e, 2^e and the SSE's
 * 2^(2e) factors stay finite for subnormal or zero data. */
static int pow2_exponent(double a)
{
    int e = 0;
    if (a > 0.0) frexp(a, &e);
    return e < -480 ? -480 : e;
}

/* Weighted mean of points [a, b), taken around the cluster's first value so that close values
 * keep their differences (around the data's mean they can be absorbed); in the scaled units
 * y = (v * s0 - mu) * s1 only if that would overflow (a cluster spanning over DBL_MAX). */
static double cluster_mean(const rec_t *pts, size_t a, size_t b, double s0, double mu, double s1)
{
    double base = pts[a].p.v, sw = 0.0, sd = 0.0; /* unscaled weights: a tiny one must not underflow */
    for (size_t i = a; i < b; i++) {
        sw += pts[i].p.w;
        sd += pts[i].p.w * (pts[i].p.v - base);
    }
    double mean = base + sd / sw;
    if (fabs(mean) <= DBL_MAX) return mean;
    double sy = 0.0;
    for (size_t i = a; i < b; i++) sy += pts[i].p.w * ((pts[i].p.v * s0 - mu) * s1);
    return (sy / sw / s1 + mu) / s0;
}

static int cluster_group(workspace_t *ws, const void *x, int xd, const void *w, int wd, size_t n,
                         uint32_t k, size_t budget, size_t base, void *labels, double *centroids,
                         double *sse_by_k, uint32_t *n_clusters, double *sse, size_t *bad)
{
    int wide_labels = k > 256;
    /* 1. distinct points, ascending */
    size_t m_all = 0;
    int path = PATH_FP16, rc = FALLBACK;
    if (n > 4096 || xd == OC_FLOAT16) { /* below that, sorting is as cheap as the bins */
        rc = reduce_bins(ws, x, xd, w, wd, n, PATH_FP16, base, &m_all, bad);
        if (rc == FALLBACK && xd != OC_FLOAT16) {
            path = PATH_BF16;
            rc = reduce_bins(ws, x, xd, w, wd, n, PATH_BF16, base, &m_all, bad);
        }
    }
    if (rc == FALLBACK) {
        path = PATH_SORT;
        if (!(ws->pts = grow(ws->pts, &ws->pts_cap, n, sizeof(rec_t))) ||
            !(ws->tmp = grow(ws->tmp, &ws->tmp_cap, n, sizeof(rec_t))))
            return OC_ERR_NOMEM;
        rc = reduce_sorted(ws, x, xd, w, wd, n, base, &m_all, bad);
    }
    if (rc != OC_OK) return rc;

    /* 2. only points with weight take part in the DP; zero-weight ones are labelled later */
    size_t m = 0;
    double vmax = 0.0, wmax = 0.0;
    for (size_t i = 0; i < m_all; i++) {
        if (ws->pts[i].p.w > 0.0) {
            ws->pts[m++] = ws->pts[i];
            vmax = fmax(vmax, fabs(ws->pts[i].p.v));
            wmax = fmax(wmax, ws->pts[i].p.w);
        }
    }
    if (m == 0) {
        *bad = base / (n ? n : 1);
        return OC_ERR_ZERO_WEIGHT;
    }
    uint32_t kc = (uint32_t)(m < k ? m : k);
    if (reserve_dp(ws, m) != OC_OK) return OC_ERR_NOMEM;

    /* 3. centre and scale by powers of two: y = (v * s0 - mu) * s1, |y| <= 1, weights <= 1 */
    int e0 = pow2_exponent(vmax), ew = pow2_exponent(wmax), e1;
    double s0 = ldexp(1.0, -e0), ws0 = ldexp(1.0, -ew), wsum = 0.0, mu = 0.0, dmax = 0.0;
    for (size_t i = 0; i < m; i++) {
        double wi = ws->pts[i].p.w * ws0;
        wsum += wi;
        mu += wi * (ws->pts[i].p.v * s0);
    }
    mu /= wsum;
    for (size_t i = 0; i < m; i++) dmax = fmax(dmax, fabs(ws->pts[i].p.v * s0 - mu));
    e1 = pow2_exponent(dmax);
    double s1 = ldexp(1.0, -e1);
    ws->pre_w[0] = ws->pre_s1[0] = ws->pre_s2[0] = 0.0;
    for (size_t i = 0; i < m; i++) {
        double wi = ws->pts[i].p.w * ws0, y = (ws->pts[i].p.v * s0 - mu) * s1;
        ws->pre_w[i + 1] = ws->pre_w[i] + wi;
        ws->pre_s1[i + 1] = ws->pre_s1[i] + wi * y;
        ws->pre_s2[i + 1] = ws->pre_s2[i] + wi * y * y;
    }
    sums_t p = {ws->pre_w, ws->pre_s1, ws->pre_s2};

    /* 4. the optimal partition and the whole rate-distortion curve */
    rc = solve(ws, p, (uint32_t)m, kc, budget, 0, ws->starts, sse_by_k);
    if (rc != OC_OK) return rc;
    for (uint32_t j = 0; j < k; j++) sse_by_k[j] = j < kc ? ldexp(sse_by_k[j], 2 * (e0 + e1) + ew) : 0.0;

    /* 5. centroids, then every point at its nearest centroid. In exact arithmetic the optimal
     * partition already is; the DP's prefix sums cancel, so it can misplace a boundary between
     * values closer than ~1e-8 of the data's range. Moving such a point lowers the SSE. */
    uint32_t *st = ws->starts;
    for (uint32_t c = 0; c < kc; c++) ws->cent[c] = cluster_mean(ws->pts, st[c], c + 1 < kc ? st[c + 1] : m, s0, mu, s1);
    for (int pass = 0, moved = 1; moved && pass < 64; pass++) {
        moved = 0;
        for (uint32_t c = 0; c + 1 < kc; c++) {
            size_t b = st[c + 1], end = c + 2 < kc ? st[c + 2] : m;
            while (b - st[c] > 1 && fabs(ws->pts[b - 1].p.v - ws->cent[c + 1]) < fabs(ws->pts[b - 1].p.v - ws->cent[c])) b--;
            while (end - b > 1 && fabs(ws->pts[b].p.v - ws->cent[c]) < fabs(ws->pts[b].p.v - ws->cent[c + 1])) b++;
            if (b != st[c + 1]) {
                st[c + 1] = (uint32_t)b;
                ws->cent[c] = cluster_mean(ws->pts, st[c], b, s0, mu, s1);
                ws->cent[c + 1] = cluster_mean(ws->pts, b, end, s0, mu, s1);
                moved = 1;
            }
        }
    }
    /* their SSE (differences taken in the values' own units, then scaled by powers of two) */
    double total = 0.0, scale = s0 * s1;
    for (uint32_t c = 0; c < kc; c++) {
        size_t a = st[c], b = c + 1 < kc ? st[c + 1] : m;
        for (size_t i = a; i < b; i++) {
            double d = (ws->pts[i].p.v - ws->cent[c]) * scale;
            total += ws->pts[i].p.w * d * d;
        }
        centroids[c] = ws->cent[c];
        ws->lower[c] = ws->pts[a].p.v;
        ws->upper[c] = ws->pts[b - 1].p.v;
    }
    for (uint32_t c = kc; c < k; c++) centroids[c] = centroids[kc - 1];
    *sse = ldexp(total, 2 * (e0 + e1));
    sse_by_k[kc - 1] = *sse;
    *n_clusters = kc;

    /* 6. labels */
    if (path == PATH_SORT) {
        for (size_t i = 0; i < n; i++) put_label(labels, wide_labels, i, label_of(ws, load_x(x, xd, i), kc));
    } else {
        for (uint32_t key = 0; key < N_BINS; key++)
            if (ws->bin_seen[key]) ws->bin_label[key] = (uint16_t)label_of(ws, key16_value(key, path), kc);
        if (wide_labels) {
            uint16_t *out = labels;
            for (size_t i = 0; i < n; i++) out[i] = ws->bin_label[key16(x, xd, i, path)];
        } else {
            uint8_t *out = labels;
            for (size_t i = 0; i < n; i++) out[i] = (uint8_t)ws->bin_label[key16(x, xd, i, path)];
        }
    }
    return OC_OK;
}

int oc_kmeans1d(const void *x, int x_dtype, const void *weights, int w_dtype, size_t n,
                size_t n_groups, uint32_t k, size_t table_budget, void *labels,
                double *centroids, double *sse_by_k, uint32_t *n_clusters, double *sse,
                size_t *bad_index)
{
    if (n == 0 || n_groups == 0 || k < 1 || k > 65536 || (uint64_t)n >= 0xffffffffull ||
        x_dtype < OC_FLOAT16 || x_dtype > OC_FLOAT64 ||
        (weights && w_dtype != OC_FLOAT32 && w_dtype != OC_FLOAT64))
        return OC_ERR_ARG;
    workspace_t ws;
    memset(&ws, 0, sizeof ws);
    size_t pts_init = n < N_BINS ? n : N_BINS;
    ws.bin_w = malloc(N_BINS * sizeof(double));
    ws.bin_seen = malloc(N_BINS);
    ws.bin_label = malloc(N_BINS * sizeof(uint16_t));
    ws.pts = grow(NULL, &ws.pts_cap, pts_init, sizeof(rec_t));
    ws.starts = malloc(k * sizeof(uint32_t));
    ws.lower = malloc(k * sizeof(double));
    ws.upper = malloc(k * sizeof(double));
    ws.cent = malloc(k * sizeof(double));
    int rc = OC_OK;
    if (!ws.bin_w || !ws.bin_seen || !ws.bin_label || !ws.pts || !ws.starts || !ws.lower ||
        !ws.upper || !ws.cent)
        rc = OC_ERR_NOMEM;
    size_t xsize = x_dtype == OC_FLOAT16 ? 2 : x_dtype == OC_FLOAT32 ? 4 : 8;
    size_t wsize = w_dtype == OC_FLOAT32 ? 4 : 8, lsize = k > 256 ? 2 : 1;
    for (size_t g = 0; g < n_groups && rc == OC_OK; g++) {
        const char *xg = (const char *)x + g * n * xsize;
        const void *wg = weights ? (const char *)weights + g * n * wsize : NULL;
        rc = cluster_group(&ws, xg, x_dtype, wg, w_dtype, n, k, table_budget, g * n,
                           (char *)labels + g * n * lsize, centroids + g * k, sse_by_k + g * k,
                           n_clusters + g, sse + g, bad_index);
    }
    release(&ws);
    return rc;
}
