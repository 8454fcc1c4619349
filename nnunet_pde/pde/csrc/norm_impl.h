/* One scalar type's instantiation of the per-volume statistics kernels (see norm.c).
 * Included with T, V, SUF and LOG1P (a vector log(1 + x) for x >= 0) defined. A volume is one
 * (sample, channel) of a contiguous (B, C, *S) tensor: vox contiguous values. */

/* Sum of the vox values of p (and of p * q when q is given) in double, vectorised; where
 * out is given, out = c p in the same pass. */
static void CAT(sums, SUF)(const T *p, const T *q, long vox, double *s1, double *s2,
                           T *restrict out, T c) {
    double a1[LANES] = {0}, a2[LANES] = {0};
    long i = 0;
    for (; i + LANES <= vox; i += LANES)
        for (int l = 0; l < LANES; ++l) {
            a1[l] += p[i + l];
            if (q) a2[l] += p[i + l] * q[i + l];
            if (out) out[i + l] = c * p[i + l];
        }
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
    double a[LANES] = {0}, r = 0;
    long i = 0;
    for (; i + LANES <= vox; i += LANES)
        for (int l = 0; l < LANES; ++l) {
            double d = x[i + l] - mu;
            a[l] += d * d;
        }
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
