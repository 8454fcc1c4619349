/* One scalar type's instantiation of the per-volume statistics kernels (see norm.c).
 * Included with T, V, SUF and LOG1P (a vector log(1 + x) for x >= 0) defined. A volume is one
 * (sample, channel) of a contiguous (B, C, *S) tensor: vox contiguous values. */

/* Half a vector of T, and of double: in float32 one register each of a 16-lane AVX-512
 * pair (GCC kept 16-lane double accumulators in memory, each update a store and reload). */
typedef T CAT(half, SUF) __attribute__((vector_size(LANES / 2 * sizeof(T))));
typedef double CAT(hd, SUF) __attribute__((vector_size(LANES / 2 * sizeof(double))));

/* Values p[0..LANES / 2) and p[LANES / 2..LANES) as doubles. */
static inline void CAT(ld_halves, SUF)(const T *p, CAT(hd, SUF) * lo, CAT(hd, SUF) * hi) {
    CAT(half, SUF) a, b;
    memcpy(&a, p, sizeof a);
    memcpy(&b, p + LANES / 2, sizeof b);
    *lo = __builtin_convertvector(a, CAT(hd, SUF));
    *hi = __builtin_convertvector(b, CAT(hd, SUF));
}

/* Sum of the vox values of p (and of p * q when q is given) in double, vectorised; where
 * out is given, out = c p in the same pass. Lane l of the accumulators sums the values at
 * i = l (mod LANES), in order. Written with vector types: GCC's vectoriser turned the loop
 * over lanes into scalar conversions and additions (compute-bound, about 3x slower than
 * the memory traffic on an AVX-512 Xeon). */
static void CAT(sums, SUF)(const T *p, const T *q, long vox, double *s1, double *s2,
                           T *restrict out, T c) {
    typedef CAT(hd, SUF) HD;
    typedef CAT(half, SUF) HT;
    const long h = LANES / 2;
    HD a1l = (HD){}, a1h = (HD){}, a2l = (HD){}, a2h = (HD){};
    long i = 0;
    for (; i + LANES <= vox; i += LANES) {
        HT xl, xh;
        memcpy(&xl, p + i, sizeof xl);
        memcpy(&xh, p + i + h, sizeof xh);
        a1l += __builtin_convertvector(xl, HD), a1h += __builtin_convertvector(xh, HD);
        if (q) {
            HT yl, yh;
            memcpy(&yl, q + i, sizeof yl);
            memcpy(&yh, q + i + h, sizeof yh);
            a2l += __builtin_convertvector(xl * yl, HD);
            a2h += __builtin_convertvector(xh * yh, HD);
        }
        if (out) {
            xl *= c, xh *= c;
            memcpy(out + i, &xl, sizeof xl);
            memcpy(out + i + h, &xh, sizeof xh);
        }
    }
    double a1[LANES], a2[LANES];
    memcpy(a1, &a1l, sizeof a1l), memcpy(a1 + LANES / 2, &a1h, sizeof a1h);
    memcpy(a2, &a2l, sizeof a2l), memcpy(a2 + LANES / 2, &a2h, sizeof a2h);
    double r1 = 0, r2 = 0;
    for (; i < vox; ++i) {
        r1 += p[i];
        if (q) r2 += p[i] * q[i];
        if (out) out[i] = c * p[i];
    }
    for (int l = 0; l < LANES; ++l) r1 += a1[l], r2 += a2[l];
    *s1 = r1;
    *s2 = r2;
}

/* mean and 1 / sqrt(var + eps) of one volume (two passes: no cancellation). */
static void CAT(moments, SUF)(const T *x, long vox, double eps, double *mean, double *inv_std) {
    double s, unused;
    CAT(sums, SUF)(x, 0, vox, &s, &unused, 0, (T)0);
    const double mu = s / (double)vox;
    typedef CAT(hd, SUF) HD;
    HD al = (HD){}, ah = (HD){};
    double r = 0;
    long i = 0;
    for (; i + LANES <= vox; i += LANES) {
        HD lo, hi;
        CAT(ld_halves, SUF)(x + i, &lo, &hi);
        lo -= mu, hi -= mu;
        al += lo * lo, ah += hi * hi;
    }
    double a[LANES];
    memcpy(a, &al, sizeof al), memcpy(a + LANES / 2, &ah, sizeof ah);
    for (; i < vox; ++i) r += (x[i] - mu) * (x[i] - mu);
    for (int l = 0; l < LANES; ++l) r += a[l];
    *mean = mu;
    *inv_std = 1.0 / sqrt(r / (double)vox + eps);
}

