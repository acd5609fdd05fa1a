/*
 * train_dw4.c: training a flow from C on the host's own samples, the workflow of a simulation
 * code that wants a Boltzmann generator for its system (here DW-4: 4 particles in 2-D, pairwise
 * double well a = 0, b = -4, c = 0.9, d0 = 4, kT = 1).
 *
 * 1. The host runs its own Metropolis Monte Carlo (energy and random numbers in C) and keeps
 *    every THIN-th configuration: a training and a validation set.
 * 2. An untrained flow is trained by maximum likelihood on those samples (eqf_flow_train), with
 *    a progress callback that prints the NLLs of every epoch on this program's stdout.
 * 3. A short ML+KL phase follows (lambda from 1 down to 0.5) whose KL term uses the host's
 *    energy-and-gradient callback; the callback checks that eqflow calls it only on this
 *    thread.
 * 4. The model is saved (eqf_flow_save) to a temporary file, loaded back and compared.
 * 5. Checks that can fail: the validation NLL fell against the untrained flow, the acceptance
 *    rate of flow moves (eqf_move_step) rose clearly above the untrained flow's, and a progress
 *    callback that returns non-zero stops training early.
 *
 * Usage: train_dw4 [--quick]   (--quick: tiny sizes for valgrind; skips the quality checks)
 * Valid C99 and C++17. Exit status 0 on success, 1 on any failure (message on stderr).
 */
#include <eqflow.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PARTICLES 4
#define DIM 2
#define PER_SAMPLE (N_PARTICLES * DIM)
#define KT 1.0
#define LOCAL_STEP 0.6
#define THIN 20
#define BURN_IN 4000
#define MAX_SAMPLES 512
#define SEED_FLOW 7
#define SEED_MOVE 99
#define SEED_TRAIN 2024

/* The host's potential: parameters of the double well. */
typedef struct {
    double a, b, c, d0;
} double_well;

/* U(x) and, if `gradient` is not NULL, +dU/dx (the gradient, not the force). */
static double dw_energy(const double_well *p, const double *x, double *gradient) {
    double u = 0.0;
    int i, j, k;
    if (gradient != NULL) {
        memset(gradient, 0, PER_SAMPLE * sizeof *gradient);
    }
    for (i = 0; i < N_PARTICLES; i++) {
        for (j = i + 1; j < N_PARTICLES; j++) {
            double r[DIM], d2 = 0.0, d, s, dudd;
            for (k = 0; k < DIM; k++) {
                r[k] = x[i * DIM + k] - x[j * DIM + k];
                d2 += r[k] * r[k];
            }
            d = sqrt(d2);
            s = d - p->d0;
            u += p->a * s + p->b * s * s + p->c * s * s * s * s;
            if (gradient != NULL && d > 0.0) {
                dudd = p->a + 2.0 * p->b * s + 4.0 * p->c * s * s * s;
                for (k = 0; k < DIM; k++) {
                    gradient[i * DIM + k] += dudd * r[k] / d;
                    gradient[j * DIM + k] -= dudd * r[k] / d;
                }
            }
        }
    }
    return u;
}

/* What the KL callback needs: the potential, the thread it may run on, and statistics. */
typedef struct {
    double_well potential;
    pthread_t owner;
    long n_calls;
    long n_foreign_thread;
} host_energy;

/* eqf_energy_grad_fn: U and +dU/dx of one configuration. */
static int32_t energy_and_gradient(void *user, int64_t n_particles, int64_t dim,
                                   const double *x, double *U, double *gradient) {
    host_energy *host = (host_energy *)user;
    if (n_particles != N_PARTICLES || dim != DIM) {
        return 1; /* eqflow reports EQF_ERR_CALLBACK */
    }
    host->n_calls++;
    if (!pthread_equal(pthread_self(), host->owner)) {
        host->n_foreign_thread++;
    }
    *U = dw_energy(&host->potential, x, gradient);
    return 0;
}

/* eqf_energy_fn for the flow moves. */
static int32_t energy_only(void *user, int64_t n_particles, int64_t dim, const double *x,
                           double *U) {
    (void)n_particles;
    (void)dim;
    *U = dw_energy(&((host_energy *)user)->potential, x, NULL);
    return 0;
}

/* eqf_train_progress_fn: one line per epoch; stops after `stop_after` epochs (0 = never). */
typedef struct {
    const char *phase;
    int64_t stop_after;
    int64_t n_reports;
} progress_state;

