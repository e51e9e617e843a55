/* A thin convolution (k x k, stride 1, zero "same" padding) and the 2x2, stride-2 max-pool
 * that follows it, as one pass over each image: the full-resolution convolution output is
 * never written to memory. Built and loaded by advrepair/engine/native.py; the autograd side
 * is advrepair/engine/fused_conv_pool.py.
 *
 * Layouts: images (N, cin, H, W) contiguous; pooled output and gradient (N, H/2, W/2, C)
 * (channels-last); window codes (N, H/2, W/2, C) as bytes, 0..3 = (0,0) (0,1) (1,0) (1,1).
 * Ties and NaN follow PyTorch's CPU max-pool: the first maximum in scan order wins, and a NaN
 * replaces the running maximum.
 *
 * Work is split by image over PyTorch's OpenMP threads, or plain threads without them
 * (team.h). Each image is computed alone, in a fixed order, so its result never depends on its batch or on
 * the thread count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "team.h"

#define MAX_CHANNELS 256
#define MAX_TAPS 64
#define MAX_FOOTPRINT (4 * MAX_TAPS)  /* cin (k+1)^2 <= 4 cin k^2 */

typedef struct {
    const float *images, *weights, *bias, *grad;  /* weights: see each pass */
    const uint8_t *codes_in;
    float *pooled, *grad_images;
    uint8_t *codes;
    int64_t first, last;
    int in_channels, height, width, channels, kernel, footprint_padded, failed;
} job_t;

/* GCC vector extensions: 8 floats, lowered to whatever the CPU has (AVX2: one register) */
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
#define LANES 8

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof(v)); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof(v)); }

/* Forward. Weights as [tap][channel]. For 16 channels at a time, the four window positions'
 * accumulators (8 vectors) stay in registers, each weight vector is loaded once per window,
 * and the window's receptive field ((k+1) x (k+1) per input channel) is gathered once with
 * the zero padding written in. Channel counts that are not a multiple of 16 run the generic
 * loop below on the rest. */
static inline __attribute__((always_inline)) void forward_block16(
        const job_t *job, const float *patch, const int P, const int C, const int first, float *out, uint8_t *codes,
        const int k, const int cin) {
    v8 acc[4][2];
    const v8 b0 = load8(job->bias + first), b1 = load8(job->bias + first + LANES);
    for (int q = 0; q < 4; q++) { acc[q][0] = b0; acc[q][1] = b1; }
    for (int ci = 0; ci < cin; ci++) for (int dy = 0; dy < k; dy++) for (int dx = 0; dx < k; dx++) {
        const float *tap = job->weights + ((ci * k + dy) * k + dx) * C + first;
        const v8 w0 = load8(tap), w1 = load8(tap + LANES);
        const float *row = patch + (ci * P + dy) * P + dx;
        for (int q = 0; q < 4; q++) {
            const float v = row[(q >> 1) * P + (q & 1)];
            acc[q][0] += v * w0;
            acc[q][1] += v * w1;
        }
    }
    vi8 code[2] = {{0}, {0}};
    v8 best[2] = {acc[0][0], acc[0][1]};
    for (int q = 1; q < 4; q++) for (int half = 0; half < 2; half++) {
        const v8 v = acc[q][half];
        const vi8 take = (v > best[half]) | (v != v);  /* lanes: -1 where this position wins */
        best[half] = (v8)(((vi8)v & take) | ((vi8)best[half] & ~take));
        code[half] = (take & q) | (code[half] & ~take);
    }
    store8(out + first, best[0]);
    store8(out + first + LANES, best[1]);
    if (codes) {
        int32_t lanes[2 * LANES];
        memcpy(lanes, code, sizeof(lanes));
        for (int c = 0; c < 2 * LANES; c++) codes[first + c] = (uint8_t)lanes[c];
    }
}

static inline __attribute__((always_inline)) void forward_channel(
        const job_t *job, const float *patch, const int P, const int C, const int c, float *out, uint8_t *codes) {
    const int k = job->kernel, cin = job->in_channels;
    float best = 0.0f;
    uint8_t code = 0;
    for (int q = 0; q < 4; q++) {
        float acc = job->bias[c];
        for (int ci = 0; ci < cin; ci++) for (int dy = 0; dy < k; dy++) for (int dx = 0; dx < k; dx++)
            acc += patch[(ci * P + (q >> 1) + dy) * P + (q & 1) + dx] * job->weights[((ci * k + dy) * k + dx) * C + c];
        if (q == 0 || acc > best || acc != acc) { best = acc; code = (uint8_t)q; }
    }
    out[c] = best;
    if (codes) codes[c] = code;
}

