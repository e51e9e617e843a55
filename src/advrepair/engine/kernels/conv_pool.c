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
 * Work is split by image over PyTorch's OpenMP threads, or plain threads without them. Each
 * image is computed alone, in a fixed order, so its result never depends on its batch or on
 * the thread count.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 256
#define MAX_TAPS 64
#define MAX_THREADS 64

typedef struct {
    const float *images, *taps_by_channel, *bias, *grad;
    const uint8_t *codes_in;
    float *pooled, *grad_images;
    uint8_t *codes;
    int64_t first, last;
    int in_channels, height, width, channels, kernel, taps_padded, failed;
} job_t;

/* weights as [tap][channel]: one vector of channels per tap */
static inline __attribute__((always_inline)) void forward_body(job_t *job, const int C) {
    const int H = job->height, W = job->width, k = job->kernel, pad = k / 2, cin = job->in_channels;
    const int h = H / 2, w = W / 2;
    float acc[MAX_CHANNELS], best[MAX_CHANNELS];
    uint8_t best_code[MAX_CHANNELS];
    for (int64_t n = job->first; n < job->last; n++) {
        const float *x = job->images + n * (int64_t)cin * H * W;
        float *out = job->pooled + n * (int64_t)h * w * C;
        uint8_t *codes = job->codes ? job->codes + n * (int64_t)h * w * C : 0;
        for (int i = 0; i < h; i++) for (int j = 0; j < w; j++) {
            for (int q = 0; q < 4; q++) {
                const int r = 2 * i + (q >> 1), s = 2 * j + (q & 1);
                #pragma omp simd
                for (int c = 0; c < C; c++) acc[c] = job->bias[c];
                for (int ci = 0; ci < cin; ci++) for (int dy = 0; dy < k; dy++) {
                    const int rr = r + dy - pad;
                    if (rr < 0 || rr >= H) continue;
                    for (int dx = 0; dx < k; dx++) {
                        const int ss = s + dx - pad;
                        if (ss < 0 || ss >= W) continue;
                        const float v = x[(ci * H + rr) * W + ss];
                        const float *tap = job->taps_by_channel + ((ci * k + dy) * k + dx) * C;
                        #pragma omp simd
                        for (int c = 0; c < C; c++) acc[c] += v * tap[c];
                    }
                }
                if (q == 0) {
                    #pragma omp simd
                    for (int c = 0; c < C; c++) { best[c] = acc[c]; best_code[c] = 0; }
                } else {
                    #pragma omp simd
                    for (int c = 0; c < C; c++) {
                        const int take = (acc[c] > best[c]) | (acc[c] != acc[c]);
                        best[c] = take ? acc[c] : best[c];
                        best_code[c] = take ? (uint8_t)q : best_code[c];
                    }
                }
            }
            const int64_t o = ((int64_t)i * w + j) * C;
            memcpy(out + o, best, C * sizeof(float));
            if (codes) memcpy(codes + o, best_code, C);
        }
    }
}

static void *forward_images(void *arg) {
    job_t *job = (job_t *)arg;
    switch (job->channels) {
    case 32: forward_body(job, 32); break;
    case 64: forward_body(job, 64); break;
    default: forward_body(job, job->channels);
    }
    return 0;
}

/* weights as [channel][tap], taps zero-padded to TP: per window position, the gradient's
 * channels that chose it, folded onto the taps; then each tap added back at its offset */
static inline __attribute__((always_inline)) void backward_body(job_t *job, const int C, const int TP) {
    const int H = job->height, W = job->width, k = job->kernel, pad = k / 2, cin = job->in_channels;
    const int h = H / 2, w = W / 2, PH = H + 2 * pad, PW = W + 2 * pad;
    float masked[4][MAX_CHANNELS], sums[4][MAX_TAPS];
    float *plane = malloc(sizeof(float) * (size_t)cin * PH * PW);
    if (!plane) { job->failed = 1; return; }
    for (int64_t n = job->first; n < job->last; n++) {
        const float *g = job->grad + n * (int64_t)h * w * C;
        const uint8_t *codes = job->codes_in + n * (int64_t)h * w * C;
        memset(plane, 0, sizeof(float) * (size_t)cin * PH * PW);
        for (int i = 0; i < h; i++) for (int j = 0; j < w; j++) {
            const int64_t o = ((int64_t)i * w + j) * C;
            for (int q = 0; q < 4; q++) {
                #pragma omp simd
                for (int c = 0; c < C; c++) masked[q][c] = codes[o + c] == q ? g[o + c] : 0.0f;
                #pragma omp simd
                for (int t = 0; t < TP; t++) sums[q][t] = 0.0f;
            }
            for (int c = 0; c < C; c++) {
                const float *taps = job->taps_by_channel + (int64_t)c * TP;
                for (int q = 0; q < 4; q++) {
                    const float v = masked[q][c];
                    #pragma omp simd
                    for (int t = 0; t < TP; t++) sums[q][t] += v * taps[t];
                }
            }
            for (int q = 0; q < 4; q++) {
                const int r = 2 * i + (q >> 1), s = 2 * j + (q & 1);
                for (int ci = 0; ci < cin; ci++) for (int dy = 0; dy < k; dy++)
                    for (int dx = 0; dx < k; dx++)
                        plane[(ci * PH + r + dy) * PW + s + dx] += sums[q][(ci * k + dy) * k + dx];
            }
        }
        float *gx = job->grad_images + n * (int64_t)cin * H * W;
        for (int ci = 0; ci < cin; ci++) for (int r = 0; r < H; r++)
            memcpy(gx + (ci * H + r) * W, plane + (ci * PH + r + pad) * PW + pad, W * sizeof(float));
    }
    free(plane);
}

