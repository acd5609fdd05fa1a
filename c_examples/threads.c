/*
 * threads.c: the thread contract of the C API, checked with pthreads.
 *
 * One flow is shared by N_THREADS threads (flows are immutable); each thread drives its own move
 * (a move belongs to one thread at a time) through a chain of local random-walk moves and flow
 * moves on DW-4, with its own seed, and also evaluates batch log-densities and samples with the
 * shared flow while the other threads run. Afterwards the same chains are run one after
 * another on the main thread: every final state, energy, statistic and batch result must be
 * identical bit for bit, whatever the scheduling.
 *
 * Usage: threads [--steps N]. Valid C99 and C++17. Exit status 0 on success.
 */
#include <eqflow.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PARTICLES 4
#define DIM 2
#define LEN (N_PARTICLES * DIM)
#define N_THREADS 4
#define N_BATCH 16

typedef struct {
    /* inputs */
    const eqf_flow *flow;
    uint64_t seed;
    long n_steps;
    /* results */
    double x[LEN];
    double U;
    int64_t n_proposed, n_accepted;
    double batch_x[N_BATCH * LEN], batch_log_q[N_BATCH], log_q_again[N_BATCH];
    int32_t status;
    char message[256];
} chain;

static double dw_energy(const double *x) {
    double u = 0.0;
    int i, j;
    for (i = 0; i < N_PARTICLES; i++) {
        for (j = i + 1; j < N_PARTICLES; j++) {
            double dx = x[i * DIM] - x[j * DIM], dy = x[i * DIM + 1] - x[j * DIM + 1];
            double s = sqrt(dx * dx + dy * dy) - 4.0;
            u += -4.0 * s * s + 0.9 * s * s * s * s;
        }
    }
    return u;
}

static int32_t energy_callback(void *user, int64_t n_particles, int64_t dim, const double *x,
                               double *U) {
    long *n_calls = (long *)user;
    if (n_particles * dim != LEN) {
        return 1;
    }
    (*n_calls)++;
    *U = dw_energy(x);
    return 0;
}

/* A per-chain splitmix64, so that the host's randomness is per thread too. */
static double uniform(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

#define TRY(call)                                                                         \
    do {                                                                                  \
        c->status = (call);                                                               \
        if (c->status != EQF_OK) {                                                        \
            eqf_last_error_message(c->message, sizeof c->message);                        \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)

static void *run_chain(void *argument) {
    chain *c = (chain *)argument;
    eqf_move *move = NULL;
    uint64_t host_rng = c->seed * 1000003u;
    long step, n_calls = 0;
    int32_t accepted;
    double trial[LEN];
    int k;

    c->status = EQF_OK;
    TRY(eqf_move_new(c->flow, 1.0, c->seed, &move));
    /* Start from a flow sample of this chain's seed (a batch call on the shared flow). */
    TRY(eqf_flow_sample(c->flow, c->seed, N_BATCH, c->batch_x, c->batch_log_q));
    memcpy(c->x, c->batch_x, sizeof c->x);
    c->U = dw_energy(c->x);
    for (step = 0; step < c->n_steps; step++) {
        /* A local move of every coordinate, then a flow move. */
        double U_trial;
        for (k = 0; k < LEN; k++) {
            trial[k] = c->x[k] + 0.4 * (2.0 * uniform(&host_rng) - 1.0);
        }
        U_trial = dw_energy(trial);
        if (uniform(&host_rng) < exp(-(U_trial - c->U))) {
            memcpy(c->x, trial, sizeof trial);
            c->U = U_trial;
        }
        TRY(eqf_move_step(move, c->x, &c->U, energy_callback, &n_calls, &accepted));
    }
    if (n_calls != c->n_steps) {
        c->status = -1;
        snprintf(c->message, sizeof c->message, "%ld energy calls for %ld steps", n_calls,
                 c->n_steps);
        goto done;
    }
    TRY(eqf_move_stats(move, &c->n_proposed, &c->n_accepted));
    /* Another batch call on the shared flow while other threads use it. */
    TRY(eqf_flow_log_density(c->flow, N_BATCH, c->batch_x, c->log_q_again));
done:
    eqf_move_free(move);
    return NULL;
}

static int same_results(const chain *a, const chain *b) {
    return memcmp(a->x, b->x, sizeof a->x) == 0 && memcmp(&a->U, &b->U, sizeof a->U) == 0 &&
           a->n_proposed == b->n_proposed && a->n_accepted == b->n_accepted &&
           memcmp(a->batch_x, b->batch_x, sizeof a->batch_x) == 0 &&
           memcmp(a->batch_log_q, b->batch_log_q, sizeof a->batch_log_q) == 0 &&
           memcmp(a->log_q_again, b->log_q_again, sizeof a->log_q_again) == 0;
}

int main(int argc, char **argv) {
    static chain threaded[N_THREADS], sequential[N_THREADS];
    pthread_t threads[N_THREADS];
    eqf_flow *flow = NULL;
    long n_steps = 200;
    int32_t status;
    int t, failures = 0;

    if (argc == 3 && strcmp(argv[1], "--steps") == 0) {
        n_steps = strtol(argv[2], NULL, 10);
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--steps N]\n", argv[0]);
        return 1;
    }
    if ((status = eqf_flow_new(N_PARTICLES, DIM, 3, &flow)) != EQF_OK) {
        fprintf(stderr, "eqf_flow_new failed with status %d\n", (int)status);
        return 1;
    }
    /* Batch calls in the threads use eqflow's pool: keep it small next to our own threads. */
    if ((status = eqf_set_num_threads(2)) != EQF_OK) {
        fprintf(stderr, "eqf_set_num_threads failed with status %d\n", (int)status);
        eqf_flow_free(flow);
        return 1;
    }

    for (t = 0; t < N_THREADS; t++) {
        threaded[t].flow = sequential[t].flow = flow;
        threaded[t].seed = sequential[t].seed = 100 + (uint64_t)t;
        threaded[t].n_steps = sequential[t].n_steps = n_steps;
    }
    for (t = 0; t < N_THREADS; t++) {
        if (pthread_create(&threads[t], NULL, run_chain, &threaded[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (t = 0; t < N_THREADS; t++) {
        pthread_join(threads[t], NULL);
    }
    /* Sequentially, with a different pool size: the results must not change. */
    eqf_set_num_threads(1);
    for (t = 0; t < N_THREADS; t++) {
        run_chain(&sequential[t]);
    }

    for (t = 0; t < N_THREADS; t++) {
        const chain *c = &threaded[t];
        if (c->status != EQF_OK || sequential[t].status != EQF_OK) {
            fprintf(stderr, "chain %d failed: %s%s\n", t, c->message, sequential[t].message);
            failures++;
            continue;
        }
        if (!same_results(c, &sequential[t])) {
            fprintf(stderr, "chain %d: threaded and sequential results differ\n", t);
            failures++;
        }
        if (t > 0 && memcmp(c->x, threaded[0].x, sizeof c->x) == 0) {
            fprintf(stderr, "chains 0 and %d ended in the same state\n", t);
            failures++;
        }
        printf("chain %d (seed %llu): %lld / %lld flow moves accepted, final U = %.6f\n", t,
               (unsigned long long)c->seed, (long long)c->n_accepted, (long long)c->n_proposed,
               c->U);
    }
    eqf_set_num_threads(0);
    eqf_flow_free(flow);
    printf("threads: %d chains on %d threads, %s\n", N_THREADS, N_THREADS,
           failures == 0 ? "identical to the sequential run" : "MISMATCH");
    return failures == 0 ? 0 : 1;
}
