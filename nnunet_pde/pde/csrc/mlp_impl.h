/* One scalar type's instantiation of the fused pointwise reaction N(u) = W2 tanh(W1 u + b1)
 * + b2 and of its backward (see mlp.c). Included with T, V, SUF and TANH (the vector tanh of
 * this type) defined.
 *
 * Tensors are (B, C, P) or (B, H, P) row-major (P voxels). Work is split into chunks of L
 * consecutive voxels of one sample (L from mlp_chunk_len, a multiple of LANES), numbered
 * over (sample, chunk) pairs. A chunk's rows are copied to scratch with rows LP = L + LANES
 * apart (long contiguous runs in memory, and no two rows on the same L1 set), computed there
 * one sub-tile of LANES voxels at a time (channel c of a sub-tile is one vector), and copied
 * back the same way.
 */

/* rows x len values from src (rows P apart, from voxel p0) to scratch rows LP apart; the
 * tail of the last sub-tile is zero-filled. */
static void CAT(rows_in, SUF)(const T *src, T *dst, long rows, long P, long p0, long len,
                              long LP) {
    long padded = (len + LANES - 1) / LANES * LANES;
    for (long r = 0; r < rows; ++r) {
        memcpy(dst + r * LP, src + r * P + p0, sizeof(T) * (size_t)len);
        for (long i = len; i < padded; ++i) dst[r * LP + i] = (T)0;
    }
}

static void CAT(rows_out, SUF)(const T *src, T *dst, long rows, long P, long p0, long len,
                               long LP) {
    for (long r = 0; r < rows; ++r)
        memcpy(dst + r * P + p0, src + r * LP, sizeof(T) * (size_t)len);
}

/* rows_out with non-temporal stores (put_nt): for the forward's b and h, read back only by
 * the next kernel, long after the chunk. */
static void CAT(rows_out_nt, SUF)(const T *src, T *dst, long rows, long P, long p0, long len,
                                  long LP) {
    for (long r = 0; r < rows; ++r) {
        T *d = dst + r * P + p0;
        const T *s = src + r * LP;
        long i = 0;
        for (; i + LANES <= len; i += LANES) {
            V v;
            memcpy(&v, s + i, sizeof v);
            CAT(put_nt, SUF)(d + i, v);
        }
        for (; i < len; ++i) d[i] = s[i];
    }
}

/* Prefetch sub-tile s of the next chunk's rows (rows x P values from src, the chunk after
 * t of `chunks` per sample, of B * chunks in all): spread over a chunk's sub-tiles, the next
 * chunk arrives in cache while this one computes. Prefetches never fault. */
static inline void CAT(prefetch_next, SUF)(const T *src, long rows, long P, long L,
                                            long chunks, long t, long s) {
    const long n = t + 1, bi = n / chunks, p0 = (n % chunks) * L + s * LANES;
    if (p0 >= P) return;
    const T *base = src + bi * rows * P + p0;
    for (long r = 0; r < rows; ++r) __builtin_prefetch(base + r * P, 0, 2);
}

/* out[o * os] = bias[o] + sum_i W[o * ws_o + i * ws_i] x[i * xs] for o < O, 8 outputs at a
 * time (eight independent accumulation chains). ws_o / ws_i: strides of W (a transpose for
 * free); xs / os: strides of x and out in vectors. */
static void CAT(matvec, SUF)(const T *W, long ws_o, long ws_i, const T *bias, const V *x,
                             long xs, long I, V *out, long os, long O) {
    long o = 0;
    for (; o + 8 <= O; o += 8) {
        V a0 = (V){}, a1 = (V){}, a2 = (V){}, a3 = (V){}, a4 = (V){}, a5 = (V){}, a6 = (V){},
          a7 = (V){};
        if (bias) {
            a0 += bias[o], a1 += bias[o + 1], a2 += bias[o + 2], a3 += bias[o + 3];
            a4 += bias[o + 4], a5 += bias[o + 5], a6 += bias[o + 6], a7 += bias[o + 7];
        }
        const T *w = W + o * ws_o;
        for (long i = 0; i < I; ++i) {
            V xi = x[i * xs];
            const T *wi = w + i * ws_i;
            a0 += wi[0] * xi;
            a1 += wi[ws_o] * xi;
            a2 += wi[2 * ws_o] * xi;
            a3 += wi[3 * ws_o] * xi;
            a4 += wi[4 * ws_o] * xi;
            a5 += wi[5 * ws_o] * xi;
            a6 += wi[6 * ws_o] * xi;
            a7 += wi[7 * ws_o] * xi;
        }
        out[o * os] = a0, out[(o + 1) * os] = a1, out[(o + 2) * os] = a2;
        out[(o + 3) * os] = a3, out[(o + 4) * os] = a4, out[(o + 5) * os] = a5;
        out[(o + 6) * os] = a6, out[(o + 7) * os] = a7;
    }
    for (; o < O; ++o) {
        V a = (V){};
        if (bias) a += bias[o];
        for (long i = 0; i < I; ++i) a += W[o * ws_o + i * ws_i] * x[i * xs];
        out[o * os] = a;
    }
}