/* x_hat = (x - mean) * inv_std per volume; mean and std (= 1 / inv_std) per volume. */
int CAT(standardise_forward, SUF)(const T *x, T *x_hat, T *mean, T *std, long vox, double eps,
                                  long v0, long v1) {
    FTZ_BEGIN
    for (long v = v0; v < v1; ++v) {
        const T *restrict xv = x + v * vox;
        T *restrict ov = x_hat + v * vox;
        double mu, is;
        CAT(moments, SUF)(xv, vox, eps, &mu, &is);
        const T m = (T)mu, s = (T)is;
        for (long i = 0; i < vox; ++i) ov[i] = (xv[i] - m) * s;
        mean[v] = m;
        std[v] = (T)(1.0 / is);
    }
    FTZ_END
    return 0;
}

/* dx = (g - mean(g) - x_hat mean(g x_hat)) / std + g_mean / N + g_std x_hat / N per volume
 * (g_mean, g_std per volume; either may be NULL), plus a[v] gy where gy is not NULL. */
int CAT(standardise_backward, SUF)(const T *x_hat, const T *std, const T *g, const T *g_mean,
                                   const T *g_std, const T *gy, const T *a, T *dx, long vox,
                                   long v0, long v1) {
    FTZ_BEGIN
    for (long v = v0; v < v1; ++v) {
        const T *restrict xv = x_hat + v * vox, *restrict gv = g + v * vox;
        T *restrict ov = dx + v * vox;
        double s1, s2;
        CAT(sums, SUF)(gv, xv, vox, &s1, &s2, 0, (T)0);
        const T is = (T)1 / std[v];
        const T m1 = (T)(s1 / (double)vox), m2 = (T)(s2 / (double)vox);
        const T c0 = (g_mean ? g_mean[v] : (T)0) / (T)vox;
        const T c1 = (g_std ? g_std[v] : (T)0) / (T)vox;
        if (gy) {
            const T *restrict yv = gy + v * vox;
            const T av = a[v];
            for (long i = 0; i < vox; ++i)
                ov[i] = (gv[i] - m1 - xv[i] * m2) * is + c0 + c1 * xv[i] + av * yv[i];
        } else {
            for (long i = 0; i < vox; ++i) ov[i] = (gv[i] - m1 - xv[i] * m2) * is + c0 + c1 * xv[i];
        }
    }
    FTZ_END
    return 0;
}

/* Per volume and axis d: sum over the faces of log(1 + s^2), s = diff_d(z) / (h_d std), into
 * sums[v * m + d] (double); the volume's mean and 1 / std into mean[v] and inv_std[v]. */
