/*
 * dw4_basic.c: a Boltzmann-generator estimate for the DW-4 system through the eqflow C API.
 *
 * Creates an (untrained) flow for N = 4 particles in D = 2 dimensions and the DW-4 double-well
 * energy (a = 0, b = -4, c = 0.9, d0 = 4), draws 1000 samples (or as many as the first
 * argument says) with their log-densities, checks
 * that eqf_flow_log_density returns the same log q for them, evaluates the energies and reports
 * the Kish effective sample size of the importance weights w = exp(-U/kT - log q), kT = 1.
 *
 * Valid C99 and C++17. Exit status 0 on success, 1 on any failure (with a message on stderr).
 */
#include <eqflow.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PARTICLES 4
#define DIM 2
#define DEFAULT_SAMPLES 1000
#define SEED_FLOW 7
#define SEED_SAMPLES 2020
#define KT 1.0

/* Prints the failed call with eqflow's message for the calling thread. */
static void fail(const char *call, int32_t status) {
    char message[512];
    eqf_last_error_message(message, sizeof message);
    fprintf(stderr, "%s failed with status %d: %s\n", call, (int)status, message);
}

#define CHECK(call)                                                                      \
    do {                                                                                 \
        int32_t status_ = (call);                                                        \
        if (status_ != EQF_OK) {                                                         \
            fail(#call, status_);                                                        \
            goto cleanup;                                                                \
        }                                                                                \
    } while (0)

#define REQUIRE(condition, ...)                                                          \
    do {                                                                                 \
        if (!(condition)) {                                                              \
            fprintf(stderr, "check failed: %s: ", #condition);                            \
            fprintf(stderr, __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                       \
            goto cleanup;                                                                \
        }                                                                                \
    } while (0)

int main(int argc, char **argv) {
    /* Optional sample count; the valgrind test passes a small one. */
    const int64_t n_samples = argc > 1 ? (int64_t)strtol(argv[1], NULL, 10) : DEFAULT_SAMPLES;
    const int64_t per_sample = N_PARTICLES * DIM;
    int exit_code = 1;
    eqf_flow *flow = NULL;
    eqf_energy *energy = NULL;
    double *x = NULL, *log_q = NULL, *log_q_again = NULL, *energies = NULL, *energies_again = NULL,
           *gradient = NULL, *log_w = NULL;
    double max_difference = 0.0, sum_log_q = 0.0, sum_energy = 0.0, max_log_w = -INFINITY;
    double sum_w = 0.0, sum_w2 = 0.0, ess = 0.0;
    int64_t s, i, k;

    REQUIRE(n_samples >= 1, "the sample count must be positive");
    x = (double *)malloc(sizeof(double) * n_samples * per_sample);
    gradient = (double *)malloc(sizeof(double) * n_samples * per_sample);
    log_q = (double *)malloc(sizeof(double) * n_samples);
    log_q_again = (double *)malloc(sizeof(double) * n_samples);
    energies = (double *)malloc(sizeof(double) * n_samples);
    energies_again = (double *)malloc(sizeof(double) * n_samples);
    log_w = (double *)malloc(sizeof(double) * n_samples);
    REQUIRE(x && gradient && log_q && log_q_again && energies && energies_again && log_w,
            "out of memory");

    CHECK(eqf_flow_new(N_PARTICLES, DIM, SEED_FLOW, &flow));
    REQUIRE(eqf_flow_n_particles(flow) == N_PARTICLES, "n_particles %lld",
            (long long)eqf_flow_n_particles(flow));
    REQUIRE(eqf_flow_dim(flow) == DIM, "dim %lld", (long long)eqf_flow_dim(flow));
    CHECK(eqf_energy_double_well(N_PARTICLES, DIM, 0.0, -4.0, 0.9, 4.0, &energy));

    /* Samples x[s][i][k] = x[(s*N + i)*D + k], centre of mass at the origin. */
    CHECK(eqf_flow_sample(flow, SEED_SAMPLES, n_samples, x, log_q));
    for (s = 0; s < n_samples; s++) {
        REQUIRE(isfinite(log_q[s]), "log_q[%lld] = %g", (long long)s, log_q[s]);
        for (k = 0; k < DIM; k++) {
            double com = 0.0;
            for (i = 0; i < N_PARTICLES; i++) {
                com += x[(s * N_PARTICLES + i) * DIM + k];
            }
            com /= N_PARTICLES;
            REQUIRE(fabs(com) <= 1e-10, "sample %lld has centre of mass %g along %lld",
                    (long long)s, com, (long long)k);
        }
    }

    /* The density of a proposal and the density evaluated later must agree (exact-discrete). */
    CHECK(eqf_flow_log_density(flow, n_samples, x, log_q_again));
    for (s = 0; s < n_samples; s++) {
        double difference = fabs(log_q[s] - log_q_again[s]);
        /* Written so that a NaN difference fails too. */
        REQUIRE(difference <= 1e-8, "sample %lld: log q %.17g from sampling, %.17g evaluated",
                (long long)s, log_q[s], log_q_again[s]);
        if (difference > max_difference) {
            max_difference = difference;
        }
    }

    /* Energies, once without and once with the gradient: the values must be identical. */
    CHECK(eqf_energy_eval(energy, n_samples, x, energies, NULL));
    CHECK(eqf_energy_eval(energy, n_samples, x, energies_again, gradient));
    for (s = 0; s < n_samples; s++) {
        double net[DIM] = {0.0};
        REQUIRE(energies[s] == energies_again[s], "U[%lld] differs with the gradient",
                (long long)s);
        /* The pair energy is translation invariant: its gradient sums to zero. */
        for (i = 0; i < N_PARTICLES; i++) {
            for (k = 0; k < DIM; k++) {
                net[k] += gradient[(s * N_PARTICLES + i) * DIM + k];
            }
        }
        for (k = 0; k < DIM; k++) {
            REQUIRE(fabs(net[k]) <= 1e-9 * (1.0 + fabs(energies[s])),
                    "sum of gradient[%lld] along %lld = %g", (long long)s, (long long)k,
                    net[k]);
        }
    }

    /* log w = -U/kT - log q; Kish ESS = (sum w)^2 / sum w^2, computed with w scaled by
     * exp(-max log w) so that nothing overflows (the scale cancels in the ratio). */
    for (s = 0; s < n_samples; s++) {
        log_w[s] = -energies[s] / KT - log_q[s];
        REQUIRE(isfinite(log_w[s]), "log_w[%lld] = %g", (long long)s, log_w[s]);
        if (log_w[s] > max_log_w) {
            max_log_w = log_w[s];
        }
        sum_log_q += log_q[s];
        sum_energy += energies[s];
    }
    for (s = 0; s < n_samples; s++) {
        double w = exp(log_w[s] - max_log_w);
        sum_w += w;
        sum_w2 += w * w;
    }
    ess = sum_w * sum_w / sum_w2;
    REQUIRE(ess >= 1.0 - 1e-12 && ess <= n_samples * (1.0 + 1e-12), "ESS = %g", ess);

    printf("eqflow %s (C ABI %d)\n", eqf_version(), (int)eqf_abi_version());
    printf("DW-4, untrained flow, %lld samples\n", (long long)n_samples);
    printf("max |log q difference| = %.3e\n", max_difference);
    printf("mean log q             = %.6f\n", sum_log_q / n_samples);
    printf("mean energy            = %.6f\n", sum_energy / n_samples);
    printf("ESS                    = %.3f\n", ess);
    printf("ESS / n                = %.6f\n", ess / n_samples);
    exit_code = 0;

cleanup:
    if (eqf_flow_free(flow) != EQF_OK || eqf_energy_free(energy) != EQF_OK) {
        exit_code = 1;
    }
    free(x);
    free(gradient);
    free(log_q);
    free(log_q_again);
    free(energies);
    free(energies_again);
    free(log_w);
    return exit_code;
}