static inline __attribute__((always_inline)) void forward_body(job_t *job, const int C, const int k, const int cin) {
    const int H = job->height, W = job->width, pad = k / 2;
    const int h = H / 2, w = W / 2, P = k + 1;
    float patch[4 * MAX_TAPS];  /* cin (k+1)^2 <= 4 cin k^2 */
    for (int64_t n = job->first; n < job->last; n++) {
        const float *x = job->images + n * (int64_t)cin * H * W;
        float *out = job->pooled + n * (int64_t)h * w * C;
        uint8_t *codes = job->codes ? job->codes + n * (int64_t)h * w * C : 0;
        for (int i = 0; i < h; i++) for (int j = 0; j < w; j++) {
            for (int ci = 0; ci < cin; ci++) for (int pr = 0; pr < P; pr++) for (int pc = 0; pc < P; pc++) {
                const int rr = 2 * i + pr - pad, ss = 2 * j + pc - pad;
                patch[(ci * P + pr) * P + pc] = (rr >= 0 && rr < H && ss >= 0 && ss < W) ? x[(ci * H + rr) * W + ss] : 0.0f;
            }
            const int64_t o = ((int64_t)i * w + j) * C;
            int c = 0;
            for (; c + 2 * LANES <= C; c += 2 * LANES) forward_block16(job, patch, P, C, c, out + o, codes ? codes + o : 0, k, cin);
            for (; c < C; c++) forward_channel(job, patch, P, C, c, out + o, codes ? codes + o : 0);
        }
    }
}

static int forward_images(const void *arg, int64_t first, int64_t last) {
    job_t local = *(const job_t *)arg, *job = &local;
    job->first = first;
    job->last = last;
    /* the zoo's shapes with every loop bound known to the compiler (2x faster here); any other
     * shape through the same code with run-time bounds */
    if (job->kernel == 3 && job->in_channels == 1 && job->channels == 32) forward_body(job, 32, 3, 1);
    else if (job->kernel == 3 && job->in_channels == 1 && job->channels == 64) forward_body(job, 64, 3, 1);
    else if (job->kernel == 3 && job->in_channels == 1) forward_body(job, job->channels, 3, 1);
    else if (job->kernel == 3 && job->in_channels == 3) forward_body(job, job->channels, 3, 3);
    else forward_body(job, job->channels, job->kernel, job->in_channels);
    return job->failed;
}

/* Backward. Each channel's pooled gradient lands at one of the window's four positions and
 * spreads from there over a k x k neighbourhood, all inside the window's (k+1) x (k+1)
 * receptive field (its "footprint", per input channel). The caller lays the weights out once
 * per window position on that footprint ([code][channel][footprint], zero where that
 * position's kernel does not reach), so a channel's whole contribution is one vector
 * multiply-add of the row its code picks; the footprint is then added onto a padded gradient
 * plane. */
typedef float v16 __attribute__((vector_size(64)));

/* One window's footprint when it has 16 lanes (3x3 kernels on one channel): four independent
 * chains of vector multiply-adds, one channel each. */
static inline __attribute__((always_inline)) void footprint16(const float *g, const uint8_t *codes,
                                                              const float *rows, const int C, float *out) {
    v16 s[4] = {{0}, {0}, {0}, {0}};
    for (int c = 0; c < C; c += 4)  /* C is a multiple of 4 here */
        for (int u = 0; u < 4; u++) {
            v16 row;
            memcpy(&row, rows + ((int64_t)(codes[c + u] & 3) * C + c + u) * 16, sizeof(row));
            s[u] += g[c + u] * row;
        }
    const v16 total = (s[0] + s[1]) + (s[2] + s[3]);
    memcpy(out, &total, sizeof(total));
}

static inline int is_finite(float v) { return v - v == 0.0f; }

/* The same footprint, where a NaN or infinite gradient reaches exactly the k x k taps PyTorch's
 * transposed convolution gives it (NaN times a zero weight is NaN there too) and not the
 * footprint's other lanes. Such a gradient makes the fast sum non-finite in every lane, so the
 * fast path detects it and calls this one for that window only. */
static void footprint_exact(const float *g, const uint8_t *codes, const float *rows, int C, int FP, int k, int cin,
                            float *out) {
    const int P = k + 1;
    for (int l = 0; l < FP; l++) out[l] = 0.0f;
    for (int c = 0; c < C; c++) {
        const int code = codes[c] & 3;
        const float *row = rows + ((int64_t)code * C + c) * FP;
        if (is_finite(g[c])) {
            for (int l = 0; l < FP; l++) out[l] += g[c] * row[l];
        } else {
            for (int ci = 0; ci < cin; ci++) for (int dy = 0; dy < k; dy++) for (int dx = 0; dx < k; dx++) {
                const int lane = (ci * P + (code >> 1) + dy) * P + (code & 1) + dx;
                out[lane] += g[c] * row[lane];
            }
        }
    }
}