int CAT(energy_forward, SUF)(const T *z, double *sums, T *mean, T *inv_std, const long *dims,
                             int m, const T *hs, double eps, long v0, long v1) {
    long vox = 1;
    for (int e = 0; e < m; ++e) vox *= dims[e];
    FTZ_BEGIN
    for (long v = v0; v < v1; ++v) {
        const T *restrict zv = z + v * vox;
        double mu, is;
        CAT(moments, SUF)(zv, vox, eps, &mu, &is);
        mean[v] = (T)mu;
        inv_std[v] = (T)is;
        for (int d = 0; d < m; ++d) {
            long outer = 1, inner = 1, n = dims[d];
            for (int e = 0; e < d; ++e) outer *= dims[e];
            for (int e = d + 1; e < m; ++e) inner *= dims[e];
            const T sc = (T)is / hs[d];
            const long span = (n - 1) * inner; /* faces (i, i + inner) of one outer block */
            V acc = (V){};
            double tail = 0;
            if (inner == 1 && n > 1) {
                /* Lines along memory: the volume as one line of vox values, its faces i (cells
                 * i, i + 1) taken LANES at a time and those across two lines (i % n = n - 1)
                 * zeroed (log1p(0) = 0): no short loop and tail per line of n. pos holds
                 * i % n per lane. */
                vi32 pos;
                for (int l = 0; l < LANES; ++l) pos[l] = l % (int)n;
                const int ni = (int)n, steps = LANES / ni + 1;
                long i = 0;
                for (; i + LANES < vox; i += LANES) {
                    V a, b;
                    memcpy(&a, zv + i, sizeof a);
                    memcpy(&b, zv + i + 1, sizeof b);
                    V s = ZERO_WHERE((b - a) * sc, pos == ni - 1);
                    acc += LOG1P(s * s);
                    pos += LANES;
                    for (int r = 0; r < steps; ++r) pos -= (pos >= ni) & ni;
                }
                V s = (V){};
                for (long l = 0; i + l < vox - 1; ++l)
                    if ((i + l) % n != n - 1) s[l] = (zv[i + l + 1] - zv[i + l]) * sc;
                V t = LOG1P(s * s);
                for (int l = 0; l < LANES; ++l) tail += t[l];
                outer = 0; /* done */
            }
            for (long o = 0; o < outer; ++o) {
                const T *zb = zv + o * n * inner;
                long i = 0;
                for (; i + LANES <= span; i += LANES) {
                    V a, b;
                    memcpy(&a, zb + i, sizeof a);
                    memcpy(&b, zb + i + inner, sizeof b);
                    V s = (b - a) * sc;
                    acc += LOG1P(s * s);
                }
                if (i < span) {
                    V s = (V){};
                    for (long l = 0; i + l < span; ++l) s[l] = (zb[i + l + inner] - zb[i + l]) * sc;
                    V t = LOG1P(s * s); /* lanes past the span are log1p(0) = 0 */
                    for (int l = 0; l < LANES; ++l) tail += t[l];
                }
            }
            double total = tail;
            for (int l = 0; l < LANES; ++l) total += acc[l];
            sums[v * m + d] = total;
        }
    }
    FTZ_END
    return 0;
}

/* The gate y = a x + (c + g u) per volume v (a = 1 - gamma_c, g = gamma_c std_v, c =
 * gamma_c mean_v): exactly x while gamma = 0. */
int CAT(gate_forward, SUF)(const T *x, const T *u, const T *a, const T *g, const T *c, T *y,
                           long vox, long v0, long v1) {
    FTZ_BEGIN
    for (long v = v0; v < v1; ++v) {
        const T *restrict xv = x + v * vox, *restrict uv = u + v * vox;
        T *restrict yv = y + v * vox;
        const T av = a[v], gv = g[v], cv = c[v];
        for (long i = 0; i < vox; ++i) yv[i] = av * xv[i] + (cv + gv * uv[i]);
    }
    FTZ_END
    return 0;
}

/* Backward of the gate for dL/dy = gy: dx = a gy (where dx is not NULL) and per volume
 * (double) S[3 v] = sum gy, S[3 v + 2] = sum gy x_hat; where u is given also gu = g gy and
 * S[3 v + 1] = sum gy u (otherwise the energy's backward, which reads u anyway, adds them). */
int CAT(gate_backward, SUF)(const T *gy, const T *xh, const T *u, const T *a, const T *g,
                            T *dx, T *gu, double *S, long vox, long v0, long v1) {
    FTZ_BEGIN
    for (long v = v0; v < v1; ++v) {
        const T *restrict gyv = gy + v * vox;
        CAT(sums, SUF)(gyv, xh + v * vox, vox, &S[3 * v], &S[3 * v + 2], dx ? dx + v * vox : 0,
                       a[v]);
        if (u) {
            double unused;
            CAT(sums, SUF)(gyv, u + v * vox, vox, &unused, &S[3 * v + 1], gu + v * vox, g[v]);
        }
    }
    FTZ_END
    return 0;
}