#if MV_PAIR
/* matvec on two adjacent sub-tiles at once (x[i * xs + j], out[o * os + j], j = 0, 1): each
 * weight is loaded once for both, and 16 independent accumulation chains instead of 8 (one
 * sub-tile's 8 chains with a broadcast load per multiply-add are load- and latency-bound).
 * Only where 16 accumulators fit in registers (MV_PAIR: 32 vector registers). */
static void CAT(matvec2, SUF)(const T *W, long ws_o, long ws_i, const T *bias, const V *x,
                              long xs, long I, V *out, long os, long O) {
    long o = 0;
    for (; o + 8 <= O; o += 8) {
        V a[8], b[8];
        for (int q = 0; q < 8; ++q) a[q] = b[q] = (V){} + (bias ? bias[o + q] : (T)0);
        const T *w = W + o * ws_o;
        for (long i = 0; i < I; ++i) {
            V x0 = x[i * xs], x1 = x[i * xs + 1];
            const T *wi = w + i * ws_i;
            for (int q = 0; q < 8; ++q) {
                a[q] += wi[q * ws_o] * x0;
                b[q] += wi[q * ws_o] * x1;
            }
        }
        for (int q = 0; q < 8; ++q) out[(o + q) * os] = a[q], out[(o + q) * os + 1] = b[q];
    }
    for (; o < O; ++o) {
        V a = (V){}, b = (V){};
        if (bias) a += bias[o], b += bias[o];
        for (long i = 0; i < I; ++i) {
            a += W[o * ws_o + i * ws_i] * x[i * xs];
            b += W[o * ws_o + i * ws_i] * x[i * xs + 1];
        }
        out[o * os] = a, out[o * os + 1] = b;
    }
}
#endif

/* Sum over the first `sub` sub-tiles (all lanes) of a * b, a a scratch row, b any row. */
static inline double CAT(dot_rows, SUF)(const V *a, const T *b, long sub) {
    V s = (V){};
    for (long t = 0; t < sub; ++t) {
        V bt;
        memcpy(&bt, b + t * LANES, sizeof bt);
        s += a[t] * bt;
    }
    return CAT(hsum, SUF)(s);
}

/* acc[i * N + j] += sum over the first `sub` sub-tiles (all lanes) of A[i] * Bm[j], for
 * scratch rows A[0..M) (LP values apart) and rows Bm[0..N) (LB values apart, scratch or the
 * tensor's own rows, loaded unaligned): a chunk's part of a weight gradient
 * sum_p a_i(p) b_j(p). 4 x 4 blocks in 16 vector accumulators. */
static void CAT(gemm_nt, SUF)(const T *A, long M, const T *Bm, long N, long LP, long LB,
                              long sub, double *acc) {
    const long vs = LP / LANES;
    const V *a = (const V *)A;
    long i = 0;
    for (; i + 4 <= M; i += 4) {
        long j = 0;
        for (; j + 4 <= N; j += 4) {
            V s[16];
            for (int q = 0; q < 16; ++q) s[q] = (V){};
            for (long t = 0; t < sub; ++t) {
                V a0 = a[i * vs + t], a1 = a[(i + 1) * vs + t], a2 = a[(i + 2) * vs + t],
                  a3 = a[(i + 3) * vs + t];
                V b0, b1, b2, b3;
                memcpy(&b0, Bm + j * LB + t * LANES, sizeof b0);
                memcpy(&b1, Bm + (j + 1) * LB + t * LANES, sizeof b1);
                memcpy(&b2, Bm + (j + 2) * LB + t * LANES, sizeof b2);
                memcpy(&b3, Bm + (j + 3) * LB + t * LANES, sizeof b3);
                s[0] += a0 * b0, s[1] += a0 * b1, s[2] += a0 * b2, s[3] += a0 * b3;
                s[4] += a1 * b0, s[5] += a1 * b1, s[6] += a1 * b2, s[7] += a1 * b3;
                s[8] += a2 * b0, s[9] += a2 * b1, s[10] += a2 * b2, s[11] += a2 * b3;
                s[12] += a3 * b0, s[13] += a3 * b1, s[14] += a3 * b2, s[15] += a3 * b3;
            }
            V r = CAT(hsum16, SUF)(s); /* r[q] = sum of the lanes of s[q] */
            for (int q = 0; q < 16; ++q) acc[(i + q / 4) * N + j + q % 4] += (double)r[q];
        }
        for (; j < N; ++j)
            for (long ii = i; ii < i + 4; ++ii)
                acc[ii * N + j] += CAT(dot_rows, SUF)(a + ii * vs, Bm + j * LB, sub);
    }
    for (; i < M; ++i)
        for (long j = 0; j < N; ++j)
            acc[i * N + j] += CAT(dot_rows, SUF)(a + i * vs, Bm + j * LB, sub);
}