static int32_t progress(void *user, const eqf_train_epoch *report) {
    progress_state *state = (progress_state *)user;
    state->n_reports++;
    printf("%-6s epoch %2lld/%lld  lambda %.3f  train NLL %8.4f", state->phase,
           (long long)report->epoch + 1, (long long)report->n_epochs, report->lambda,
           report->train_nll);
    if (!isnan(report->train_kl)) {
        printf("  train KL %9.4f", report->train_kl);
    }
    if (!isnan(report->validation_nll)) {
        printf("  validation NLL %8.4f", report->validation_nll);
    }
    printf("  (%.2f s)\n", report->elapsed_seconds);
    return state->stop_after > 0 && state->n_reports >= state->stop_after;
}

/* splitmix64: the host's own random numbers. */
static uint64_t host_rng = 12345;
static double uniform(void) {
    uint64_t z = (host_rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* The host's Metropolis chain: single-particle moves; every THIN-th state after burn-in is
 * copied into samples[n][N][D]. The chain's state persists between calls, so a second call
 * continues it. */
static void host_mcmc(const double_well *p, long n, double *samples) {
    static double x[PER_SAMPLE] = {0.0, 0.0, 2.6, 0.0, 0.0, 2.6, 2.6, 2.6};
    double trial[PER_SAMPLE];
    double U = dw_energy(p, x, NULL);
    long step, kept = 0;
    int k;
    for (step = 1; kept < n; step++) {
        int i = (int)(uniform() * N_PARTICLES);
        double U_trial;
        memcpy(trial, x, sizeof x);
        for (k = 0; k < DIM; k++) {
            trial[i * DIM + k] += LOCAL_STEP * (2.0 * uniform() - 1.0);
        }
        U_trial = dw_energy(p, trial, NULL);
        if (uniform() < exp(-(U_trial - U) / KT)) {
            memcpy(x, trial, sizeof x);
            U = U_trial;
        }
        if (step > BURN_IN && step % THIN == 0) {
            memcpy(samples + kept * PER_SAMPLE, x, sizeof x);
            kept++;
        }
    }
}

static void report_failure(const char *call, int32_t status) {
    char message[512];
    eqf_last_error_message(message, sizeof message);
    fprintf(stderr, "%s failed with status %d: %s\n", call, (int)status, message);
}

#define TRY(call)                             \
    do {                                      \
        int32_t status_ = (call);             \
        if (status_ != EQF_OK) {              \
            report_failure(#call, status_);   \
            goto cleanup;                     \
        }                                     \
    } while (0)

#define REQUIRE(condition, ...)               \
    do {                                      \
        if (!(condition)) {                   \
            fprintf(stderr, __VA_ARGS__);     \
            fprintf(stderr, "\n");            \
            goto cleanup;                     \
        }                                     \
    } while (0)

/* Mean -log q of n configurations (the flow's own density: exact for its RK4 map). */
static int32_t mean_nll(const eqf_flow *flow, long n, const double *x, double *nll) {
    static double log_q[MAX_SAMPLES];
    long s;
    int32_t status = eqf_flow_log_density(flow, n, x, log_q);
    *nll = 0.0;
    for (s = 0; s < n; s++) {
        *nll -= log_q[s] / (double)n;
    }
    return status;
}

/* Acceptance rate of n_moves flow moves (only flow moves) started from x0. */
static int32_t acceptance(const eqf_flow *flow, host_energy *host, const double *x0,
                          long n_moves, double *rate) {
    eqf_move *move = NULL;
    double x[PER_SAMPLE], U;
    int64_t n_proposed = 0, n_accepted = 0;
    int32_t accepted, status;
    long i;
    memcpy(x, x0, sizeof x);
    U = dw_energy(&host->potential, x, NULL);
    status = eqf_move_new(flow, KT, SEED_MOVE, &move);
    for (i = 0; i < n_moves && status == EQF_OK; i++) {
        status = eqf_move_step(move, x, &U, energy_only, host, &accepted);
    }
    if (status == EQF_OK) {
        status = eqf_move_stats(move, &n_proposed, &n_accepted);
    }
    eqf_move_free(move);
    *rate = n_proposed > 0 ? (double)n_accepted / (double)n_proposed : 0.0;
    return status;
}

int main(int argc, char **argv) {
    static double train[MAX_SAMPLES * PER_SAMPLE], validation[MAX_SAMPLES * PER_SAMPLE];
    static double log_q_a[MAX_SAMPLES], log_q_b[MAX_SAMPLES];
    host_energy host;
    progress_state state;
    eqf_flow *flow = NULL, *untrained = NULL, *loaded = NULL, *stopped = NULL, *discrete = NULL;
    eqf_train_options *options = NULL;
    eqf_train_summary ml, mlkl, early, exact;
    double nll_untrained, nll_trained, nll_discrete, rate_untrained = 0.0, rate_trained = 0.0;
    char path[256];
    int quick = 0, exit_code = 1, local = 0;
    long n_train = 384, n_validation = 128, n_moves = 2000, s;
    int64_t ml_epochs = 8, kl_epochs = 2, kl_samples = 16;

    if (argc == 2 && strcmp(argv[1], "--quick") == 0) {
        quick = 1;
        n_train = 64;
        n_validation = 32;
        n_moves = 50;
        ml_epochs = 1;
        kl_epochs = 2; /* the first epoch of lambda 1 -> 0.5 has no KL term */
        kl_samples = 4;
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
        return 1;
    }
    host.potential.a = 0.0;
    host.potential.b = -4.0;
    host.potential.c = 0.9;
    host.potential.d0 = 4.0;
    host.owner = pthread_self();
    host.n_calls = 0;
    host.n_foreign_thread = 0;
    sprintf(path, "/tmp/eqflow-train-dw4-%p.json", (void *)&local);

    /* 1. The host's samples (any centre of mass: eqflow removes it). */
    host_mcmc(&host.potential, n_train, train);
    host_mcmc(&host.potential, n_validation, validation);

    /* 2. Maximum likelihood from an untrained flow. */
    TRY(eqf_flow_new(N_PARTICLES, DIM, SEED_FLOW, &flow));
    TRY(eqf_flow_new(N_PARTICLES, DIM, SEED_FLOW, &untrained));
    TRY(mean_nll(untrained, n_validation, validation, &nll_untrained));
    TRY(eqf_train_options_new(&options));
    TRY(eqf_train_options_set_epochs(options, ml_epochs));
    TRY(eqf_train_options_set_batch_size(options, 32));
    TRY(eqf_train_options_set_seed(options, SEED_TRAIN));
    state.phase = "ML";
    state.stop_after = 0;
    state.n_reports = 0;
    TRY(eqf_train_options_set_progress(options, progress, &state));
    ml.size = sizeof ml;
    TRY(eqf_flow_train(flow, options, n_train, train, n_validation, validation, &ml));
    REQUIRE(ml.size == sizeof ml && ml.n_epochs == ml_epochs && ml.stopped_early == 0,
            "unexpected ML summary");
    REQUIRE(state.n_reports == ml_epochs, "%lld progress reports", (long long)state.n_reports);
    REQUIRE(ml.n_steps == ml_epochs * ((n_train + 31) / 32), "%lld steps", (long long)ml.n_steps);

    /* 3. ML + KL with the host's energy and gradient: lambda from 1 to 0.5. */
    TRY(eqf_train_options_set_epochs(options, kl_epochs));
    TRY(eqf_train_options_set_lambda_linear(options, 1.0, 0.5));
    TRY(eqf_train_options_set_kl_samples(options, kl_samples));
    TRY(eqf_train_options_set_kT(options, KT));
    TRY(eqf_train_options_set_kl_energy_fn(options, energy_and_gradient, &host));
    state.phase = "ML+KL";
    state.n_reports = 0;
    mlkl.size = sizeof mlkl;
    TRY(eqf_flow_train(flow, options, n_train, train, n_validation, validation, &mlkl));
    /* The first epoch has lambda = 1 (no KL term) unless there is only one. */
    REQUIRE(host.n_calls > 0 && host.n_calls % kl_samples == 0, "%ld KL energy calls",
            host.n_calls);
    REQUIRE(host.n_foreign_thread == 0, "the KL callback ran on another thread %ld times",
            host.n_foreign_thread);
    /* Strict mode (the default): training leaves the flow certified one-to-one at its RK4 step
     * count, raising the count where the trained field needs more than its 20. */
    {
        int32_t certified = 0, method = 0, mode = 0;
        int64_t n_steps = 0;
        double contraction = 0.0, rtol = 0.0, atol = 0.0;
        TRY(eqf_flow_certificate(flow, &certified, &contraction, NULL));
        TRY(eqf_flow_integrator(flow, &method, &n_steps, &rtol, &atol, &mode));
        REQUIRE(certified == 1 && contraction < 1.0 && n_steps >= 20,
                "the trained flow is not certified (bound %.3f at %lld steps)", contraction,
                (long long)n_steps);
        printf("trained flow certified at %lld RK4 steps (worst step bound %.3f)\n",
               (long long)n_steps, contraction);
    }
    TRY(mean_nll(flow, n_validation, validation, &nll_trained));

    /* 4. Save, load back: the same densities, bit for bit. */
    TRY(eqf_flow_save(flow, path));
    TRY(eqf_flow_load(path, &loaded));
    TRY(eqf_flow_log_density(flow, n_validation, validation, log_q_a));
    TRY(eqf_flow_log_density(loaded, n_validation, validation, log_q_b));
    for (s = 0; s < n_validation; s++) {
        REQUIRE(log_q_a[s] == log_q_b[s], "the loaded model differs at sample %ld", s);
    }

    /* 5. A progress callback that returns non-zero stops training: not an error. */
    TRY(eqf_flow_new(N_PARTICLES, DIM, SEED_FLOW, &stopped));
    TRY(eqf_train_options_set_lambda(options, 1.0));
    TRY(eqf_train_options_set_epochs(options, 5));
    state.phase = "stop";
    state.stop_after = 1;
    state.n_reports = 0;
    early.size = sizeof early;
    TRY(eqf_flow_train(stopped, options, n_train, train, 0, NULL, &early));
    REQUIRE(early.stopped_early == 1 && early.n_epochs == 1 && state.n_reports == 1,
            "early stop: stopped_early %lld after %lld epochs", (long long)early.stopped_early,
            (long long)early.n_epochs);

    /* 6. Maximum likelihood of the exact-discrete density: the density the flow samples and
     *    evaluates with, trained directly (lambda is 1 from step 5: no KL term). */
    TRY(eqf_flow_new(N_PARTICLES, DIM, SEED_FLOW, &discrete));
    TRY(eqf_train_options_set_objective(options, EQF_OBJECTIVE_DISCRETE_LIKELIHOOD));
    TRY(eqf_train_options_set_epochs(options, ml_epochs));
    state.phase = "ML exact-discrete";
    state.stop_after = 0;
    state.n_reports = 0;
    exact.size = sizeof exact;
    TRY(eqf_flow_train(discrete, options, n_train, train, n_validation, validation, &exact));
    TRY(mean_nll(discrete, n_validation, validation, &nll_discrete));
    /* The validation NLL training reports is the flow's own density (of the field; the flow
     * integrates its tabulated form, which agrees to ~1e-6). */
    REQUIRE(fabs(exact.best_validation_nll - nll_discrete) < 1e-3,
            "exact-discrete training reports %.6f, the flow's density gives %.6f",
            exact.best_validation_nll, nll_discrete);

    TRY(acceptance(untrained, &host, train, n_moves, &rate_untrained));
    TRY(acceptance(flow, &host, train, n_moves, &rate_trained));

    printf("host MCMC: %ld training and %ld validation configurations\n", n_train,
           n_validation);
    printf("validation NLL (exact RK4 density): untrained %.4f, trained %.4f\n", nll_untrained,
           nll_trained);
    printf("best ML epoch %lld of %lld (validation NLL %.4f, %lld steps, %.2f s); "
           "ML+KL: %ld host energy calls\n",
           (long long)ml.best_epoch + 1, (long long)ml.n_epochs, ml.best_validation_nll,
           (long long)ml.n_steps, ml.wall_seconds, host.n_calls);
    printf("exact-discrete ML: validation NLL %.4f\n", nll_discrete);
    printf("flow-move acceptance over %ld moves: untrained %.4f, trained %.4f\n", n_moves,
           rate_untrained, rate_trained);
    printf("saved and reloaded %s\n", path);
    if (!quick) {
        REQUIRE(nll_trained < nll_untrained - 1.0, "training did not lower the NLL enough");
        REQUIRE(nll_discrete < nll_untrained - 1.0,
                "exact-discrete training did not lower the NLL enough");
        REQUIRE(rate_trained > 0.02 && rate_trained > 4.0 * rate_untrained,
                "training did not raise the acceptance rate enough");
    }
    printf("train_dw4: ok\n");
    exit_code = 0;

cleanup:
    remove(path);
    eqf_train_options_free(options);
    eqf_flow_free(flow);
    eqf_flow_free(untrained);
    eqf_flow_free(loaded);
    eqf_flow_free(stopped);
    eqf_flow_free(discrete);
    return exit_code;
}
