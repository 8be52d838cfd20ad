/* Fused random-Fourier-feature kernels for the CPU (see patchmmd/_native.py, which compiles and loads this).
 *
 * For one image x (C x Hp x Wp, reflect-padded, float32) and m random frequencies (W: m x K, K = C k^2, and
 * phases b), the angle of feature j at patch centre (y, x) is
 *
 *     z_j(y, x) = b_j + sum_{c, dy, dx} W[j, (c, dy, dx)] * img[c, y + dy, x + dx].
 *
 * rff_block_sums: sums of cos(z_j) and sin(z_j) over blocks of bh x bw patch centres (forward pass).
 * rff_grad_image: given G_c = dL/d(block sum of cos) and G_s = dL/d(block sum of sin), the gradient with
 *                 respect to the image: dL/dimg[c, y + dy, x + dx] += sum_j W[j, (c, dy, dx)] dz_j(y, x) with
 *                 dz_j = G_s cos z_j - G_c sin z_j = A cos(z_j + phi) (backward pass; angles are recomputed,
 *                 nothing is stored).
 *
 * The convolution, the sine/cosine and the block sums are done in registers, J frequencies x P vectors of V
 * patch centres at a time (each weight broadcast once for P vectors, each pixel loaded once for J
 * frequencies), so no (m x H x W) tensor is ever written. sin/cos(2 pi t) use a range reduction to
 * t in [-1/2, 1/2] turns and polynomials whose coefficients the loader passes in (fitted there); the maximal
 * absolute error in float32 is below 1e-6 (tests/test_native.py checks it against float64).
 *
 * Plain C11 with GCC/Clang vector extensions: portable to any target those compilers vectorise for.
 */
#include <stddef.h>
#include <string.h>

#ifndef V
#define V 16 /* patch centres per vector */
#endif
#ifndef P
#define P 2 /* vectors per register block (along a row: P * V consecutive centres) */
#endif
#ifndef J
#define J 8 /* frequencies per register block */
#endif
#ifndef S
#define S 4 /* sines/cosines evaluated together (interleaved Horner chains) */
#endif
#define NCOEF 7

typedef float vf __attribute__((vector_size(V * sizeof(float))));

static inline vf loadu(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }

static inline vf splat(float a) { /* a broadcast (not 0 + a: that is an addition the compiler must keep) */
    vf v;
    for (int i = 0; i < V; ++i) v[i] = a;
    return v;
}

/* cos(z) and sin(z) of S vectors: z -> t = z / 2 pi, r = t - round(t) in [-1/2, 1/2]; cos = Pc(r^2),
 * sin = r Ps(r^2). The S Horner chains are interleaved (one alone is latency-bound). */
static inline void sincos_s(const vf *z, const float *cc, const float *sc, vf *c, vf *s) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    vf r[S], u[S];
#pragma GCC unroll 16
    for (int i = 0; i < S; ++i) {
        vf t = z[i] * 0.15915494309189535f;
        r[i] = t - ((t + magic) - magic);
        u[i] = r[i] * r[i];
        c[i] = u[i] * cc[NCOEF - 1] + cc[NCOEF - 2];
        s[i] = u[i] * sc[NCOEF - 1] + sc[NCOEF - 2];
    }
#pragma GCC unroll 8
    for (int d = NCOEF - 3; d >= 0; --d) {
#pragma GCC unroll 16
        for (int i = 0; i < S; ++i) {
            c[i] = c[i] * u[i] + cc[d];
            s[i] = s[i] * u[i] + sc[d];
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < S; ++i) s[i] *= r[i];
}

/* cos(z) only, for S vectors (same reduction and polynomial as sincos_s). */
static inline void cos_s(const vf *z, const float *cc, vf *c) {
    const float magic = 12582912.0f;
    vf u[S];
#pragma GCC unroll 16
    for (int i = 0; i < S; ++i) {
        vf t = z[i] * 0.15915494309189535f;
        vf r = t - ((t + magic) - magic);
        u[i] = r * r;
        c[i] = u[i] * cc[NCOEF - 1] + cc[NCOEF - 2];
    }
#pragma GCC unroll 8
    for (int d = NCOEF - 3; d >= 0; --d) {
#pragma GCC unroll 16
        for (int i = 0; i < S; ++i) c[i] = c[i] * u[i] + cc[d];
    }
}

