/* Splitting a batch of independent items (images, networks) over threads, shared by the
 * kernels in this folder.
 *
 * PyTorch's own OpenMP runtime, when the caller hands it over (KERNEL_use_openmp): its worker
 * threads are the ones that just ran the previous operation and spin waiting for the next, so
 * work given to them starts at once, while new threads would share the cores with them.
 * Without it, plain pthreads.
 *
 * A work function gets the caller's job and a range [first, last) of items, and returns 0, or
 * nonzero when it failed (memory ran out). Which thread takes which items never changes what
 * an item computes: every kernel computes an item alone, in a fixed order.
 */
#ifndef ADVREPAIR_TEAM_H
#define ADVREPAIR_TEAM_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define TEAM_MAX_THREADS 64

typedef int (*team_work_t)(const void *job, int64_t first, int64_t last);
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_t)(void);

static gomp_parallel_t team_gomp_parallel = 0;
static omp_int_t team_thread_num = 0, team_num_threads = 0;

static void team_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    team_gomp_parallel = (gomp_parallel_t)parallel;
    team_thread_num = (omp_int_t)thread_num;
    team_num_threads = (omp_int_t)num_threads;
}

typedef struct {
    const void *job;
    team_work_t work;
    int64_t batch, first, last;
    int threads, failed;
} team_share_t;

static void team_openmp_member(void *arg) {
    team_share_t *shares = (team_share_t *)arg;
    const int t = team_thread_num(), threads = team_num_threads();
    if (t >= TEAM_MAX_THREADS) return;
    team_share_t *share = &shares[t];
    const int64_t batch = shares[0].batch;
    share->failed = shares[0].work(shares[0].job, batch * t / threads, batch * (t + 1) / threads);
}

static void *team_thread_member(void *arg) {
    team_share_t *share = (team_share_t *)arg;
    share->failed = share->work(share->job, share->first, share->last);
    return 0;
}

/* Runs work over [0, batch) on up to `threads` threads; 0, or -1 when a share failed. */
static int team_run(const void *job, int64_t batch, int threads, team_work_t work) {
    if (threads > TEAM_MAX_THREADS) threads = TEAM_MAX_THREADS;
    if (threads > batch) threads = (int)batch;
    if (threads < 1) threads = 1;
    team_share_t shares[TEAM_MAX_THREADS];
    memset(shares, 0, sizeof(shares));
    shares[0].job = job;
    shares[0].work = work;
    shares[0].batch = batch;
    int failed = 0;
    if (team_gomp_parallel) {
        team_gomp_parallel(team_openmp_member, shares, (unsigned)threads, 0);
        for (int t = 0; t < threads; t++) failed |= shares[t].failed;
        return failed ? -1 : 0;
    }
    pthread_t ids[TEAM_MAX_THREADS];
    int started[TEAM_MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        shares[t].job = job;
        shares[t].work = work;
        shares[t].first = batch * t / threads;
        shares[t].last = batch * (t + 1) / threads;
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], 0, team_thread_member, &shares[t]) == 0;
    team_thread_member(&shares[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], 0);
        else team_thread_member(&shares[t]);  /* a thread that could not start: its share runs here */
    }
    for (int t = 0; t < threads; t++) failed |= shares[t].failed;
    return failed ? -1 : 0;
}

#endif
