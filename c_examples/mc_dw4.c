/*
 * mc_dw4.c: a small standalone Monte Carlo program for DW-4 (4 particles in 2-D, pairwise double
 * well a = 0, b = -4, c = 0.9, d0 = 4, kT = 1) that mixes the host's own local random-walk moves
 * with eqflow's Boltzmann-generator flow moves.
 *
 * The energy is the host's (computed here in C, as a simulation code would), handed to eqflow
 * through an eqf_energy_fn callback. Every cycle does N_LOCAL single-particle random-walk moves
 * and one flow move (eqf_move_step). Without --model the flow is untrained and its moves are
 * rarely accepted on DW-4; with a trained model (`--model models/dw4.json`, loaded with
 * eqf_flow_load) the same program makes frequent global moves.
 *
 * Prints the acceptance rates of both kinds of move and the populations of the states, labelled
 * by the number of short pairs (pair distance below d0 = 4).
 *
 * Usage: mc_dw4 [--cycles N] [--model PATH]
 * Valid C99 and C++17. Exit status 0 on success, 1 on any failure (message on stderr).
 */
#include <eqflow.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PARTICLES 4
#define DIM 2
#define N_PAIRS (N_PARTICLES * (N_PARTICLES - 1) / 2)
#define N_LOCAL 8
#define LOCAL_STEP 0.6
#define KT 1.0
#define SEED_FLOW 7
#define SEED_MOVE 2024
#define SEED_HOST 12345

/* The host's potential: parameters of the double well. */
typedef struct {
    double a, b, c, d0;
} double_well;

static double pair_distance(const double *x, int i, int j) {
    double dx = x[i * DIM] - x[j * DIM], dy = x[i * DIM + 1] - x[j * DIM + 1];
    return sqrt(dx * dx + dy * dy);
}

static double dw_energy(const double_well *p, const double *x) {
    double u = 0.0;
    int i, j;
    for (i = 0; i < N_PARTICLES; i++) {
        for (j = i + 1; j < N_PARTICLES; j++) {
            double s = pair_distance(x, i, j) - p->d0;
            u += p->a * s + p->b * s * s + p->c * s * s * s * s;
        }
    }
    return u;
}

/* eqf_energy_fn: `user` carries the potential's parameters. */
static int32_t energy_callback(void *user, int64_t n_particles, int64_t dim, const double *x,
                               double *U) {
    if (n_particles != N_PARTICLES || dim != DIM) {
        return 1; /* eqflow reports EQF_ERR_CALLBACK */
    }
    *U = dw_energy((const double_well *)user, x);
    return 0;
}