static inline void sincos_block(const vf z[J], const float *cc, const float *sc, vf c[J], vf s[J]) {
#pragma GCC unroll 16
    for (int jj = 0; jj < J; jj += S) sincos_s(z + jj, cc, sc, c + jj, s + jj);
}

/* Adds the angles of J frequencies (rows g .. g + J of W) at the P * V patch centres starting at (y, x0) to z
 * (which holds the phases). */
static inline void angles(const float *img, int C, int Hp, int Wp, int k, int K, const float *W, int g, int y,
                          int x0, vf z[P][J]) {
    int kk = 0;
    for (int c = 0; c < C; ++c) {
        for (int dy = 0; dy < k; ++dy) {
            const float *row = img + ((size_t)c * Hp + (size_t)(y + dy)) * Wp + x0;
            for (int dx = 0; dx < k; ++dx, ++kk) {
                vf v[P];
#pragma GCC unroll 4
                for (int q = 0; q < P; ++q) v[q] = loadu(row + dx + q * V);
                const float *w = W + (size_t)g * K + kk;
#pragma GCC unroll 16
                for (int jj = 0; jj < J; ++jj) {
                    const float wj = w[(size_t)jj * K];
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) z[q][jj] += wj * v[q];
                }
            }
        }
    }
}

/* Block sums of cos(z_j) and sin(z_j), j in [j0, j1) (a multiple of J apart), for one image.
 * img: (C, Hp, Wp) with Hp >= hc + k - 1 and Wp >= wcp + k - 1; wcp: wc rounded up to a multiple of P * V.
 * out_c, out_s: (m, hc / bh, wc / bw) for this image (rows j0 .. j1 written).
 * work: 2 * J * wcp floats. */
void rff_block_sums(const float *img, int C, int Hp, int Wp, int k, int hc, int wc, int wcp, int bh, int bw,
                    const float *W, const float *b, int j0, int j1, const float *cc, const float *sc, float *out_c,
                    float *out_s, float *work) {
    const int K = C * k * k, hb = hc / bh, wb = wc / bw;
    float *acc_c = work, *acc_s = work + (size_t)J * wcp;
    for (int g = j0; g < j1; g += J) {
        for (int by = 0; by < hb; ++by) {
            memset(work, 0, sizeof(float) * 2 * (size_t)J * wcp);
            for (int y = by * bh; y < (by + 1) * bh; ++y) {
                for (int x0 = 0; x0 < wcp; x0 += P * V) {
                    vf z[P][J];
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
                        const float bj = b[g + jj];
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) z[q][jj] = splat(bj);
                    }
                    angles(img, C, Hp, Wp, k, K, W, g, y, x0, z);
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) {
                        vf c[J], s[J];
                        sincos_block(z[q], cc, sc, c, s);
#pragma GCC unroll 16
                        for (int jj = 0; jj < J; ++jj) {
                            float *pc = acc_c + (size_t)jj * wcp + x0 + q * V, *ps = acc_s + (size_t)jj * wcp + x0 + q * V;
                            storeu(pc, loadu(pc) + c[jj]);
                            storeu(ps, loadu(ps) + s[jj]);
                        }
                    }
                }
            }
            for (int jj = 0; jj < J; ++jj) {
                const float *rc = acc_c + (size_t)jj * wcp, *rs = acc_s + (size_t)jj * wcp;
                float *oc = out_c + ((size_t)(g + jj) * hb + by) * wb, *os = out_s + ((size_t)(g + jj) * hb + by) * wb;
                for (int bx = 0; bx < wb; ++bx) {
                    float sc_ = 0.0f, ss_ = 0.0f;
                    for (int x = bx * bw; x < (bx + 1) * bw; ++x) {
                        sc_ += rc[x];
                        ss_ += rs[x];
                    }
                    oc[bx] = sc_;
                    os[bx] = ss_;
                }
            }
        }
    }
}

