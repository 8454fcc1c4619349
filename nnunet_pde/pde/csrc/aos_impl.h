/* One scalar type's instantiation of the fused AOS kernels (see aos.c).
 *
 * Included by aos.c with T (scalar type), V (a GCC vector of LANES T) and SUF (name suffix)
 * defined. A "panel" is LANES grid lines of one axis of one (b, c) volume, held
 * lane-interleaved in scratch (entry i of every line in one vector), so each step of the
 * recurrences is one vector operation.
 */

/* Offsets of the first cells of panel p's lines (lines = outer * inner, solve length n).
 * Lanes past the last line repeat it (computed, never written). Returns the number of valid
 * lanes; *contig is set when the lanes are LANES adjacent cells (one vector per row). */
static int CAT(panel, SUF)(long p, long n, long inner, long lines, long *off, int *contig) {
    long valid;
    if (inner >= LANES) {
        long chunks = (inner + LANES - 1) / LANES;
        long o = p / chunks, j0 = (p % chunks) * LANES;
        valid = inner - j0 < LANES ? inner - j0 : LANES;
        for (int l = 0; l < LANES; ++l) off[l] = o * n * inner + j0 + (l < valid ? l : valid - 1);
        *contig = valid == LANES;
        return (int)valid;
    }
    long q0 = p * LANES;
    valid = lines - q0 < LANES ? lines - q0 : LANES;
    for (int l = 0; l < LANES; ++l) {
        long q = q0 + (l < valid ? l : valid - 1);
        off[l] = (q / inner) * n * inner + q % inner;
    }
    *contig = 0;
    return (int)valid;
}

static long CAT(n_panels, SUF)(long outer, long inner) {
    if (inner >= LANES) return outer * ((inner + LANES - 1) / LANES);
    return (outer * inner + LANES - 1) / LANES;
}