/* acc[r] += sum of the first `sub` sub-tiles of scratch row r, for r < rows. */
static void CAT(row_sums, SUF)(const T *A, long rows, long LP, long sub, double *acc) {
    const long vs = LP / LANES;
    const V *a = (const V *)A;
    for (long r = 0; r < rows; ++r) {
        V s = (V){};
        for (long t = 0; t < sub; ++t) s += a[r * vs + t];
        acc[r] += CAT(hsum, SUF)(s);
    }
}

/* The reaction of one sub-tile: h = tanh(W1 u + b1) into h[k * hs] (k < H), N = W2 h + b2
 * into n[c * ns] (c < C), from u[c * us]. Forward and backward both compute it here. */
static inline void CAT(reaction_at, SUF)(const T *w1, const T *b1, const T *w2, const T *b2,
                                          const V *u, long us, V *h, long hs, V *n, long ns,
                                          long C, long H) {
    CAT(matvec, SUF)(w1, C, 1, b1, u, us, C, h, hs, H);
    for (long k = 0; k < H; ++k) h[k * hs] = TANH(h[k * hs]);
    CAT(matvec, SUF)(w2, H, 1, b2, h, hs, H, n, ns, C);
}

/* Chunk t of `chunks` per sample (L voxels each, P per sample): its sample bi, first voxel
 * p0, length len and number of sub-tiles sub. */
static inline void CAT(chunk_at, SUF)(long t, long chunks, long L, long P, long *bi, long *p0,
                                       long *len, long *sub) {
    *bi = t / chunks;
    *p0 = (t % chunks) * L;
    *len = P - *p0 < L ? P - *p0 : L;
    *sub = (*len + LANES - 1) / LANES;
}

/* Voxels per chunk for C channels and H hidden units: the chunk's scratch rows (at most
 * 3 C + 2 H of them) within about 384 KiB, between LANES and 512. */
long CAT(mlp_chunk_len, SUF)(long C, long H) {
    long rows = 3 * C + 2 * H;
    long L = (384L * 1024) / ((long)sizeof(T) * (rows > 0 ? rows : 1)) / LANES * LANES;
    return L < LANES ? LANES : (L > 512 ? 512 : L);
}

static T *CAT(scratch, SUF)(long rows, long LP) {
    return (T *)aligned_alloc(sizeof(V), sizeof(T) * (size_t)(rows > 0 ? rows : 1) * LP);
}

/* h = tanh(W1 u + b1), n = W2 h + b2; writes b = u + tau n, and h and n where not NULL, for
 * chunks [t0, t1). */