/* Gradient with respect to the (padded) image of one image, from the patch centres of rows y in [y0, y1).
 * The gradients of the block sums, G_c = dL/d(sum of cos z_j) and G_s = dL/d(sum of sin z_j), enter in the
 * form amp = hypot(G_c, G_s), phs = atan2(G_c, G_s): then dz_j = G_s cos z_j - G_c sin z_j = amp cos(z_j + phs),
 * one cosine per angle. amp, phs: (m, hc / bh, wc / bw); m a multiple of J.
 * gimg: (C, Hg, Wg), Hg >= y1 - y0 + k - 1, Wg >= wcp + k - 1, zero on entry; row 0 is image row y0. Gradients are
 * added into it (the transposed convolution), so bands of rows may go to separate buffers.
 * work: 2 * m * wcp + K * P * V floats. */
void rff_grad_image(const float *img, int C, int Hp, int Wp, int k, int hc, int wc, int wcp, int bh, int bw,
                    const float *W, const float *b, int m, const float *cc, const float *amp, const float *phs,
                    int y0, int y1, float *gimg, int Hg, int Wg, float *work) {
    const int K = C * k * k, hb = hc / bh, wb = wc / bw;
    float *ea = work, *ep = work + (size_t)m * wcp, *gacc = work + 2 * (size_t)m * wcp;
    int expanded = -1;
    for (int y = y0; y < y1; ++y) {
        const int by = y / bh;
        if (by != expanded) { /* per-centre copies of this block row's amplitudes (zero past wc) and phases + b */
            for (int j = 0; j < m; ++j) {
                const float *ra = amp + ((size_t)j * hb + by) * wb, *rp = phs + ((size_t)j * hb + by) * wb;
                float *pa = ea + (size_t)j * wcp, *pp = ep + (size_t)j * wcp;
                for (int x = 0; x < wcp; ++x) {
                    const int inside = x < wb * bw;
                    pa[x] = inside ? ra[x / bw] : 0.0f;
                    pp[x] = b[j] + (inside ? rp[x / bw] : 0.0f);
                }
            }
            expanded = by;
        }
        for (int x0 = 0; x0 < wcp; x0 += P * V) {
            memset(gacc, 0, sizeof(float) * (size_t)K * P * V);
            for (int g = 0; g < m; g += J) {
                vf z[P][J], dz[P][J];
#pragma GCC unroll 16
                for (int jj = 0; jj < J; ++jj) {
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) z[q][jj] = loadu(ep + (size_t)(g + jj) * wcp + x0 + q * V);
                }
                angles(img, C, Hp, Wp, k, K, W, g, y, x0, z);
#pragma GCC unroll 4
                for (int q = 0; q < P; ++q) {
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; jj += S) cos_s(z[q] + jj, cc, dz[q] + jj);
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) dz[q][jj] *= loadu(ea + (size_t)(g + jj) * wcp + x0 + q * V);
                }
                for (int kk = 0; kk < K; ++kk) {
                    vf a[P];
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) a[q] = loadu(gacc + ((size_t)kk * P + q) * V);
                    const float *w = W + (size_t)g * K + kk;
#pragma GCC unroll 16
                    for (int jj = 0; jj < J; ++jj) {
                        const float wj = w[(size_t)jj * K];
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q) a[q] += wj * dz[q][jj];
                    }
#pragma GCC unroll 4
                    for (int q = 0; q < P; ++q) storeu(gacc + ((size_t)kk * P + q) * V, a[q]);
                }
            }
            int kk = 0;
            for (int c = 0; c < C; ++c) {
                for (int dy = 0; dy < k; ++dy) {
                    float *row = gimg + ((size_t)c * Hg + (size_t)(y - y0 + dy)) * Wg + x0;
                    for (int dx = 0; dx < k; ++dx, ++kk) {
#pragma GCC unroll 4
                        for (int q = 0; q < P; ++q)
                            storeu(row + dx + q * V, loadu(row + dx + q * V) + loadu(gacc + ((size_t)kk * P + q) * V));
                    }
                }
            }
        }
    }
}