static void *backward_images(void *arg) {
    job_t *job = (job_t *)arg;
    if (job->channels == 32 && job->taps_padded == 16) backward_body(job, 32, 16);
    else if (job->channels == 64 && job->taps_padded == 16) backward_body(job, 64, 16);
    else backward_body(job, job->channels, job->taps_padded);
    return 0;
}

/* PyTorch's own OpenMP runtime, when the caller hands it over (conv_pool_use_openmp): its
 * worker threads are the ones that just ran the previous operation and spin waiting for the
 * next, so work given to them starts at once, while new threads would share the cores with
 * them. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_t)(void);
static gomp_parallel_t gomp_parallel = 0;
static omp_int_t omp_thread_num = 0, omp_num_threads = 0;

void conv_pool_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    gomp_parallel = (gomp_parallel_t)parallel;
    omp_thread_num = (omp_int_t)thread_num;
    omp_num_threads = (omp_int_t)num_threads;
}

typedef struct { const job_t *base; job_t *jobs; int64_t batch; void *(*work)(void *); } team_t;

static void team_member(void *arg) {
    team_t *team = (team_t *)arg;
    const int t = omp_thread_num(), threads = omp_num_threads();
    if (t >= MAX_THREADS) return;
    job_t *job = &team->jobs[t];
    *job = *team->base;
    job->first = team->batch * t / threads;
    job->last = team->batch * (t + 1) / threads;
    team->work(job);
}

static int run_split(job_t base, int64_t batch, int threads, void *(*work)(void *)) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > batch) threads = (int)batch;
    if (threads < 1) threads = 1;
    if (gomp_parallel) {
        job_t jobs[MAX_THREADS];
        memset(jobs, 0, sizeof(jobs));
        team_t team = {&base, jobs, batch, work};
        gomp_parallel(team_member, &team, (unsigned)threads, 0);
        int failed = 0;
        for (int t = 0; t < threads; t++) failed |= jobs[t].failed;
        return failed ? -1 : 0;
    }
    pthread_t ids[MAX_THREADS];
    job_t jobs[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        jobs[t] = base;
        jobs[t].first = batch * t / threads;
        jobs[t].last = batch * (t + 1) / threads;
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], 0, work, &jobs[t]) == 0;
    work(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], 0);
        else work(&jobs[t]);  /* a thread that could not start: its share runs here */
    }
    int failed = 0;
    for (int t = 0; t < threads; t++) failed |= jobs[t].failed;
    return failed ? -1 : 0;
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
    base.images = images; base.taps_by_channel = taps_by_channel; base.bias = bias;
    base.pooled = pooled; base.codes = codes;
    base.in_channels = in_channels; base.height = height; base.width = width;
    base.channels = channels; base.kernel = kernel;
    return run_split(base, batch, threads, forward_images);
}

/* The images' gradient from the pooled output's gradient. Returns 0, -1 on a bad shape or
 * when memory ran out. */
int conv_pool_backward(const float *grad, const uint8_t *codes, const float *taps_by_channel, float *grad_images,
                       int64_t batch, int in_channels, int height, int width, int channels, int kernel,
                       int taps_padded, int threads) {
    if (bad_shape(in_channels, height, width, channels, kernel) || batch < 0
        || taps_padded < in_channels * kernel * kernel || taps_padded > MAX_TAPS) return -1;
    if (batch == 0) return 0;
    job_t base = {0};
    base.grad = grad; base.codes_in = codes; base.taps_by_channel = taps_by_channel; base.grad_images = grad_images;
    base.in_channels = in_channels; base.height = height; base.width = width;
    base.channels = channels; base.kernel = kernel; base.taps_padded = taps_padded;
    return run_split(base, batch, threads, backward_images);
}
