/*
 * flow_options.c: a flow for the host's own system, configured through eqf_flow_options.
 *
 * The host here simulates 6 particles in 3-D in nanometres (an octahedral cluster of edge
 * 0.35 nm, thermally jiggled): far from the double-well preset of eqf_flow_new, whose distance
 * kernels lie on [0, 8]. It
 *
 * 1. derives the distance range and prior sigma from its own configurations in one call
 *    (eqf_flow_options_fit_scales) and reads them back (eqf_flow_options_scales);
 * 2. sets the other settings (kernel counts, integrator, seed) and builds a flow
 *    (eqf_flow_new_with_options), whose samples have the exact density of the flow's map;
 * 3. checks the contract of the options object: NULL pointers and bad values give their
 *    documented status and a message, and a failed call leaves the options unchanged (a flow
 *    built after the failures is bit-identical to one built before);
 * 4. declares two particle species (eqf_flow_options_set_species): the flow is then
 *    equivariant under permutations within a species only, so swapping two particles of one
 *    species keeps log q and swapping two of different species changes it; and builds the
 *    matching Lennard-Jones energy with per-species-pair parameters
 *    (eqf_energy_lennard_jones_species).
 *
 * Usage: flow_options   Valid C99 and C++17. Exit status 0 on success, 1 on any failure.
 */
#include <eqflow.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define N_PARTICLES 6
#define DIM 3
#define PER_CONFIG (N_PARTICLES * DIM)
#define N_CONFIGS 200
#define N_SAMPLES 8

static int n_failed = 0;

static void check(int condition, const char *what) {
    if (!condition) {
        char message[512];
        eqf_last_error_message(message, sizeof message);
        fprintf(stderr, "check failed: %s (last error: %s)\n", what, message);
        n_failed++;
    }
}

/* A failed call: the expected status and a message that mentions `needle`. */
static void rejected(int32_t status, int32_t expected, const char *needle, const char *what) {
    char message[512];
    eqf_last_error_message(message, sizeof message);
    if (status != expected || strstr(message, needle) == NULL) {
        fprintf(stderr, "check failed: %s: status %d (expected %d), message \"%s\"\n", what,
                (int)status, (int)expected, message);
        n_failed++;
    }
}

/* A small deterministic generator (the host's own random numbers). */
static double uniform(unsigned long long *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)((*state >> 11) & ((1ULL << 53) - 1)) / 9007199254740992.0;
}

/* N_CONFIGS jiggled octahedra of edge 0.35 nm (vertices at +-a on each axis, a = edge/sqrt 2),
 * each shifted as a whole: the host's trajectory. */
static void host_trajectory(double *x) {
    const double a = 0.35 / sqrt(2.0);
    unsigned long long state = 12345;
    int s, i, k;
    for (s = 0; s < N_CONFIGS; s++) {
        double shift[DIM];
        for (k = 0; k < DIM; k++) {
            shift[k] = 2.0 * uniform(&state) - 1.0;
        }
        for (i = 0; i < N_PARTICLES; i++) {
            for (k = 0; k < DIM; k++) {
                double vertex = (k == i / 2) ? ((i % 2 == 0) ? a : -a) : 0.0;
                double noise = 0.03 * (uniform(&state) - 0.5);
                x[(s * N_PARTICLES + i) * DIM + k] = vertex + noise + shift[k];
            }
        }
    }
}

/* A flow from `options`, sampled with a fixed seed: the bytes that identify it. */
static int sample_with(const eqf_flow_options *options, double *x, double *log_q) {
    eqf_flow *flow = NULL;
    int32_t status = eqf_flow_new_with_options(N_PARTICLES, DIM, options, &flow);
    if (status != EQF_OK) {
        return status;
    }
    status = eqf_flow_sample(flow, 3, N_SAMPLES, x, log_q);
    eqf_flow_free(flow);
    return status;
}