static inline __attribute__((always_inline)) void backward_body(job_t *job, const int C, const int FP) {
    const int H = job->height, W = job->width, k = job->kernel, pad = k / 2, cin = job->in_channels;
    const int h = H / 2, w = W / 2, P = k + 1, PH = H + 2 * pad, PW = W + 2 * pad;
    float footprint[MAX_FOOTPRINT];
    float *plane = malloc(sizeof(float) * (size_t)cin * PH * PW);
    if (!plane) { job->failed = 1; return; }
    for (int64_t n = job->first; n < job->last; n++) {
        const float *g = job->grad + n * (int64_t)h * w * C;
        const uint8_t *codes = job->codes_in + n * (int64_t)h * w * C;
        memset(plane, 0, sizeof(float) * (size_t)cin * PH * PW);
        for (int i = 0; i < h; i++) for (int j = 0; j < w; j++) {
            const int64_t o = ((int64_t)i * w + j) * C;
            if (FP == 16 && k == 3 && cin == 1 && C % 4 == 0) {
                footprint16(g + o, codes + o, job->weights, C, footprint);
            } else {
                for (int l = 0; l < FP; l++) footprint[l] = 0.0f;
                for (int c = 0; c < C; c++) {
                    const float v = g[o + c];
                    const float *row = job->weights + ((int64_t)(codes[o + c] & 3) * C + c) * FP;
                    #pragma omp simd
                    for (int l = 0; l < FP; l++) footprint[l] += v * row[l];
                }
            }
            if (!is_finite(footprint[0])) footprint_exact(g + o, codes + o, job->weights, C, FP, k, cin, footprint);
            for (int ci = 0; ci < cin; ci++) for (int fr = 0; fr < P; fr++) {
                float *dst = plane + (ci * PH + 2 * i + fr) * PW + 2 * j;
                const int l0 = (ci * P + fr) * P;
                for (int fc = 0; fc < P; fc++)
                    dst[fc] += footprint[l0 + fc];
            }
        }
        float *gx = job->grad_images + n * (int64_t)cin * H * W;
        for (int ci = 0; ci < cin; ci++) for (int r = 0; r < H; r++)
            memcpy(gx + (ci * H + r) * W, plane + (ci * PH + r + pad) * PW + pad, W * sizeof(float));
    }
    free(plane);
}

static int backward_images(const void *arg, int64_t first, int64_t last) {
    job_t local = *(const job_t *)arg, *job = &local;
    job->first = first;
    job->last = last;
    if (job->channels == 32 && job->footprint_padded == 16) backward_body(job, 32, 16);
    else if (job->channels == 64 && job->footprint_padded == 16) backward_body(job, 64, 16);
    else backward_body(job, job->channels, job->footprint_padded);
    return job->failed;
}

void conv_pool_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    team_use_openmp(parallel, thread_num, num_threads);
}

static int bad_shape(int in_channels, int height, int width, int channels, int kernel) {
    return in_channels < 1 || height < 2 || width < 2 || height % 2 || width % 2 || channels < 1
        || channels > MAX_CHANNELS || kernel < 1 || kernel % 2 == 0 || in_channels * kernel * kernel > MAX_TAPS;
}

/* codes may be NULL (no gradient wanted). Returns 0, or -1 on a shape it does not handle. */
int conv_pool_forward(const float *images, const float *taps_by_channel, const float *bias, float *pooled,
                      uint8_t *codes, int64_t batch, int in_channels, int height, int width, int channels,
                      int kernel, int threads) {
    if (bad_shape(in_channels, height, width, channels, kernel) || batch < 0) return -1;
    if (batch == 0) return 0;
    job_t base = {0};
    base.images = images; base.weights = taps_by_channel; base.bias = bias;
    base.pooled = pooled; base.codes = codes;
    base.in_channels = in_channels; base.height = height; base.width = width;
    base.channels = channels; base.kernel = kernel;
    return team_run(&base, batch, threads, forward_images);
}

/* The images' gradient from the pooled output's gradient. weights_by_code: (4, channels,
 * footprint_padded) as described above backward_body. Returns 0, -1 on a bad shape or when
 * memory ran out. */
int conv_pool_backward(const float *grad, const uint8_t *codes, const float *weights_by_code, float *grad_images,
                       int64_t batch, int in_channels, int height, int width, int channels, int kernel,
                       int footprint_padded, int threads) {
    if (bad_shape(in_channels, height, width, channels, kernel) || batch < 0
        || footprint_padded < in_channels * (kernel + 1) * (kernel + 1) || footprint_padded > MAX_FOOTPRINT) return -1;
    if (batch == 0) return 0;
    job_t base = {0};
    base.grad = grad; base.codes_in = codes; base.weights = weights_by_code; base.grad_images = grad_images;
    base.in_channels = in_channels; base.height = height; base.width = width;
    base.channels = channels; base.kernel = kernel; base.footprint_padded = footprint_padded;
    return team_run(&base, batch, threads, backward_images);
}