/* splitmix64: the host's own random numbers (eqflow's are separate and seeded by SEED_MOVE). */
static uint64_t host_rng = SEED_HOST;
static double uniform(void) {
    uint64_t z = (host_rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static void report(const char *call, int32_t status) {
    char message[512];
    eqf_last_error_message(message, sizeof message);
    fprintf(stderr, "%s failed with status %d: %s\n", call, (int)status, message);
}

/* The flow used for proposals: a trained model if one is given, else an untrained flow. */
static int32_t create_flow(const char *model_path, eqf_flow **out) {
    if (model_path != NULL) {
        int32_t status = eqf_flow_load(model_path, out);
        if (status == EQF_OK &&
            (eqf_flow_n_particles(*out) != N_PARTICLES || eqf_flow_dim(*out) != DIM)) {
            fprintf(stderr, "--model %s is not a DW-4 model\n", model_path);
            eqf_flow_free(*out);
            *out = NULL;
            return EQF_ERR_INVALID_ARGUMENT;
        }
        return status;
    }
    return eqf_flow_new(N_PARTICLES, DIM, SEED_FLOW, out);
}

static int short_pairs(const double *x, double d0) {
    int i, j, n = 0;
    for (i = 0; i < N_PARTICLES; i++) {
        for (j = i + 1; j < N_PARTICLES; j++) {
            n += pair_distance(x, i, j) < d0;
        }
    }
    return n;
}

int main(int argc, char **argv) {
    double_well potential = {0.0, -4.0, 0.9, 4.0};
    const char *model_path = NULL;
    long n_cycles = 2000, cycle;
    eqf_flow *flow = NULL;
    eqf_move *move = NULL;
    double x[N_PARTICLES * DIM], trial[N_PARTICLES * DIM], log_q;
    double U, com_before[DIM], com_after[DIM];
    long local_tried = 0, local_accepted = 0, populations[N_PAIRS + 1] = {0};
    int64_t flow_proposed = 0, flow_accepted = 0;
    int32_t status, accepted;
    int exit_code = 1, i, k, s;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cycles") == 0 && i + 1 < argc) {
            n_cycles = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model_path = argv[++i];
        } else {
            fprintf(stderr, "usage: %s [--cycles N] [--model PATH]\n", argv[0]);
            return 1;
        }
    }
    if (n_cycles < 1) {
        fprintf(stderr, "--cycles must be positive\n");
        return 1;
    }

    if ((status = create_flow(model_path, &flow)) != EQF_OK) {
        report("create_flow", status);
        goto cleanup;
    }
    if ((status = eqf_move_new(flow, KT, SEED_MOVE, &move)) != EQF_OK) {
        report("eqf_move_new", status);
        goto cleanup;
    }
    /* The move keeps its own copy of the flow: the handle may go now. */
    eqf_flow_free(flow);
    flow = NULL;

    /* Start from a square near the inner minimum of every side, centred at (10, -5). */
    {
        const double square[N_PARTICLES * DIM] = {0.0, 0.0, 2.6, 0.0, 0.0, 2.6, 2.6, 2.6};
        for (i = 0; i < N_PARTICLES * DIM; i++) {
            x[i] = square[i] + (i % DIM == 0 ? 10.0 : -5.0);
        }
    }
    U = dw_energy(&potential, x);

    for (cycle = 0; cycle < n_cycles; cycle++) {
        /* The host's local moves: displace one particle uniformly in a square. */
        for (s = 0; s < N_LOCAL; s++) {
            int p = (int)(uniform() * N_PARTICLES);
            double U_trial;
            memcpy(trial, x, sizeof x);
            for (k = 0; k < DIM; k++) {
                trial[p * DIM + k] += LOCAL_STEP * (2.0 * uniform() - 1.0);
            }
            U_trial = dw_energy(&potential, trial);
            local_tried++;
            if (uniform() < exp(-(U_trial - U) / KT)) {
                memcpy(x, trial, sizeof x);
                U = U_trial;
                local_accepted++;
            }
        }
        /* One flow move. It keeps the centre of mass; on acceptance x and U are replaced. */
        for (k = 0; k < DIM; k++) {
            com_before[k] = 0.0;
            for (i = 0; i < N_PARTICLES; i++) {
                com_before[k] += x[i * DIM + k] / N_PARTICLES;
            }
        }
        status = eqf_move_step(move, x, &U, energy_callback, &potential, &accepted);
        if (status != EQF_OK) {
            report("eqf_move_step", status);
            goto cleanup;
        }
        for (k = 0; k < DIM; k++) {
            com_after[k] = 0.0;
            for (i = 0; i < N_PARTICLES; i++) {
                com_after[k] += x[i * DIM + k] / N_PARTICLES;
            }
            if (fabs(com_after[k] - com_before[k]) > 1e-9) {
                fprintf(stderr, "the flow move changed the centre of mass\n");
                goto cleanup;
            }
        }
        populations[short_pairs(x, potential.d0)]++;
    }

    /* The energy tracked through both kinds of move must be the energy of the final state. */
    if (fabs(U - dw_energy(&potential, x)) > 1e-9 * (1.0 + fabs(U))) {
        fprintf(stderr, "tracked energy %.17g, recomputed %.17g\n", U, dw_energy(&potential, x));
        goto cleanup;
    }
    if ((status = eqf_move_stats(move, &flow_proposed, &flow_accepted)) != EQF_OK) {
        report("eqf_move_stats", status);
        goto cleanup;
    }
    if (flow_proposed != n_cycles || flow_accepted < 0 || flow_accepted > flow_proposed) {
        fprintf(stderr, "unexpected statistics %lld / %lld\n", (long long)flow_accepted,
                (long long)flow_proposed);
        goto cleanup;
    }
    /* A last sanity check of the C API: the final state has a finite log-density. */
    {
        eqf_flow *check = NULL;
        if ((status = create_flow(model_path, &check)) != EQF_OK ||
            (status = eqf_flow_log_density(check, 1, x, &log_q)) != EQF_OK) {
            report("eqf_flow_log_density", status);
            eqf_flow_free(check);
            goto cleanup;
        }
        eqf_flow_free(check);
    }

    printf("DW-4 Monte Carlo, kT = %.1f, %ld cycles of %d local moves + 1 flow move\n", KT,
           n_cycles, N_LOCAL);
    printf("local moves: %ld / %ld accepted (%.3f)\n", local_accepted, local_tried,
           (double)local_accepted / (double)local_tried);
    printf("flow moves:  %lld / %lld accepted (%.4f), %s\n",
           (long long)flow_accepted, (long long)flow_proposed,
           (double)flow_accepted / (double)flow_proposed,
           model_path != NULL ? model_path : "untrained flow");
    printf("final U = %.6f, log q = %.6f\n", U, log_q);
    printf("state populations (number of pairs with d < d0):\n");
    for (i = 0; i <= N_PAIRS; i++) {
        printf("  %d short pairs: %.4f\n", i, (double)populations[i] / (double)n_cycles);
    }
    exit_code = 0;

cleanup:
    eqf_move_free(move);
    eqf_flow_free(flow);
    return exit_code;
}