/* One vector from p (unaligned). */
static inline V CAT(ldv, SUF)(const T *p) {
    V v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void CAT(load, SUF)(const T *src, V *dst, const long *off, long n, long stride,
                           int contig) {
    if (contig) {
        /* The next panel's cells (the following LANES of every row): rows are a page or
         * more apart along the first axis, where the hardware prefetchers stop. */
        for (long i = 0; i < n; ++i) {
            const T *row = src + off[0] + i * stride;
            __builtin_prefetch(row + LANES);
            memcpy(&dst[i], row, sizeof(V));
        }
        return;
    }
    long i0 = 0;
#ifdef TRANSPOSE16
    if (stride == 1) /* lines along memory: 16 x 16 blocks, one vector load per line */
        for (; i0 + LANES <= n; i0 += LANES) {
            V blk[LANES];
            for (int l = 0; l < LANES; ++l) blk[l] = CAT(ldv, SUF)(src + off[l] + i0);
            TRANSPOSE16(blk);
            for (int l = 0; l < LANES; ++l) dst[i0 + l] = blk[l];
        }
#endif
    for (long i = i0; i < n; ++i)
        for (int l = 0; l < LANES; ++l) dst[i][l] = src[off[l] + i * stride];
}

/* One vector to o (unaligned): o = x, or o += x when acc. */
static inline void CAT(put, SUF)(T *o, V x, int acc) {
    if (acc) {
        V y;
        memcpy(&y, o, sizeof(V));
        x += y;
    }
    memcpy(o, &x, sizeof(V));
}

/* dst (=, or += when acc) src for the valid lanes of a panel. */
static void CAT(store, SUF)(T *dst, const V *src, const long *off, long n, long stride,
                            int contig, int valid, int acc) {
    if (contig) {
        for (long i = 0; i < n; ++i) {
            T *o = dst + off[0] + i * stride;
            __builtin_prefetch(o + LANES, 1);
            CAT(put, SUF)(o, src[i], acc);
        }
        return;
    }
    long i0 = 0;
#ifdef TRANSPOSE16
    if (stride == 1)
        for (; i0 + LANES <= n; i0 += LANES) {
            V blk[LANES];
            for (int l = 0; l < LANES; ++l) blk[l] = src[i0 + l];
            TRANSPOSE16(blk); /* blk[l]: line l's 16 values */
            for (int l = 0; l < valid; ++l) CAT(put, SUF)(dst + off[l] + i0, blk[l], acc);
        }
#endif
    for (long i = i0; i < n; ++i)
        for (int l = 0; l < valid; ++l) {
            T *o = dst + off[l] + i * stride;
            *o = acc ? *o + src[i][l] : src[i][l];
        }
}

/* Scratch of one panel: its u and b (tu, tb), the solution y, the multipliers c, the
 * adjoint z and the face weights ph (z and ph: backward only). The sweep reads row i of u,
 * b and of the adjoint's right-hand side from su + i st, sb + i st and sg + i st (times
 * zsc): the scratch rows (st = LANES) where the panel was gathered there, or the tensors
 * themselves for a panel of LANES adjacent cells (st = the row stride), which need no
 * copy: their loads then overlap the latency-bound recurrences instead of preceding them. */
typedef struct {
    V *tu, *tb, *y, *c, *z, *ph;
    const T *su, *sb, *sg;
    long st;
    V zsc;
    /* Where not NULL (a panel read in place), the results go straight to the tensors, rows
     * st apart, = or += (oacc): the forward's solution times zsc (= 1/m there) to so, the
     * backward's dL/db to so and dL/du to so2. */
    T *so, *so2;
    int oacc;
} CAT(panel_buf, SUF);

/* Forward sweep of one panel (an element step below): face weights phi_f = 1/(1 + (k
 * d_f)^2), right-hand side r_i = b_i + ce (phi_i d_i - phi_{i-1} d_{i-1}) and the Thomas
 * elimination of T = I + sum_f cA phi_f (e_f - e_{f+1})(e_f - e_{f+1})^T in one pass, for r
 * and (when z is given) a second right-hand side z. Leaves the multipliers in c, the
 * eliminated right-hand sides in y (and z), phi in ph when ph is given. The recurrences
 * carry their previous values in registers (a_prev, c_prev, flux_prev, y_prev, z_prev). */
#define AOS_ELIM_STEP(P, y, z, c, ph, u_cur, a_prev, c_prev, flux_prev, y_prev, z_prev)        \
    do {                                                                                        \
        V a_hi = (V){}, flux = (V){};                                                           \
        const long st_ = P->st;                                                                 \
        if (st_ != LANES) { /* rows in the tensor: the next pair of panels' cells */            \
            __builtin_prefetch(P->su + i * st_ + 2 * LANES);                                    \
            __builtin_prefetch(P->sb + i * st_ + 2 * LANES);                                    \
            if (z) __builtin_prefetch(P->sg + i * st_ + 2 * LANES);                             \
        }                                                                                       \
        if (i < n - 1) {                                                                        \
            V u_next = CAT(ldv, SUF)(P->su + (i + 1) * st_);                                    \
            V d = u_next - u_cur;                                                               \
            u_cur = u_next;                                                                     \
            V s = d * k;                                                                        \
            V phi = one / (one + s * s);                                                        \
            if (ph) ph[i] = phi;                                                                \
            a_hi = cA * phi;                                                                    \
            if (explicit_half) flux = ce * phi * d;                                             \
        }                                                                                       \
        V r = CAT(ldv, SUF)(P->sb + i * st_);                                                   \
        if (explicit_half) r += flux - flux_prev;                                               \
        V inv = one / (one + a_prev * (one - c_prev) + a_hi);                                   \
        y_prev = (r + a_prev * y_prev) * inv; /* a_prev = 0 at i = 0 */                         \
        y[i] = y_prev;                                                                          \
        if (z) {                                                                                \
            z_prev = (P->zsc * CAT(ldv, SUF)(P->sg + i * st_) + a_prev * z_prev) * inv;         \
            z[i] = z_prev;                                                                      \
        }                                                                                       \
        c_prev = a_hi * inv;                                                                    \
        c[i] = c_prev;                                                                          \
        a_prev = a_hi;                                                                          \
        flux_prev = flux;                                                                       \
    } while (0)

/* The forward's back substitution of a panel read in place: out row i (+)= scale y_i. */
static inline void CAT(back_sub_out, SUF)(const V *restrict y, const V *restrict c, long n,
                                          T *o, long st, T scale, int acc) {
    V yn = y[n - 1];
    for (long i = n - 1; i >= 0; --i) {
        if (i < n - 1) yn = y[i] + c[i] * yn;
        T *row = o + i * st;
        __builtin_prefetch(row + 2 * LANES, 1);
        CAT(put, SUF)(row, scale * yn, acc);
    }
}

/* Back substitution of one panel: y_i += c_i y_{i+1}, carried in a register. */
static inline void CAT(back_sub, SUF)(V *restrict y, const V *restrict c, long n) {
    V yn = y[n - 1];
    for (long i = n - 2; i >= 0; --i) {
        yn = y[i] + c[i] * yn;
        y[i] = yn;
    }
}

/* The forward sweep and back substitution of panel p0 and, when p1 is not NULL, of panel
 * p1 in the same loop: two independent chains of divisions (one alone is latency-bound).
 * With z (the backward) only the elimination: panel_grad does the back substitution. */
static void CAT(sweep, SUF)(const CAT(panel_buf, SUF) *p0, const CAT(panel_buf, SUF) *p1,
                            long n, V cA, V ce, V k, int explicit_half) {
    const V one = (V){} + (T)1;
    /* z is read (through sg) and written at the same row: no restrict on it */
    V *restrict y0 = p0->y, *z0 = p0->z, *restrict c0 = p0->c, *restrict ph0 = p0->ph;
    V a0 = (V){}, q0 = (V){}, f0 = (V){}, yp0 = (V){}, zp0 = (V){};
    V u0 = CAT(ldv, SUF)(p0->su);
    if (p1) {
        V *restrict y1 = p1->y, *z1 = p1->z, *restrict c1 = p1->c;
        V *restrict ph1 = p1->ph;
        V a1 = (V){}, q1 = (V){}, f1 = (V){}, yp1 = (V){}, zp1 = (V){};
        V u1 = CAT(ldv, SUF)(p1->su);
        for (long i = 0; i < n; ++i) {
            AOS_ELIM_STEP(p0, y0, z0, c0, ph0, u0, a0, q0, f0, yp0, zp0);
            AOS_ELIM_STEP(p1, y1, z1, c1, ph1, u1, a1, q1, f1, yp1, zp1);
        }
        if (!z1 && p1->so)
            CAT(back_sub_out, SUF)(y1, c1, n, p1->so, p1->st, p1->zsc[0], p1->oacc);
        else if (!z1)
            CAT(back_sub, SUF)(y1, c1, n);
    } else {
        for (long i = 0; i < n; ++i)
            AOS_ELIM_STEP(p0, y0, z0, c0, ph0, u0, a0, q0, f0, yp0, zp0);
    }
    if (!z0 && p0->so)
        CAT(back_sub_out, SUF)(y0, c0, n, p0->so, p0->st, p0->zsc[0], p0->oacc);
    else if (!z0)
        CAT(back_sub, SUF)(y0, c0, n);
}

static void CAT(volume_size, SUF)(const long *dims, int m, long *vox, long *nmax) {
    *vox = 1;
    *nmax = 1;
    for (int e = 0; e < m; ++e) {
        *vox *= dims[e];
        if (dims[e] > *nmax) *nmax = dims[e];
    }
}

static void CAT(axis_geom, SUF)(const long *dims, int m, int d, long *outer, long *inner) {
    *outer = 1;
    *inner = 1;
    for (int e = 0; e < d; ++e) *outer *= dims[e];
    for (int e = d + 1; e < m; ++e) *inner *= dims[e];
}

/* The coefficients of axis d for channel ch, broadcast: cA, ce (0 for theta = 1) and k (0
 * for the linear Laplacian). */
static void CAT(coefs, SUF)(const T *cA, const T *ce, const T *k, int d, long C, long ch,
                            V *vcA, V *vce, V *vk) {
    *vcA = (V){} + cA[d * C + ch];
    *vce = (V){} + (ce ? ce[d * C + ch] : (T)0);
    *vk = (V){} + (k ? k[d * C + ch] : (T)0);
}

/* Two panels' scratch (rows of nmax vectors: tu, tb, y, c and, with adjoint, z and ph) in
 * one allocation; NULL when out of memory. */
static V *CAT(panel_bufs, SUF)(CAT(panel_buf, SUF) * pb, long nmax, int adjoint) {
    const int rows = adjoint ? 6 : 4;
    V *buf = (V *)aligned_alloc(sizeof(V), sizeof(V) * (size_t)(2 * rows * nmax));
    if (!buf) return NULL;
    for (int j = 0; j < 2; ++j) {
        V *base = buf + j * rows * nmax;
        pb[j].tu = base, pb[j].tb = base + nmax, pb[j].y = base + 2 * nmax;
        pb[j].c = base + 3 * nmax;
        pb[j].z = adjoint ? base + 4 * nmax : NULL;
        pb[j].ph = adjoint ? base + 5 * nmax : NULL;
    }
    return buf;
}

/* Backward of one panel after its elimination (sweep with z): the back substitution of y
 * (the solution) and z (the adjoint), from the last row up, fused with the gradient: row i
 * gets dL/db = z_i and dL/du = gd_{i-1} - gd_i + z_i (through the face weights and the
 * explicit half, plus dL/db: b depends on u), where the face gradients gd_f need rows f and
 * f + 1; both go to the tensors (a panel read in place) or to z and tb (scratch). Adds the
 * panel's parts of dL/dcA, dL/dce, dL/dk to the lane sums acc[0..3). explicit_half is a
 * constant at each call, so each case compiles to its own loop. One pass instead of a back
 * substitution storing y and z and a second pass reading them back. */
static inline void CAT(panel_grad, SUF)(const CAT(panel_buf, SUF) * P, long n, V vcA, V vce,
                                        V vk, int explicit_half, V *acc) {
    const V *restrict y = P->y, *restrict c = P->c, *restrict ph = P->ph;
    V *restrict z = P->z;
    const T *su = P->su;
    const long st = P->st;
    V *restrict tb = P->tb;
    V acA = acc[0], ace = acc[1], ak = acc[2];
    V yn = y[n - 1], zn = z[n - 1], gd_next = (V){}; /* rows f + 1 (final) and face f + 1 */
    V u_next = CAT(ldv, SUF)(su + (n - 1) * st);
#define AOS_GRAD_OUT(i, zi, gui)                                                                \
    do {                                                                                        \
        if (P->so) {                                                                            \
            T *o = P->so + (i) * st, *o2 = P->so2 + (i) * st;                                   \
            __builtin_prefetch(o + 2 * LANES, 1);                                               \
            __builtin_prefetch(o2 + 2 * LANES, 1);                                              \
            CAT(put, SUF)(o, zi, P->oacc);                                                      \
            CAT(put, SUF)(o2, gui, P->oacc);                                                    \
        } else {                                                                                \
            z[i] = zi;                                                                          \
            tb[i] = gui;                                                                        \
        }                                                                                       \
    } while (0)
    for (long f = n - 2; f >= 0; --f) {
        const V yf = y[f] + c[f] * yn, zf = z[f] + c[f] * zn;
        V u_cur = CAT(ldv, SUF)(su + f * st);
        V dl = u_next - u_cur;
        u_next = u_cur;
        V mu = zf - zn;
        V nu = yf - yn;
        V phi = ph[f];
        V gphi = -vcA * mu * nu;
        if (explicit_half) gphi += vce * mu * dl;
        V s = dl * vk;
        V gs = gphi * ((T)-2 * s * phi * phi);
        acA -= phi * mu * nu;
        if (explicit_half) ace += phi * dl * mu;
        ak += dl * gs;
        V gd = vk * gs;
        if (explicit_half) gd += vce * mu * phi;
        AOS_GRAD_OUT(f + 1, zn, gd - gd_next + zn);
        yn = yf, zn = zf, gd_next = gd;
    }
    AOS_GRAD_OUT(0, zn, (V){} - gd_next + zn);
#undef AOS_GRAD_OUT
    acc[0] = acA, acc[1] = ace, acc[2] = ak;
}

/* Loads panels p and p + 1 (if p + 1 < panels) of one volume's axis into pb: u and b, and
 * with g (backward) the scaled upstream gradient into z. Returns how many were loaded. */
static int CAT(load_panels, SUF)(CAT(panel_buf, SUF) * pb, long p, long panels, long n,
                                 long inner, long lines, const T *u, const T *b, const T *g,
                                 T *out, T *out2, int acc, T scale, long (*off)[LANES],
                                 int *contig, int *valid) {
    const int np = p + 1 < panels ? 2 : 1;
    for (int j = 0; j < np; ++j) {
        valid[j] = CAT(panel, SUF)(p + j, n, inner, lines, off[j], &contig[j]);
        if (contig[j]) { /* read in place by the sweep */
            pb[j].su = u + off[j][0], pb[j].sb = b + off[j][0];
            pb[j].sg = g ? g + off[j][0] : NULL;
            pb[j].st = inner;
            pb[j].zsc = (V){} + scale;
            pb[j].so = out + off[j][0];
            pb[j].so2 = out2 ? out2 + off[j][0] : NULL;
            pb[j].oacc = acc;
            continue;
        }
        pb[j].so = pb[j].so2 = NULL;
        pb[j].su = (const T *)pb[j].tu, pb[j].sb = (const T *)pb[j].tb;
        pb[j].sg = (const T *)pb[j].z;
        pb[j].st = LANES;
        pb[j].zsc = (V){} + (T)1;
        CAT(load, SUF)(u, pb[j].tu, off[j], n, inner, contig[j]);
        CAT(load, SUF)(b, pb[j].tb, off[j], n, inner, contig[j]);
        if (g) {
            /* scaled, and 0 in the lanes past the last line: with a zero adjoint those
             * lanes add nothing to the coefficient gradients (and are never stored) */
            V sc = (V){};
            for (int l = 0; l < valid[j]; ++l) sc[l] = scale;
            CAT(load, SUF)(g, pb[j].z, off[j], n, inner, contig[j]);
            for (long i = 0; i < n; ++i) pb[j].z[i] *= sc;
        }
    }
    return np;
}

/* Prefetches cells [lo, hi) of one volume's arrays: into L2 those read (src, ns of them),
 * for writing those written (dst, nd of them), line by line, the arrays interleaved. */
static inline void CAT(prefetch_cells, SUF)(const T *const *src, int ns, T *const *dst, int nd,
                                            long lo, long hi) {
    const long step = 64 / sizeof(T); /* one cache line */
    for (long i = lo & ~(step - 1); i < hi; i += step) {
        for (int a = 0; a < ns; ++a) __builtin_prefetch(src[a] + i, 0, 2);
        for (int a = 0; a < nd; ++a) __builtin_prefetch(dst[a] + i, 1, 2);
    }
}

/* Forward (adjoint 0) or backward (adjoint 1, upstream gradient g) of the AOS step over
 * volumes [v0, v1) of a (B * C, *dims) tensor; see aos_forward and aos_backward. adjoint is
 * a constant at each call and the function is always inlined, so each case compiles to its
 * own code, as two functions would. Panels are swept two at a time. */
static inline __attribute__((always_inline)) int CAT(aos_run, SUF)(
    const T *u, const T *b, const T *g, T *out, T *gu, double *sums, const long *dims, int m,
    long C, const T *cA, const T *ce, const T *k, long v0, long v1, const int adjoint) {
    long vox, nmax;
    CAT(volume_size, SUF)(dims, m, &vox, &nmax);
    CAT(panel_buf, SUF) pb[2];
    V *buf = CAT(panel_bufs, SUF)(pb, nmax, adjoint);
    if (!buf) return 1;
    FTZ_BEGIN
    const T scale = (T)1 / (T)m;
    long off[2][LANES];
    int contig[2], valid[2];
    /* Before its passes, each volume's arrays are prefetched in memory order: the forward's
     * u and b into L2 and out for writing (1.3 MB at 48^3, which L2 holds), the backward's
     * outputs gb and gu for writing only (all five arrays, 2.2 MB, overflow a 2 MiB L2, and
     * its reads prefetched too were slower). The passes otherwise fetched the volume from
     * memory through the first pass's strided rows (48 streams per array along the first
     * axis), at about half the speed of one sequential read: on the AVX-512 Xeon, forward
     * 0.79-0.84x, backward 0.73-0.74x the time without. The backward then runs the last axis
     * first (its lines along memory: 0.74x against 0.82-0.86x in the order 0, 1, 2); the
     * forward keeps the order 0, 1, 2 (0.81-0.85x against 0.86-0.95x). */
    const T *src[2];
    T *dst[2];
    for (long v = v0; v < v1; ++v) {
        const long w = v * vox;
        src[0] = u + w, src[1] = b + w;
        dst[0] = out + w, dst[1] = adjoint ? gu + w : NULL;
        CAT(prefetch_cells, SUF)(src, adjoint ? 0 : 2, dst, adjoint ? 2 : 1, 0, vox);
        for (int di = 0; di < m; ++di) {
            const int d = adjoint ? (di == 0 ? m - 1 : di - 1) : di, first = di == 0;
            long outer, inner, n = dims[d];
            CAT(axis_geom, SUF)(dims, m, d, &outer, &inner);
            V vcA, vce, vk;
            CAT(coefs, SUF)(cA, ce, k, d, C, v % C, &vcA, &vce, &vk);
            V acc[3] = {(V){}, (V){}, (V){}}; /* lane sums of dL/dcA, dL/dce, dL/dk */
            const long panels = CAT(n_panels, SUF)(outer, inner);
            for (long p = 0; p < panels; p += 2) {
                const int np = CAT(load_panels, SUF)(pb, p, panels, n, inner, outer * inner,
                                                     u + w, b + w, adjoint ? g + w : NULL,
                                                     out + w, adjoint ? gu + w : NULL, !first,
                                                     scale, off, contig, valid);
                /* y -> v (the solution); backward: z -> lambda (the adjoint: T is symmetric) */
                CAT(sweep, SUF)(&pb[0], np == 2 ? &pb[1] : NULL, n, vcA, vce, vk, ce != 0);
                for (int j = 0; j < np; ++j) {
                    if (!adjoint) {
                        if (pb[j].so) continue; /* stored by the sweep */
                        for (long i = 0; i < n; ++i) pb[j].y[i] *= scale;
                        CAT(store, SUF)(out + w, pb[j].y, off[j], n, inner, contig[j],
                                        valid[j], !first);
                        continue;
                    }
                    if (ce)
                        CAT(panel_grad, SUF)(&pb[j], n, vcA, vce, vk, 1, acc);
                    else
                        CAT(panel_grad, SUF)(&pb[j], n, vcA, vce, vk, 0, acc);
                    if (pb[j].so) continue; /* stored by panel_grad */
                    CAT(store, SUF)(out + w, pb[j].z, off[j], n, inner, contig[j],
                                    valid[j], !first);
                    CAT(store, SUF)(gu + w, pb[j].tb, off[j], n, inner, contig[j],
                                    valid[j], !first);
                }
            }
            if (!adjoint) continue;
            double s0 = 0, s1 = 0, s2 = 0;
            for (int l = 0; l < LANES; ++l) {
                s0 += acc[0][l];
                s1 += acc[1][l];
                s2 += acc[2][l];
            }
            sums[(v * 3 + 0) * m + d] = s0;
            sums[(v * 3 + 1) * m + d] = s1;
            sums[(v * 3 + 2) * m + d] = s2;
        }
    }
    FTZ_END
    free(buf);
    return 0;
}

/* Forward over volumes [v0, v1) of a (B * C, *dims) tensor: out = (1/m) sum_d v_d. */
int CAT(aos_forward, SUF)(const T *u, const T *b, T *out, const long *dims, int m, long C,
                          const T *cA, const T *ce, const T *k, long v0, long v1) {
    return CAT(aos_run, SUF)(u, b, NULL, out, NULL, NULL, dims, m, C, cA, ce, k, v0, v1, 0);
}

/* Backward of aos_forward for upstream gradient g over volumes [v0, v1). Writes dL/db to
 * gb and to gu the gradient with respect to u through phi and the explicit half plus dL/db
 * (the whole dL/du where b = u; both overwritten),
 * and per volume and axis the sums dL/dcA, dL/dce, dL/dk to sums[(v * 3 + j) * m + d]. */
int CAT(aos_backward, SUF)(const T *u, const T *b, const T *g, T *gb, T *gu, double *sums,
                           const long *dims, int m, long C, const T *cA, const T *ce,
                           const T *k, long v0, long v1) {
    return CAT(aos_run, SUF)(u, b, g, gb, gu, sums, dims, m, C, cA, ce, k, v0, v1, 1);
}

/* Half a vector of T and of double (for float32 one AVX-512 register each): sums in double
 * kept in registers (GCC kept 16-lane double arrays in memory, or converted lane by lane). */
typedef T CAT(half, SUF) __attribute__((vector_size(LANES / 2 * sizeof(T))));
typedef double CAT(hd, SUF) __attribute__((vector_size(LANES / 2 * sizeof(double))));

/* Double sums of the lanes of a (into s1) and of a b (into s2) for LANES values, lanes
 * [0, LANES / 2) in the *l accumulators, the rest in *h. */
static inline void CAT(acc_halves, SUF)(const T *a, const T *b, CAT(hd, SUF) * s1l,
                                        CAT(hd, SUF) * s1h, CAT(hd, SUF) * s2l,
                                        CAT(hd, SUF) * s2h, T mu, T is) {
    typedef CAT(hd, SUF) HD;
    CAT(half, SUF) al, ah, bl, bh;
    memcpy(&al, a, sizeof al), memcpy(&ah, a + LANES / 2, sizeof ah);
    memcpy(&bl, b, sizeof bl), memcpy(&bh, b + LANES / 2, sizeof bh);
    *s1l += __builtin_convertvector(al, HD), *s1h += __builtin_convertvector(ah, HD);
    *s2l += __builtin_convertvector(al * ((bl - mu) * is), HD);
    *s2h += __builtin_convertvector(ah * ((bh - mu) * is), HD);
}

static inline double CAT(hd_sum, SUF)(CAT(hd, SUF) l, CAT(hd, SUF) h) {
    double r = 0;
    for (int i = 0; i < LANES / 2; ++i) r += l[i];
    for (int i = 0; i < LANES / 2; ++i) r += h[i];
    return r;
}

/* The flux of the energy through faces [0, len) of one row: q[i] = cf 2 s / (1 + s^2),
 * s = (b[i] - a[i]) sc (a, b: the cells either side of each face). */
static inline void CAT(face_flux, SUF)(const T *restrict a, const T *restrict b,
                                       T *restrict q, long len, T sc, T cf) {
    for (long i = 0; i < len; ++i) {
        T s = (b[i] - a[i]) * sc;
        q[i] = cf * (T)2 * s / ((T)1 + s * s);
    }
}

/* Backward of the edge energy E = (1/m) sum_d mean_faces log(1 + s^2), s = diff_d(z_hat)
 * / h_d, z_hat = (z - mean) / std per volume, for volumes [v0, v1): gz (overwritten) =
 * dE/dz times g. coef[d] = g / (m * faces_d * h_d) with faces_d the number of faces of axis
 * d over the whole tensor; inv_std[v] = 1 / std of volume v; mean[v] its mean. Where gy is
 * given (the gate's dL/dy, z being the gate's u), gz also gets the gate's gg[v] gy and
 * su[v] = sum gy z (double), the part of gate_backward that reads z.
 *
 * All axes in one pass over the rows of the last axis (a volume seen as n0 x n1 x n2, the
 * missing leading axes of size 1): a row's gz is its first-axis faces' fluxes (the face
 * below kept from the previous plane in q0), then its middle-axis ones (the face before
 * kept from the previous row), then its last-axis ones, summed in that order as the
 * earlier per-axis passes did. One read of z and one write of gz per volume instead of one
 * read-modify-write per axis; the face fluxes of a row are computed once each. */
int CAT(energy_backward, SUF)(const T *z, T *gz, const long *dims, int m, const T *coef,
                              const T *hs, const T *mean, const T *inv_std, const T *gy,
                              const T *gg, double *su, long v0, long v1) {
    long vox, nmax;
    CAT(volume_size, SUF)(dims, m, &vox, &nmax);
    if (m < 1 || m > 3) return 1;
    long n[3] = {1, 1, 1};
    T sc[3] = {0, 0, 0}, cf[3] = {0, 0, 0};
    for (int d = 0; d < m; ++d) {
        n[3 - m + d] = dims[d];
        cf[3 - m + d] = coef[d];
    }
    const long n2 = n[2], plane = n[1] * n2;
    /* q0: the first-axis fluxes into the current plane (plane values); q1 two rows of
     * middle-axis fluxes (before, after); f2 one row of last-axis fluxes with a zero before */
    T *q0 = (T *)malloc(sizeof(T) * (size_t)(plane + 3 * n2 + 2));
    if (!q0) return 1;
    T *q1a = q0 + plane, *q1b = q1a + n2, *f2 = q1b + n2 + 1;
    FTZ_BEGIN
    for (long v = v0; v < v1; ++v) {
        const T *restrict zv = z + v * vox;
        T *restrict gv = gz + v * vox;
        const T mu = mean[v], is = inv_std[v];
        for (int d = 0; d < m; ++d) sc[3 - m + d] = is / hs[d];
        double s1 = 0, s2 = 0; /* sums of gz_hat and gz_hat z_hat */
        CAT(hd, SUF) a1l = {0}, a1h = {0}, a2l = {0}, a2h = {0}; /* their vector parts */
        for (long i = 0; i < plane; ++i) q0[i] = (T)0;
        f2[-1] = (T)0;
        f2[n2 - 1] = (T)0;
        for (long i0 = 0; i0 < n[0]; ++i0) {
            for (long i = 0; i < n2; ++i) q1a[i] = (T)0;
            for (long i1 = 0; i1 < n[1]; ++i1) {
                const long off = i0 * plane + i1 * n2;
                const T *restrict zr = zv + off;
                T *restrict gr = gv + off, *restrict qp = q0 + i1 * n2;
                T *restrict qa = (i1 & 1) ? q1b : q1a, *restrict qb = (i1 & 1) ? q1a : q1b;
                if (i1 + 1 < n[1]) CAT(face_flux, SUF)(zr, zr + n2, qb, n2, sc[1], cf[1]);
                else for (long i = 0; i < n2; ++i) qb[i] = (T)0;
                CAT(face_flux, SUF)(zr, zr + 1, f2, n2 - 1, sc[2], cf[2]);
                if (i0 + 1 < n[0]) {
                    const T *restrict zp = zr + plane;
                    for (long i = 0; i < n2; ++i) {
                        T s = (zp[i] - zr[i]) * sc[0];
                        T q = cf[0] * (T)2 * s / ((T)1 + s * s);
                        gr[i] = ((qp[i] - q) + (qa[i] - qb[i])) + (f2[i - 1] - f2[i]);
                        qp[i] = q;
                    }
                } else {
                    for (long i = 0; i < n2; ++i)
                        gr[i] = (qp[i] + (qa[i] - qb[i])) + (f2[i - 1] - f2[i]);
                }
                /* the row's values are final: sum them while in cache */
                long i = 0;
                for (; i + LANES <= n2; i += LANES)
                    CAT(acc_halves, SUF)(gr + i, zr + i, &a1l, &a1h, &a2l, &a2h, mu, is);
                for (; i < n2; ++i) {
                    s1 += gr[i];
                    s2 += gr[i] * ((zr[i] - mu) * is);
                }
            }
        }
        s1 += CAT(hd_sum, SUF)(a1l, a1h), s2 += CAT(hd_sum, SUF)(a2l, a2h);
        /* gz_hat -> dz = (gz_hat - mean(gz_hat) - z_hat mean(gz_hat z_hat)) / std */
        const T m1 = (T)(s1 / vox), m2 = (T)(s2 / vox);
        if (gy) {
            const T *restrict yv = gy + v * vox;
            const T c = gg[v];
            double r = 0;
            CAT(hd, SUF) al = {0}, ah = {0}, unl = {0}, unh = {0};
            long i = 0;
            for (; i + LANES <= vox; i += LANES) {
                /* sum q zi: the s2 part with mu = 0, is = 1 */
                CAT(acc_halves, SUF)(yv + i, zv + i, &unl, &unh, &al, &ah, (T)0, (T)1);
                const V zi = CAT(ldv, SUF)(zv + i), q = CAT(ldv, SUF)(yv + i);
                const V gi = CAT(ldv, SUF)(gv + i);
                const V o = (gi - m1 - ((zi - mu) * is) * m2) * is + c * q;
                memcpy(gv + i, &o, sizeof o);
            }
            r += CAT(hd_sum, SUF)(al, ah);
            for (; i < vox; ++i) {
                r += yv[i] * zv[i];
                gv[i] = (gv[i] - m1 - ((zv[i] - mu) * is) * m2) * is + c * yv[i];
            }
            su[v] = r;
        } else {
            for (long i = 0; i < vox; ++i) gv[i] = (gv[i] - m1 - ((zv[i] - mu) * is) * m2) * is;
        }
    }
    FTZ_END
    free(q0);
    return 0;
}