int CAT(mlp_forward, SUF)(const T *u, const T *w1, const T *b1, const T *w2, const T *b2,
                          const T *tau, T *out_b, T *out_h, T *out_n, long C, long H, long P,
                          long t0, long t1) {
    const long L = CAT(mlp_chunk_len, SUF)(C, H), LP = L + LANES, vs = LP / LANES;
    const long chunks = (P + L - 1) / L;
    T *buf = CAT(scratch, SUF)(3 * C + H, LP);
    if (!buf) return 1;
    FTZ_BEGIN
    T *U = buf, *Bo = U + C * LP, *Nn = Bo + C * LP, *Hh = Nn + C * LP;
    V *Uv = (V *)U, *Bv = (V *)Bo, *Nv = (V *)Nn, *Hv = (V *)Hh;
    for (long t = t0; t < t1; ++t) {
        long bi, p0, len, sub;
        CAT(chunk_at, SUF)(t, chunks, L, P, &bi, &p0, &len, &sub);
        CAT(rows_in, SUF)(u + bi * C * P, U, C, P, p0, len, LP);
        long s = 0;
#if MV_PAIR
        for (; s + 2 <= sub; s += 2) {
            if (t + 1 < t1) {
                CAT(prefetch_next, SUF)(u, C, P, L, chunks, t, s);
                CAT(prefetch_next, SUF)(u, C, P, L, chunks, t, s + 1);
            }
            CAT(matvec2, SUF)(w1, C, 1, b1, Uv + s, vs, C, Hv + s, vs, H);
            for (long k = 0; k < H; ++k) {
                Hv[k * vs + s] = TANH(Hv[k * vs + s]);
                Hv[k * vs + s + 1] = TANH(Hv[k * vs + s + 1]);
            }
            CAT(matvec2, SUF)(w2, H, 1, b2, Hv + s, vs, H, Nv + s, vs, C);
            for (long c = 0; c < C; ++c) {
                Bv[c * vs + s] = Uv[c * vs + s] + tau[c] * Nv[c * vs + s];
                Bv[c * vs + s + 1] = Uv[c * vs + s + 1] + tau[c] * Nv[c * vs + s + 1];
            }
        }
#endif
        for (; s < sub; ++s) {
            if (t + 1 < t1) CAT(prefetch_next, SUF)(u, C, P, L, chunks, t, s);
            CAT(reaction_at, SUF)(w1, b1, w2, b2, Uv + s, vs, Hv + s, vs, Nv + s, vs, C, H);
            for (long c = 0; c < C; ++c) Bv[c * vs + s] = Uv[c * vs + s] + tau[c] * Nv[c * vs + s];
        }
        CAT(rows_out_nt, SUF)(Bo, out_b + bi * C * P, C, P, p0, len, LP);
        if (out_h) CAT(rows_out_nt, SUF)(Hh, out_h + bi * H * P, H, P, p0, len, LP);
        if (out_n) CAT(rows_out, SUF)(Nn, out_n + bi * C * P, C, P, p0, len, LP);
    }
    NT_FENCE
    FTZ_END
    free(buf);
    return 0;
}

/* The whole backward of b = u + tau N(u) for dL/db = gb, from u and the forward's hidden
 * activation h = tanh(W1 u + b1) (h_in, (B, H, P)):
 * gpre = (W2^T (tau gb)) (1 - h^2), gu = gu_in + W1^T gpre (written to out_gu), and the
 * parameter gradients added to acc (float64, laid out as
 * [gw1 (H, C) | gb1 (H) | gw2 (C, H) | gb2 (C) | gtau (C)]):
 * gw1 += gpre u^T, gb1 += sum gpre, gw2 += tau S, gb2 += tau s, gtau += sum gb N
 * with S = sum gb h^T and s = sum gb. N is never formed: sum gb_c N_c = sum_k W2[c, k]
 * S[c, k] + b2[c] s[c] (a product, not a difference, so no precision is lost for small
 * tau). */