int main(void) {
    static double trajectory[N_CONFIGS * PER_CONFIG];
    static double x_before[N_SAMPLES * PER_CONFIG], x_after[N_SAMPLES * PER_CONFIG];
    double log_q_before[N_SAMPLES], log_q_after[N_SAMPLES], log_q_again[N_SAMPLES];
    double d_min = 0.0, d_max = 0.0, sigma = 0.0, d2_min = 0.0, d2_max = 0.0, sigma2 = 0.0;
    double nan_config[PER_CONFIG];
    eqf_flow_options *options = NULL;
    eqf_flow *flow = NULL;
    eqf_flow *untouched = (eqf_flow *)&options; /* a sentinel: must stay as it is */
    int i;

    host_trajectory(trajectory);

    /* 1. Scales from the host's own configurations. */
    check(eqf_flow_options_new(&options) == EQF_OK, "eqf_flow_options_new");
    check(eqf_flow_options_scales(options, &d_min, &d_max, &sigma) == EQF_OK, "defaults");
    check(d_min == 0.0 && d_max == 8.0 && sigma == 1.0, "defaults of eqf_flow_new");
    check(eqf_flow_options_fit_scales(options, N_PARTICLES, DIM, trajectory, N_CONFIGS) ==
              EQF_OK,
          "eqf_flow_options_fit_scales");
    check(eqf_flow_options_scales(options, &d_min, &d_max, &sigma) == EQF_OK, "scales");
    /* Edges at 0.35 nm and diagonals at 0.49 nm, inside the range with room around them. */
    check(d_min < 0.3 && d_max > 0.55 && d_max < 0.8, "the range covers the cluster");
    check(sigma > 0.1 && sigma < 0.3, "sigma is the cluster's spread in nm");
    printf("fitted distance range [%.3f, %.3f] nm, prior sigma %.3f nm\n", d_min, d_max, sigma);

    /* 2. The other settings, and the flow. */
    check(eqf_flow_options_set_kernel_counts(options, 24, 6) == EQF_OK, "kernel counts");
    check(eqf_flow_options_set_integrator(options, EQF_METHOD_RK4, 12, 0.0, 0.0,
                                          EQF_DENSITY_EXACT_DISCRETE) == EQF_OK,
          "integrator");
    check(eqf_flow_options_set_seed(options, 11) == EQF_OK, "seed");
    check(sample_with(options, x_before, log_q_before) == EQF_OK, "a flow from the options");
    check(eqf_flow_new_with_options(N_PARTICLES, DIM, options, &flow) == EQF_OK, "flow");
    check(eqf_flow_n_particles(flow) == N_PARTICLES && eqf_flow_dim(flow) == DIM, "its size");
    check(eqf_flow_log_density(flow, N_SAMPLES, x_before, log_q_again) == EQF_OK, "density");
    for (i = 0; i < N_SAMPLES; i++) {
        check(fabs(log_q_again[i] - log_q_before[i]) < 1e-9, "sample and density agree");
    }
    eqf_flow_free(flow);

    /* Strict mode, the default: the flow above is certified at its 12 steps, its initial field
     * damped to be (the paper's draw is certified only from about 22 steps). The opt-out keeps
     * the draw as it is; that flow evaluates, and a strict copy of it refuses exact-discrete
     * work at 12 steps, naming the certified step count, and works at 60. */
    {
        int32_t strict = 0, certified = 0;
        double contraction = 0.0;
        eqf_flow *strict_copy = NULL;
        check(eqf_flow_new_with_options(N_PARTICLES, DIM, options, &flow) == EQF_OK, "flow");
        check(eqf_flow_require_certificate(flow, &strict) == EQF_OK && strict == 1,
              "strict by default");
        check(eqf_flow_certificate(flow, &certified, &contraction, NULL) == EQF_OK && certified == 1,
              "a new flow is certified at its steps");
        eqf_flow_free(flow);
        check(eqf_flow_options_set_require_certificate(options, 0) == EQF_OK, "the opt-out");
        check(eqf_flow_new_with_options(N_PARTICLES, DIM, options, &flow) == EQF_OK, "lax flow");
        check(eqf_flow_require_certificate(flow, &strict) == EQF_OK && strict == 0,
              "the flow is not strict");
        check(eqf_flow_certificate(flow, &certified, &contraction, NULL) == EQF_OK && certified == 0,
              "the paper's draw is not certified at 12 steps");
        check(eqf_flow_log_density(flow, N_SAMPLES, x_before, log_q_again) == EQF_OK,
              "an uncertified flow evaluates with strict mode off");
        check(eqf_flow_with_require_certificate(flow, 1, &strict_copy) == EQF_OK, "strict copy");
        rejected(eqf_flow_log_density(strict_copy, N_SAMPLES, x_before, log_q_again),
                 EQF_ERR_UNCERTIFIED, "certified with", "an uncertified strict flow");
        eqf_flow_free(strict_copy);
        eqf_flow_free(flow);
        check(eqf_flow_options_set_integrator(options, EQF_METHOD_RK4, 60, 0.0, 0.0,
                                              EQF_DENSITY_EXACT_DISCRETE) == EQF_OK,
              "60 steps");
        check(eqf_flow_new_with_options(N_PARTICLES, DIM, options, &flow) == EQF_OK, "60 steps");
        check(eqf_flow_with_require_certificate(flow, 1, &strict_copy) == EQF_OK, "strict copy");
        check(eqf_flow_log_density(strict_copy, N_SAMPLES, x_before, log_q_again) == EQF_OK,
              "a certified strict flow evaluates");
        eqf_flow_free(strict_copy);
        eqf_flow_free(flow);
    }
    check(eqf_flow_options_set_integrator(options, EQF_METHOD_RK4, 12, 0.0, 0.0,
                                          EQF_DENSITY_EXACT_DISCRETE) == EQF_OK,
          "back to 12 steps");
    rejected(eqf_flow_options_set_require_certificate(options, 2), EQF_ERR_INVALID_ARGUMENT,
             "require", "require = 2");
    check(eqf_flow_options_set_require_certificate(options, 1) == EQF_OK,
          "strict mode back on (the default)");

    /* 3. The contract: NULL pointers and bad values, and nothing changes on failure. */
    rejected(eqf_flow_options_new(NULL), EQF_ERR_NULL_POINTER, "out", "new(NULL)");
    rejected(eqf_flow_options_set_seed(NULL, 1), EQF_ERR_NULL_POINTER, "options",
             "set_seed(NULL)");
    rejected(eqf_flow_options_set_family(options, NULL), EQF_ERR_NULL_POINTER, "name",
             "family NULL");
    rejected(eqf_flow_options_set_family(options, "graph"), EQF_ERR_INVALID_ARGUMENT, "graph",
             "unknown family");
    rejected(eqf_flow_options_set_distance_range(options, 1.0, 0.5), EQF_ERR_INVALID_ARGUMENT,
             "distance range", "max < min");
    rejected(eqf_flow_options_set_distance_range(options, -0.1, 0.5), EQF_ERR_INVALID_ARGUMENT,
             "distance range", "negative min");
    rejected(eqf_flow_options_set_kernel_counts(options, 1, 6), EQF_ERR_INVALID_ARGUMENT,
             "needs 2..=128", "one distance kernel");
    rejected(eqf_flow_options_set_kernel_counts(options, 24, -3), EQF_ERR_INVALID_ARGUMENT,
             "n_time", "negative count");
    rejected(eqf_flow_options_set_prior_sigma(options, 0.0), EQF_ERR_INVALID_ARGUMENT,
             "prior sigma", "sigma 0");
    rejected(eqf_flow_options_set_integrator(options, EQF_METHOD_DOPRI5, 0, 1e-5, 1e-10,
                                             EQF_DENSITY_EXACT_DISCRETE),
             EQF_ERR_INVALID_ARGUMENT, "", "exact-discrete Dormand-Prince");
    rejected(eqf_flow_options_set_integrator(options, 9, 20, 0.0, 0.0, 0),
             EQF_ERR_INVALID_ARGUMENT, "method", "unknown method");
    memcpy(nan_config, trajectory, sizeof nan_config);
    nan_config[4] = NAN;
    rejected(eqf_flow_options_fit_scales(options, N_PARTICLES, DIM, nan_config, 1),
             EQF_ERR_NON_FINITE, "configurations", "a NaN coordinate");
    rejected(eqf_flow_options_fit_scales(options, N_PARTICLES, DIM, NULL, 5),
             EQF_ERR_NULL_POINTER, "x", "x NULL");
    rejected(eqf_flow_options_fit_scales(options, N_PARTICLES, DIM, trajectory, 0),
             EQF_ERR_DIMENSION_MISMATCH, "configurations", "no configurations");
    rejected(eqf_flow_options_fit_scales(options, 1, DIM, trajectory, 1),
             EQF_ERR_INVALID_ARGUMENT, "n_particles", "one particle");
    {
        const uint32_t bad_species[N_PARTICLES] = {0, 0, 0, 0, 1, 2};
        rejected(eqf_flow_options_set_species(options, bad_species, N_PARTICLES, 2),
                 EQF_ERR_INVALID_ARGUMENT, "particle 5", "species index not below n_species");
        rejected(eqf_flow_options_set_species(options, NULL, N_PARTICLES, 2),
                 EQF_ERR_NULL_POINTER, "species", "species NULL");
        rejected(eqf_flow_options_set_species(options, bad_species, N_PARTICLES, 0),
                 EQF_ERR_INVALID_ARGUMENT, "n_species", "no species");
        rejected(eqf_flow_options_set_species(options, bad_species, -1, 3),
                 EQF_ERR_INVALID_ARGUMENT, "n_particles", "negative count");
    }
    rejected(eqf_flow_new_with_options(N_PARTICLES, 4, options, &untouched),
             EQF_ERR_INVALID_ARGUMENT, "dim", "dim 4");
    rejected(eqf_flow_new_with_options(N_PARTICLES, DIM, NULL, &untouched),
             EQF_ERR_NULL_POINTER, "options", "options NULL");
    rejected(eqf_flow_new_with_options(N_PARTICLES, DIM, options, NULL), EQF_ERR_NULL_POINTER,
             "out", "out NULL");
    check(untouched == (eqf_flow *)&options, "a failed constructor leaves *out alone");

    check(eqf_flow_options_scales(options, &d2_min, &d2_max, &sigma2) == EQF_OK, "scales");
    check(d2_min == d_min && d2_max == d_max && sigma2 == sigma, "scales unchanged");
    check(sample_with(options, x_after, log_q_after) == EQF_OK, "a flow after the failures");
    check(memcmp(x_before, x_after, sizeof x_before) == 0 &&
              memcmp(log_q_before, log_q_after, sizeof log_q_before) == 0,
          "failed calls leave the options unchanged: the same flow");
    check(eqf_flow_options_scales(options, NULL, NULL, NULL) == EQF_OK, "outputs may be NULL");

    /* 4. Two species: particles 0-3 small, 4-5 large. */
    {
        const uint32_t species[N_PARTICLES] = {0, 0, 0, 0, 1, 1};
        uint32_t read_back[N_PARTICLES] = {9, 9, 9, 9, 9, 9};
        int64_t n_species = 0;
        double swapped[PER_CONFIG], log_q_swapped[1];
        /* epsilon[a][b] and r_m[a][b] in nm, symmetric; the same for every pair gives the
         * single-species energy. */
        const double epsilon[4] = {1.0, 1.4, 1.4, 0.8};
        const double r_m[4] = {0.35, 0.40, 0.40, 0.45};
        const double asymmetric[4] = {1.0, 1.4, 1.3, 0.8};
        const double with_nan[4] = {1.0, NAN, NAN, 0.8};
        const double equal_eps[4] = {1.0, 1.0, 1.0, 1.0}, equal_r[4] = {0.35, 0.35, 0.35, 0.35};
        eqf_energy *binary = NULL, *equal = NULL, *plain = NULL;
        eqf_energy *untouched_energy = (eqf_energy *)&options;
        double u_equal = 0.0, u_plain = 0.0, u_binary = 0.0;

        check(eqf_flow_options_set_species(options, species, N_PARTICLES, 2) == EQF_OK,
              "set_species");
        check(eqf_flow_new_with_options(N_PARTICLES, DIM, options, &flow) == EQF_OK,
              "a two-species flow");
        check(eqf_flow_species(flow, read_back, N_PARTICLES, &n_species) == EQF_OK &&
                  n_species == 2 && memcmp(read_back, species, sizeof species) == 0,
              "the flow's species read back");
        rejected(eqf_flow_species(flow, read_back, N_PARTICLES - 1, NULL),
                 EQF_ERR_DIMENSION_MISMATCH, "species", "species of the wrong length");
        /* A negative length is refused with or without the species array. */
        rejected(eqf_flow_species(flow, NULL, -1, &n_species), EQF_ERR_INVALID_ARGUMENT,
                 "n_particles", "a negative species length");
        check(eqf_flow_sample(flow, 5, N_SAMPLES, x_after, log_q_after) == EQF_OK, "sample");
        check(eqf_flow_log_density(flow, N_SAMPLES, x_after, log_q_again) == EQF_OK, "density");
        for (i = 0; i < N_SAMPLES; i++) {
            check(fabs(log_q_again[i] - log_q_after[i]) < 1e-9, "sample and density agree");
        }
        /* Swap particles 1 and 2 (both species 0): the same density. */
        memcpy(swapped, x_after, sizeof swapped);
        for (i = 0; i < DIM; i++) {
            swapped[1 * DIM + i] = x_after[2 * DIM + i];
            swapped[2 * DIM + i] = x_after[1 * DIM + i];
        }
        check(eqf_flow_log_density(flow, 1, swapped, log_q_swapped) == EQF_OK &&
                  fabs(log_q_swapped[0] - log_q_after[0]) < 1e-9 * (1.0 + fabs(log_q_after[0])),
              "a swap within a species keeps log q");
        /* Swap particles 1 and 4 (species 0 and 1): another density. */
        memcpy(swapped, x_after, sizeof swapped);
        for (i = 0; i < DIM; i++) {
            swapped[1 * DIM + i] = x_after[4 * DIM + i];
            swapped[4 * DIM + i] = x_after[1 * DIM + i];
        }
        check(eqf_flow_log_density(flow, 1, swapped, log_q_swapped) == EQF_OK &&
                  fabs(log_q_swapped[0] - log_q_after[0]) > 1e-6,
              "a swap across species changes log q");
        eqf_flow_free(flow);
        flow = NULL;

        rejected(eqf_flow_new_with_options(N_PARTICLES - 1, DIM, options, &untouched),
                 EQF_ERR_DIMENSION_MISMATCH, "species", "species for another N");
        rejected(eqf_flow_options_set_family(options, "coordkernel"), EQF_ERR_INVALID_ARGUMENT,
                 "kernel", "several species need the kernel family");
        /* Cleared: the single-species flow of before, bit for bit. */
        check(eqf_flow_options_set_species(options, NULL, 0, 0) == EQF_OK, "clear species");
        check(sample_with(options, x_after, log_q_after) == EQF_OK &&
                  memcmp(x_before, x_after, sizeof x_before) == 0,
              "without species the flow is the one of before");

        check(eqf_energy_lennard_jones_species(N_PARTICLES, DIM, species, 2, epsilon, r_m, 1.0,
                                               &binary) == EQF_OK,
              "binary Lennard-Jones");
        check(eqf_energy_lennard_jones_species(N_PARTICLES, DIM, species, 2, equal_eps, equal_r,
                                               1.0, &equal) == EQF_OK,
              "binary Lennard-Jones with equal pairs");
        check(eqf_energy_lennard_jones(N_PARTICLES, DIM, 1.0, 0.35, 1.0, &plain) == EQF_OK,
              "plain Lennard-Jones");
        check(eqf_energy_eval(binary, 1, trajectory, &u_binary, NULL) == EQF_OK &&
                  eqf_energy_eval(equal, 1, trajectory, &u_equal, NULL) == EQF_OK &&
                  eqf_energy_eval(plain, 1, trajectory, &u_plain, NULL) == EQF_OK,
              "energies");
        check(fabs(u_equal - u_plain) < 1e-12 * (1.0 + fabs(u_plain)),
              "equal pairs give the single-species energy");
        check(fabs(u_binary - u_plain) > 1e-6, "the species pairs matter");
        rejected(eqf_energy_lennard_jones_species(N_PARTICLES, DIM, species, 2, with_nan, r_m,
                                                  1.0, &untouched_energy),
                 EQF_ERR_NON_FINITE, "epsilon", "NaN epsilon");
        rejected(eqf_energy_lennard_jones_species(N_PARTICLES, DIM, species, 2, asymmetric, r_m,
                                                  1.0, &untouched_energy),
                 EQF_ERR_INVALID_ARGUMENT, "symmetric", "asymmetric epsilon");
        rejected(eqf_energy_lennard_jones_species(N_PARTICLES, DIM, species, 1, epsilon, r_m,
                                                  1.0, &untouched_energy),
                 EQF_ERR_INVALID_ARGUMENT, "species index", "a species index not below 1");
        rejected(eqf_energy_lennard_jones_species(N_PARTICLES, DIM, species, 2, NULL, r_m, 1.0,
                                                  &untouched_energy),
                 EQF_ERR_NULL_POINTER, "epsilon", "epsilon NULL");
        check(untouched_energy == (eqf_energy *)&options, "failed constructors leave *out");
        eqf_energy_free(binary);
        eqf_energy_free(equal);
        eqf_energy_free(plain);
    }

    check(eqf_flow_options_free(options) == EQF_OK, "free");
    check(eqf_flow_options_free(NULL) == EQF_OK, "free(NULL)");
    printf("flow_options: %d failed\n", n_failed);
    return n_failed == 0 ? 0 : 1;
}