int CAT(mlp_backward, SUF)(const T *u, const T *gb, const T *gu_in, const T *h_in,
                           const T *w1, const T *w2, const T *b2, const T *tau, T *out_gu,
                           long C, long H, long P, double *acc, long t0, long t1) {
    const long L = CAT(mlp_chunk_len, SUF)(C, H), LP = L + LANES, vs = LP / LANES;
    const long chunks = (P + L - 1) / L;
    /* scratch rows: u, gb, gu (C each), h, gpre (H each); u and h used only where the chunk
     * ends in a partial sub-tile */
    T *buf = CAT(scratch, SUF)(3 * C + 2 * H, LP);
    T *w2t = (T *)malloc(sizeof(T) * (size_t)(C * H + 1));        /* tau-scaled W2 */
    double *S = (double *)calloc((size_t)(C * H + C), sizeof(double)); /* S, then s */
    if (!buf || !w2t || !S) {
        free(buf);
        free(w2t);
        free(S);
        return 1;
    }
    FTZ_BEGIN
    T *U = buf, *G = U + C * LP, *GU = G + C * LP, *Hh = GU + C * LP, *GP = Hh + H * LP;
    V *Gv = (V *)G, *GUv = (V *)GU, *GPv = (V *)GP;
    double *gw1 = acc, *gb1 = gw1 + H * C, *gw2 = gb1 + H, *gb2 = gw2 + C * H, *gtau = gb2 + C;
    double *sgb = S + C * H;
    const V one = (V){} + (T)1;
    for (long c = 0; c < C; ++c)
        for (long k = 0; k < H; ++k) w2t[c * H + k] = tau[c] * w2[c * H + k];
    for (long t = t0; t < t1; ++t) {
        long bi, p0, len, sub;
        CAT(chunk_at, SUF)(t, chunks, L, P, &bi, &p0, &len, &sub);
        CAT(rows_in, SUF)(gb + bi * C * P, G, C, P, p0, len, LP);
        /* Only gb is copied to scratch (each sub-tile's matvec reads its C lines four
         * times: rows P apart would conflict in L1). Where the chunk has no partial sub-tile
         * (no read past its rows), h and u are read straight from their rows: h once per
         * sub-tile, then both streamed row by row by gemm_nt, which rows P apart do not
         * hurt; else they are copied, tails zero-filled. gu_in is added on the way out
         * instead of copied in and back. C harness A/B (2x32x48^3, one thread): 0.96x;
         * with the prefetch of out_gu below 0.935x. No prefetch of the next chunk: its
         * 3 C + H rows, a line each per sub-tile, were more outstanding misses than the core
         * holds (66.8 against 32.2 ms); copying or prefetching the next chunk's rows a few
         * whole rows per sub-tile did not help either (1.02-1.07x). */
        const int hdir = len % LANES == 0;
        const T *Hr = hdir ? h_in + bi * H * P + p0 : Hh;
        const long hs = hdir ? P : LP;
        const T *Ur = hdir ? u + bi * C * P + p0 : U;
        if (!hdir) {
            CAT(rows_in, SUF)(u + bi * C * P, U, C, P, p0, len, LP);
            CAT(rows_in, SUF)(h_in + bi * H * P, Hh, H, P, p0, len, LP);
        }
        for (long s = 0; s < sub; ++s) {
            /* W2 is (C, H): (W2^T)[o = k][i = c] = W2[c * H + k]; tau folded in */
            CAT(matvec, SUF)(w2t, 1, H, 0, Gv + s, vs, C, GPv + s, vs, H);
            for (long k = 0; k < H; ++k) {
                V h;
                memcpy(&h, Hr + k * hs + s * LANES, sizeof h);
                GPv[k * vs + s] *= one - h * h;
            }
            /* W1 is (H, C): (W1^T)[o = c][i = k] = W1[k * C + c] */
            CAT(matvec, SUF)(w1, 1, C, 0, GPv + s, vs, H, GUv + s, vs, C);
            /* out_gu's rows of this chunk fetched for writing, a row (a contiguous run) at a
             * time while the sub-tiles compute: its stores below then find them owned. The
             * gu_in rows prefetched too, or writing out_gu per sub-tile, were slower. */
            for (long c = s * C / sub; c < (s + 1) * C / sub; ++c) {
                char *go = (char *)(out_gu + (bi * C + c) * P + p0);
                for (long i = 0; i < (long)sizeof(T) * len; i += 64) __builtin_prefetch(go + i, 1, 3);
            }
        }
        for (long c = 0; c < C; ++c) {
            const T *gi = gu_in + (bi * C + c) * P + p0, *sg = GU + c * LP;
            T *go = out_gu + (bi * C + c) * P + p0;
            for (long i = 0; i < len; ++i) go[i] = gi[i] + sg[i];
        }
        /* zero-filled tail lanes have gb = 0 and gpre = 0: they add nothing below */
        CAT(gemm_nt, SUF)(GP, H, Ur, C, LP, hs, sub, gw1);
        CAT(row_sums, SUF)(GP, H, LP, sub, gb1);
        CAT(gemm_nt, SUF)(G, C, Hr, H, LP, hs, sub, S);
        CAT(row_sums, SUF)(G, C, LP, sub, sgb);
    }
    for (long c = 0; c < C; ++c) {
        double nt = (double)b2[c] * sgb[c];
        for (long k = 0; k < H; ++k) {
            gw2[c * H + k] += (double)tau[c] * S[c * H + k];
            nt += (double)w2[c * H + k] * S[c * H + k];
        }
        gb2[c] += (double)tau[c] * sgb[c];
        gtau[c] += nt;
    }
    FTZ_END
    free(S);
    free(w2t);
    free(buf);
    return 0;
}
