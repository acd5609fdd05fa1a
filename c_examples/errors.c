/*
 * errors.c: the error contract of the eqflow C API, checked from C.
 *
 * Every failing call must return the documented EQF_ERR_* status, leave a message naming the
 * problem for eqf_last_error_message, and write nothing: out-pointers and output arrays are
 * pre-filled with sentinels here and must still hold them afterwards. Also checks the
 * snprintf-like truncation of eqf_last_error_message, that _free(NULL) is fine, that n = 0 is
 * a valid no-op, that training options reject bad values and leave themselves unchanged, that
 * a failing training call (bad sizes, a failing KL callback) leaves the flow unchanged, that
 * outputs sharing memory are refused, that an energy callback's eqf_set_callback_error
 * message survives a nested callback (a step of another move run from inside it), and that the
 * library keeps working after failures.
 *
 * Valid C99 and C++17. Exit status 0 when every check passes, 1 otherwise (each failed check is
 * reported on stderr).
 */
#include <eqflow.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_PARTICLES 4
#define DIM 2
#define PER_SAMPLE (N_PARTICLES * DIM)
#define N_SAMPLES 3
#define SENTINEL -12345.0

static int n_failed = 0;
static int n_checks = 0;

static void check(int ok, const char *what, int line) {
    n_checks++;
    if (!ok) {
        n_failed++;
        fprintf(stderr, "errors.c:%d: check failed: %s\n", line, what);
    }
}

#define CHECK(condition) check((condition) ? 1 : 0, #condition, __LINE__)

/* The calling thread's last error message (static buffer, valid until the next call). */
static const char *last_message(void) {
    static char buffer[1024];
    eqf_last_error_message(buffer, sizeof buffer);
    return buffer;
}

/* Checks a failed call: its status, and that the message contains `needle`. */
static void check_failure(int32_t status, int32_t expected, const char *needle, const char *call,
                          int line) {
    const char *message = last_message();
    n_checks++;
    if (status != expected || strstr(message, needle) == NULL) {
        n_failed++;
        fprintf(stderr,
                "errors.c:%d: %s returned status %d with message \"%s\"; expected status %d "
                "and a message containing \"%s\"\n",
                line, call, (int)status, message, (int)expected, needle);
    }
}

#define CHECK_FAILS(call, expected, needle) \
    check_failure((call), (expected), (needle), #call, __LINE__)

static void fill(double *values, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        values[i] = SENTINEL;
    }
}

static int untouched(const double *values, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (values[i] != SENTINEL) {
            return 0;
        }
    }
    return 1;
}

/* Addresses used as "untouched" markers for out-pointers; never dereferenced. */
static char flow_marker, energy_marker, options_marker;
#define FLOW_SENTINEL ((eqf_flow *)(void *)&flow_marker)
#define ENERGY_SENTINEL ((eqf_energy *)(void *)&energy_marker)
#define OPTIONS_SENTINEL ((eqf_train_options *)(void *)&options_marker)

static void versions(void) {
    const char *version = eqf_version();
    CHECK(eqf_abi_version() == 1);
    CHECK(version != NULL && strlen(version) > 0);
#ifdef EQF_EXPECTED_VERSION
    CHECK(version != NULL && strcmp(version, EQF_EXPECTED_VERSION) == 0);
#endif
    CHECK(EQF_OK == 0 && EQF_ERR_NULL_POINTER == 1 && EQF_ERR_INVALID_ARGUMENT == 2 &&
          EQF_ERR_DIMENSION_MISMATCH == 3 && EQF_ERR_NON_FINITE == 4 &&
          EQF_ERR_INTERNAL == 11);
    CHECK(EQF_MAX_ELEMENTS == ((int64_t)1 << 40));
}

/* Before any failure on this thread the message is empty. */
static void no_error_yet(void) {
    char buffer[8];
    memset(buffer, 'x', sizeof buffer);
    CHECK(eqf_last_error_message(NULL, 0) == 0);
    CHECK(eqf_last_error_message(buffer, sizeof buffer) == 0);
    CHECK(buffer[0] == '\0' && buffer[1] == 'x');
}

static void last_error_truncation(void) {
    char full[1024], small[6], one[1];
    size_t length;
    eqf_flow *flow = NULL;

    CHECK_FAILS(eqf_flow_new(N_PARTICLES, DIM, 1, NULL), EQF_ERR_NULL_POINTER, "out");
    length = eqf_last_error_message(NULL, 0); /* NULL is fine with len 0 */
    CHECK(length > sizeof small);

    memset(full, 'x', sizeof full);
    CHECK(eqf_last_error_message(full, sizeof full) == length);
    CHECK(strlen(full) == length);
    CHECK(full[length + 1] == 'x'); /* nothing written past the NUL */

    memset(small, 'x', sizeof small);
    CHECK(eqf_last_error_message(small, sizeof small) == length); /* full length, not copied */
    CHECK(small[sizeof small - 1] == '\0');
    CHECK(strncmp(small, full, sizeof small - 1) == 0);

    one[0] = 'x';
    CHECK(eqf_last_error_message(one, 1) == length);
    CHECK(one[0] == '\0');

    /* A successful call does not clear the last failure's message. */
    CHECK(eqf_flow_new(N_PARTICLES, DIM, 1, &flow) == EQF_OK);
    CHECK(eqf_last_error_message(NULL, 0) == length);
    CHECK(eqf_flow_free(flow) == EQF_OK);
}

static void free_null(void) {
    CHECK(eqf_flow_free(NULL) == EQF_OK);
    CHECK(eqf_energy_free(NULL) == EQF_OK);
    CHECK(eqf_train_options_free(NULL) == EQF_OK);
}

static void flow_creation(void) {
    eqf_flow *flow = FLOW_SENTINEL;
    CHECK_FAILS(eqf_flow_new(N_PARTICLES, DIM, 1, NULL), EQF_ERR_NULL_POINTER, "out");
    CHECK_FAILS(eqf_flow_new(-1, DIM, 1, &flow), EQF_ERR_INVALID_ARGUMENT, "n_particles");
    CHECK(flow == FLOW_SENTINEL);
    CHECK_FAILS(eqf_flow_new(N_PARTICLES, -2, 1, &flow), EQF_ERR_INVALID_ARGUMENT, "dim");
    CHECK(flow == FLOW_SENTINEL);
    CHECK_FAILS(eqf_flow_new(1, DIM, 1, &flow), EQF_ERR_INVALID_ARGUMENT, "n_particles");
    CHECK(flow == FLOW_SENTINEL);
    CHECK_FAILS(eqf_flow_new(N_PARTICLES, 0, 1, &flow), EQF_ERR_INVALID_ARGUMENT, "dim");
    CHECK(flow == FLOW_SENTINEL);
    CHECK_FAILS(eqf_flow_new(INT64_MAX, DIM, 1, &flow), EQF_ERR_INVALID_ARGUMENT, "n_particles");
    CHECK(flow == FLOW_SENTINEL);
}

static void flow_calls(const eqf_flow *flow) {
    double x[N_SAMPLES * PER_SAMPLE], log_q[N_SAMPLES], log_q_ok[N_SAMPLES];
    eqf_flow *stepped = FLOW_SENTINEL;

    /* The step-count limit of the header, and one past it. */
    CHECK_FAILS(eqf_flow_with_integrator(flow, EQF_METHOD_RK4, EQF_MAX_RK4_STEPS + 1, 0.0, 0.0,
                                         EQF_DENSITY_EXACT_DISCRETE, &stepped),
                EQF_ERR_INVALID_ARGUMENT, "n_steps");
    CHECK(stepped == FLOW_SENTINEL);
    CHECK(eqf_flow_with_integrator(flow, EQF_METHOD_RK4, EQF_MAX_RK4_STEPS, 0.0, 0.0,
                                   EQF_DENSITY_EXACT_DISCRETE, &stepped) == EQF_OK);
    CHECK(eqf_flow_free(stepped) == EQF_OK);

    /* NULL flow. */
    fill(x, N_SAMPLES * PER_SAMPLE);
    fill(log_q, N_SAMPLES);
    CHECK_FAILS(eqf_flow_sample(NULL, 1, N_SAMPLES, x, log_q), EQF_ERR_NULL_POINTER, "flow");
    CHECK_FAILS(eqf_flow_log_density(NULL, N_SAMPLES, x, log_q), EQF_ERR_NULL_POINTER, "flow");
    CHECK(eqf_flow_n_particles(NULL) == -1);
    CHECK(strstr(last_message(), "flow") != NULL);
    CHECK(eqf_flow_dim(NULL) == -1);
    CHECK(eqf_flow_n_particles(flow) == N_PARTICLES);
    CHECK(eqf_flow_dim(flow) == DIM);

    /* NULL arrays. */
    CHECK_FAILS(eqf_flow_sample(flow, 1, N_SAMPLES, NULL, log_q), EQF_ERR_NULL_POINTER, "x");
    CHECK_FAILS(eqf_flow_sample(flow, 1, N_SAMPLES, x, NULL), EQF_ERR_NULL_POINTER, "log_q");
    CHECK_FAILS(eqf_flow_log_density(flow, N_SAMPLES, NULL, log_q), EQF_ERR_NULL_POINTER, "x");
    CHECK_FAILS(eqf_flow_log_density(flow, N_SAMPLES, x, NULL), EQF_ERR_NULL_POINTER,
                "log_q");
    CHECK(untouched(x, N_SAMPLES * PER_SAMPLE) && untouched(log_q, N_SAMPLES));

    /* Negative and absurd counts. */
    CHECK_FAILS(eqf_flow_sample(flow, 1, -1, x, log_q), EQF_ERR_INVALID_ARGUMENT, "negative");
    CHECK_FAILS(eqf_flow_sample(flow, 1, INT64_MIN, x, log_q), EQF_ERR_INVALID_ARGUMENT,
                "negative");
    CHECK_FAILS(eqf_flow_sample(flow, 1, INT64_MAX, x, log_q), EQF_ERR_INVALID_ARGUMENT,
                "EQF_MAX_ELEMENTS");
    /* n itself is in range but n*N*D doubles are not. */
    CHECK_FAILS(eqf_flow_sample(flow, 1, EQF_MAX_ELEMENTS, x, log_q), EQF_ERR_INVALID_ARGUMENT,
                "EQF_MAX_ELEMENTS");
    /* n*N*D doubles within EQF_MAX_ELEMENTS but far beyond memory (8 TiB): a status with the
       need and the limit, never an abort of this program; the arrays are never touched. */
    CHECK_FAILS(eqf_flow_sample(flow, 1, EQF_MAX_ELEMENTS / PER_SAMPLE, x, log_q),
                EQF_ERR_RESOURCE, "limit is");
    CHECK_FAILS(eqf_flow_log_density(flow, -5, x, log_q), EQF_ERR_INVALID_ARGUMENT, "negative");
    CHECK_FAILS(eqf_flow_log_density(flow, EQF_MAX_ELEMENTS + 1, x, log_q),
                EQF_ERR_INVALID_ARGUMENT, "EQF_MAX_ELEMENTS");
    CHECK(untouched(x, N_SAMPLES * PER_SAMPLE) && untouched(log_q, N_SAMPLES));

    /* n = 0 is a valid no-op, even with NULL arrays. */
    CHECK(eqf_flow_sample(flow, 1, 0, NULL, NULL) == EQF_OK);
    CHECK(eqf_flow_log_density(flow, 0, NULL, NULL) == EQF_OK);
    CHECK(eqf_flow_sample(flow, 1, 0, x, log_q) == EQF_OK);
    CHECK(untouched(x, N_SAMPLES * PER_SAMPLE) && untouched(log_q, N_SAMPLES));

    /* NaN or infinity in x: nothing written. */
    CHECK(eqf_flow_sample(flow, 3, N_SAMPLES, x, log_q_ok) == EQF_OK);
    x[PER_SAMPLE + 3] = NAN;
    fill(log_q, N_SAMPLES);
    CHECK_FAILS(eqf_flow_log_density(flow, N_SAMPLES, x, log_q), EQF_ERR_NON_FINITE, "NaN");
    CHECK(untouched(log_q, N_SAMPLES));
    x[PER_SAMPLE + 3] = INFINITY;
    CHECK_FAILS(eqf_flow_log_density(flow, N_SAMPLES, x, log_q), EQF_ERR_NON_FINITE, "inf");
    CHECK(untouched(log_q, N_SAMPLES));

    /* Still usable after failures, and deterministic: same seed, same bits. */
    {
        double x_again[N_SAMPLES * PER_SAMPLE], log_q_again[N_SAMPLES];
        double shift[N_SAMPLES * PER_SAMPLE];
        int i;
        CHECK(eqf_flow_sample(flow, 3, N_SAMPLES, x, log_q) == EQF_OK);
        CHECK(eqf_flow_sample(flow, 3, N_SAMPLES, x_again, log_q_again) == EQF_OK);
        CHECK(memcmp(x, x_again, sizeof x) == 0 && memcmp(log_q, log_q_again, sizeof log_q) == 0);
        CHECK(memcmp(log_q, log_q_ok, sizeof log_q) == 0);
        /* Any centre of mass: translating every configuration leaves log q unchanged. */
        for (i = 0; i < N_SAMPLES * PER_SAMPLE; i++) {
            shift[i] = x[i] + ((i % DIM) == 0 ? 10.0 : -3.0);
        }
        CHECK(eqf_flow_log_density(flow, N_SAMPLES, shift, log_q_again) == EQF_OK);
        for (i = 0; i < N_SAMPLES; i++) {
            CHECK(fabs(log_q_again[i] - log_q[i]) <= 1e-8);
        }
    }
}

static void energy_creation(void) {
    eqf_energy *energy = ENERGY_SENTINEL;
    CHECK_FAILS(eqf_energy_double_well(N_PARTICLES, DIM, 0.0, -4.0, 0.9, 4.0, NULL),
                EQF_ERR_NULL_POINTER, "out");
    CHECK_FAILS(eqf_energy_double_well(0, DIM, 0.0, -4.0, 0.9, 4.0, &energy),
                EQF_ERR_INVALID_ARGUMENT, "n_particles");
    CHECK(energy == ENERGY_SENTINEL);
    CHECK_FAILS(eqf_energy_double_well(N_PARTICLES, 0, 0.0, -4.0, 0.9, 4.0, &energy),
                EQF_ERR_INVALID_ARGUMENT, "dim");
    CHECK(energy == ENERGY_SENTINEL);
    CHECK_FAILS(eqf_energy_double_well(-4, DIM, 0.0, -4.0, 0.9, 4.0, &energy),
                EQF_ERR_INVALID_ARGUMENT, "n_particles");
    CHECK(energy == ENERGY_SENTINEL);
    CHECK_FAILS(eqf_energy_double_well(N_PARTICLES, DIM, NAN, -4.0, 0.9, 4.0, &energy),
                EQF_ERR_NON_FINITE, "a = NaN");
    CHECK(energy == ENERGY_SENTINEL);
    CHECK_FAILS(eqf_energy_lennard_jones(0, 3, 2.0, 1.0, 1.0, &energy),
                EQF_ERR_INVALID_ARGUMENT, "n_particles");
    CHECK(energy == ENERGY_SENTINEL);
    CHECK_FAILS(eqf_energy_lennard_jones(13, 3, -2.0, 1.0, 1.0, &energy),
                EQF_ERR_INVALID_ARGUMENT, "epsilon");
    CHECK(energy == ENERGY_SENTINEL);
    CHECK_FAILS(eqf_energy_lennard_jones(13, 3, 2.0, 1.0, 1.0, NULL), EQF_ERR_NULL_POINTER,
                "out");
}

static void energy_calls(const eqf_energy *energy, const eqf_flow *flow) {
    double x[N_SAMPLES * PER_SAMPLE], U[N_SAMPLES], gradient[N_SAMPLES * PER_SAMPLE];
    double log_q[N_SAMPLES];

    CHECK(eqf_flow_sample(flow, 5, N_SAMPLES, x, log_q) == EQF_OK);
    fill(U, N_SAMPLES);
    fill(gradient, N_SAMPLES * PER_SAMPLE);

    CHECK_FAILS(eqf_energy_eval(NULL, N_SAMPLES, x, U, NULL), EQF_ERR_NULL_POINTER, "energy");
    CHECK_FAILS(eqf_energy_eval(energy, N_SAMPLES, NULL, U, NULL), EQF_ERR_NULL_POINTER, "x");
    CHECK_FAILS(eqf_energy_eval(energy, N_SAMPLES, x, NULL, gradient), EQF_ERR_NULL_POINTER,
                "U");
    CHECK_FAILS(eqf_energy_eval(energy, -1, x, U, gradient), EQF_ERR_INVALID_ARGUMENT,
                "negative");
    CHECK_FAILS(eqf_energy_eval(energy, INT64_MAX, x, U, gradient), EQF_ERR_INVALID_ARGUMENT,
                "EQF_MAX_ELEMENTS");
    CHECK(untouched(U, N_SAMPLES) && untouched(gradient, N_SAMPLES * PER_SAMPLE));

    CHECK(eqf_energy_eval(energy, 0, NULL, NULL, NULL) == EQF_OK);

    x[2 * PER_SAMPLE] = NAN;
    CHECK_FAILS(eqf_energy_eval(energy, N_SAMPLES, x, U, NULL), EQF_ERR_NON_FINITE, "NaN");
    CHECK_FAILS(eqf_energy_eval(energy, N_SAMPLES, x, U, gradient), EQF_ERR_NON_FINITE, "NaN");
    CHECK(untouched(U, N_SAMPLES) && untouched(gradient, N_SAMPLES * PER_SAMPLE));

    /* After the failures the energy still works; the gradient is optional. */
    x[2 * PER_SAMPLE] = 0.5;
    CHECK(eqf_energy_eval(energy, N_SAMPLES, x, U, NULL) == EQF_OK);
    CHECK(untouched(gradient, N_SAMPLES * PER_SAMPLE));
    CHECK(isfinite(U[0]) && isfinite(U[1]) && isfinite(U[2]));
    CHECK(eqf_energy_eval(energy, N_SAMPLES, x, U, gradient) == EQF_OK);
    CHECK(!untouched(gradient, N_SAMPLES * PER_SAMPLE));
}

/* A host energy for the move checks: the double-well energy handle passed as `user`. */
static int32_t host_energy(void *user, int64_t n_particles, int64_t dim, const double *x,
                           double *U) {
    (void)n_particles;
    (void)dim;
    return eqf_energy_eval((const eqf_energy *)user, 1, x, U, NULL);
}

/* What the nesting energy callback below works with. */
struct nesting {
    eqf_move *inner_move; /* stepped from inside the outer move's energy callback */
    eqf_energy *energy;   /* the double well, for both moves */
    int inner_fails;      /* whether the inner callback fails */
    int32_t inner_status; /* what the inner step returned */
};

/* The inner move's energy: says "INNER", then fails or returns the double-well energy. */
static int32_t inner_energy(void *user, int64_t n_particles, int64_t dim, const double *x,
                            double *U) {
    const struct nesting *nesting = (const struct nesting *)user;
    eqf_set_callback_error("INNER");
    if (nesting->inner_fails) {
        return 2;
    }
    return host_energy(nesting->energy, n_particles, dim, x, U);
}

/* The outer move's energy: says "OUTER", runs a step of the inner move, and fails. */
static int32_t outer_energy(void *user, int64_t n_particles, int64_t dim, const double *x,
                            double *U) {
    struct nesting *nesting = (struct nesting *)user;
    double y[PER_SAMPLE], U_y = 0.0;
    int32_t accepted = -7;
    (void)n_particles;
    (void)dim;
    eqf_set_callback_error("OUTER");
    memcpy(y, x, sizeof y);
    if (eqf_energy_eval(nesting->energy, 1, y, &U_y, NULL) == EQF_OK) {
        nesting->inner_status =
            eqf_move_step(nesting->inner_move, y, &U_y, inner_energy, nesting, &accepted);
    }
    *U = 0.0;
    return 1;
}

static int ends_with(const char *text, const char *suffix) {
    size_t n = strlen(text), m = strlen(suffix);
    return n >= m && strcmp(text + n - m, suffix) == 0;
}

/* Each callback has its own eqf_set_callback_error message: the outer callback's "OUTER" is
 * what its failure reports, whether the nested callback succeeded after saying "INNER" (its
 * message is discarded) or failed with it (its message belongs to the inner step). */
static void nested_callback_messages(const eqf_flow *flow, eqf_energy *energy) {
    struct nesting nesting;
    eqf_move *outer = NULL;
    double x[PER_SAMPLE], log_q, U;
    int32_t accepted = -7;
    int inner_fails;

    nesting.inner_move = NULL;
    nesting.energy = energy;
    CHECK(eqf_move_new(flow, 1.0, 7, &outer) == EQF_OK);
    CHECK(eqf_move_new(flow, 1.0, 8, &nesting.inner_move) == EQF_OK);
    CHECK(eqf_flow_sample(flow, 9, 1, x, &log_q) == EQF_OK);
    if (outer != NULL && nesting.inner_move != NULL) {
        for (inner_fails = 0; inner_fails <= 1; inner_fails++) {
            const char *message;
            nesting.inner_fails = inner_fails;
            nesting.inner_status = -1;
            CHECK(eqf_energy_eval(energy, 1, x, &U, NULL) == EQF_OK);
            CHECK_FAILS(eqf_move_step(outer, x, &U, outer_energy, &nesting, &accepted),
                        EQF_ERR_CALLBACK, "returned 1: OUTER");
            message = last_message();
            CHECK(ends_with(message, "OUTER"));
            CHECK(strstr(message, "INNER") == NULL);
            CHECK(nesting.inner_status == (inner_fails ? EQF_ERR_CALLBACK : EQF_OK));
            CHECK(accepted == -7);
        }
    }
    CHECK(eqf_move_free(outer) == EQF_OK);
    CHECK(eqf_move_free(nesting.inner_move) == EQF_OK);
}

/* Outputs that share memory are refused before any work (the second result written would
 * overwrite the first and be reported with EQF_OK), and so is a proposal written over the
 * current state; arrays that merely touch are fine, and an output may overlap an input
 * elsewhere (results are written after every input is read). */
static void shared_memory(const eqf_flow *flow, eqf_energy *energy) {
    double both[N_SAMPLES * PER_SAMPLE + N_SAMPLES];
    double x_ok[N_SAMPLES * PER_SAMPLE], log_q_ok[N_SAMPLES], U_ok[N_SAMPLES];
    double buffer[N_SAMPLES * PER_SAMPLE];
    eqf_move *move = NULL;
    eqf_flow_options *options = NULL;

    /* eqf_flow_sample: log_q inside x fails, writing nothing; log_q just after x is fine. */
    fill(both, N_SAMPLES * PER_SAMPLE + N_SAMPLES);
    CHECK_FAILS(eqf_flow_sample(flow, 2, N_SAMPLES, both, both + 5), EQF_ERR_INVALID_ARGUMENT,
                "overlap");
    CHECK(untouched(both, N_SAMPLES * PER_SAMPLE + N_SAMPLES));
    CHECK_FAILS(eqf_flow_sample(flow, 2, N_SAMPLES, both + 1, both), EQF_ERR_INVALID_ARGUMENT,
                "log_q");
    CHECK(untouched(both, N_SAMPLES * PER_SAMPLE + N_SAMPLES));
    CHECK(eqf_flow_sample(flow, 2, N_SAMPLES, x_ok, log_q_ok) == EQF_OK);
    CHECK(eqf_flow_sample(flow, 2, N_SAMPLES, both, both + N_SAMPLES * PER_SAMPLE) == EQF_OK);
    CHECK(memcmp(both, x_ok, sizeof x_ok) == 0 &&
          memcmp(both + N_SAMPLES * PER_SAMPLE, log_q_ok, sizeof log_q_ok) == 0);

    /* eqf_flow_log_density in place: log_q over the start of x gives the same numbers. */
    {
        double log_q[N_SAMPLES];
        CHECK(eqf_flow_log_density(flow, N_SAMPLES, x_ok, log_q) == EQF_OK);
        memcpy(buffer, x_ok, sizeof x_ok);
        CHECK(eqf_flow_log_density(flow, N_SAMPLES, buffer, buffer) == EQF_OK);
        CHECK(memcmp(buffer, log_q, sizeof log_q) == 0);
    }

    /* eqf_energy_eval: U inside the gradient fails; the gradient in place of x works. */
    CHECK(eqf_energy_eval(energy, N_SAMPLES, x_ok, U_ok, NULL) == EQF_OK);
    fill(both, N_SAMPLES * PER_SAMPLE + N_SAMPLES);
    CHECK_FAILS(eqf_energy_eval(energy, N_SAMPLES, x_ok, both + 7, both),
                EQF_ERR_INVALID_ARGUMENT, "gradient");
    CHECK(untouched(both, N_SAMPLES * PER_SAMPLE + N_SAMPLES));
    {
        double gradient[N_SAMPLES * PER_SAMPLE], U[N_SAMPLES];
        CHECK(eqf_energy_eval(energy, N_SAMPLES, x_ok, U, gradient) == EQF_OK);
        memcpy(buffer, x_ok, sizeof x_ok);
        CHECK(eqf_energy_eval(energy, N_SAMPLES, buffer, U, buffer) == EQF_OK);
        CHECK(memcmp(buffer, gradient, sizeof gradient) == 0 && memcmp(U, U_ok, sizeof U) == 0);
    }

    /* Scalar outputs of getters: one pointer for two results. */
    {
        int32_t certified = -7, method = -7;
        double scale = SENTINEL;
        uint32_t species[N_PARTICLES] = {9, 9, 9, 9};
        CHECK_FAILS(eqf_flow_certificate(flow, &certified, (double *)(void *)&certified, NULL),
                    EQF_ERR_INVALID_ARGUMENT, "max_contraction");
        CHECK(certified == -7);
        CHECK_FAILS(eqf_flow_integrator(flow, &method, NULL, NULL, NULL, &method),
                    EQF_ERR_INVALID_ARGUMENT, "density_mode");
        CHECK(method == -7);
        CHECK_FAILS(eqf_flow_species(flow, species, N_PARTICLES, (int64_t *)(void *)species),
                    EQF_ERR_INVALID_ARGUMENT, "n_species");
        CHECK(species[0] == 9 && species[1] == 9);
        CHECK_FAILS(eqf_flow_certify_configurations(flow, 1, x_ok, &scale, (int64_t *)&scale),
                    EQF_ERR_INVALID_ARGUMENT, "n_certified");
        CHECK(scale == SENTINEL);
        CHECK(eqf_flow_options_new(&options) == EQF_OK);
        CHECK_FAILS(eqf_flow_options_scales(options, &scale, NULL, &scale),
                    EQF_ERR_INVALID_ARGUMENT, "prior_sigma");
        CHECK(scale == SENTINEL);
        CHECK(eqf_flow_options_free(options) == EQF_OK);
    }

    /* Moves: the proposal over (or across) the current state, U or accepted inside x. */
    CHECK(eqf_move_new(flow, 1.0, 3, &move) == EQF_OK);
    memcpy(buffer, x_ok, PER_SAMPLE * sizeof(double));
    CHECK_FAILS(eqf_move_propose(move, buffer, U_ok[0], buffer), EQF_ERR_INVALID_ARGUMENT,
                "x_proposed");
    CHECK_FAILS(eqf_move_propose(move, buffer, U_ok[0], buffer + PER_SAMPLE - 1),
                EQF_ERR_INVALID_ARGUMENT, "x_current");
    CHECK(memcmp(buffer, x_ok, PER_SAMPLE * sizeof(double)) == 0);
    {
        double state[PER_SAMPLE + 1];
        int32_t accepted = -7;
        int64_t n_proposed = -7;
        memcpy(state, x_ok, PER_SAMPLE * sizeof(double));
        state[PER_SAMPLE] = U_ok[0];
        CHECK_FAILS(eqf_move_step(move, state, state + 3, host_energy, (void *)energy,
                                  &accepted),
                    EQF_ERR_INVALID_ARGUMENT, "overlap");
        CHECK_FAILS(eqf_move_step(move, state, state + PER_SAMPLE, host_energy, (void *)energy,
                                  (int32_t *)(void *)(state + PER_SAMPLE)),
                    EQF_ERR_INVALID_ARGUMENT, "accepted");
        CHECK(memcmp(state, x_ok, PER_SAMPLE * sizeof(double)) == 0 && accepted == -7);
        CHECK_FAILS(eqf_move_stats(move, &n_proposed, &n_proposed), EQF_ERR_INVALID_ARGUMENT,
                    "n_accepted");
        CHECK(n_proposed == -7);
        /* Nothing was decided by the refused calls; a proper step works. */
        CHECK(eqf_move_step(move, state, state + PER_SAMPLE, host_energy, (void *)energy,
                            &accepted) == EQF_OK);
        CHECK(accepted == 0 || accepted == 1);
        {
            int64_t n_accepted = -7;
            CHECK(eqf_move_stats(move, &n_proposed, &n_accepted) == EQF_OK);
            CHECK(n_proposed == 1);
        }
    }
    CHECK(eqf_move_free(move) == EQF_OK);
}

/* Model files: a save/load round trip, and corrupt, truncated, missing and NULL paths. Files go
 * to /tmp under a name made unique per process by the address of a local (ASLR), since the
 * test harness runs several builds of this program at once. */
static void model_files(const eqf_flow *flow) {
    char path[256], bad[256];
    char text[1 << 16];
    size_t length;
    int local = 0;
    FILE *file;
    eqf_flow *loaded = FLOW_SENTINEL;
    sprintf(path, "/tmp/eqflow-errors-%p.json", (void *)&local);
    sprintf(bad, "/tmp/eqflow-errors-%p-truncated.json", (void *)&local);

    CHECK(eqf_flow_save(flow, path) == EQF_OK);
    CHECK(eqf_flow_load(path, &loaded) == EQF_OK && loaded != FLOW_SENTINEL);
    CHECK(eqf_flow_n_particles(loaded) == N_PARTICLES && eqf_flow_dim(loaded) == DIM);
    CHECK(eqf_flow_free(loaded) == EQF_OK);

    file = fopen(path, "rb");
    CHECK(file != NULL);
    if (file == NULL) {
        return;
    }
    length = fread(text, 1, sizeof text, file);
    fclose(file);
    CHECK(length > 100 && length < sizeof text);
    file = fopen(bad, "wb");
    CHECK(file != NULL);
    if (file == NULL) {
        return;
    }
    fwrite(text, 1, length / 2, file);
    fclose(file);

    loaded = FLOW_SENTINEL;
    CHECK_FAILS(eqf_flow_load(bad, &loaded), EQF_ERR_FORMAT, "model file");
    CHECK(loaded == FLOW_SENTINEL);
    CHECK_FAILS(eqf_flow_load("/nonexistent-dir/model.json", &loaded), EQF_ERR_IO, "cannot read");
    CHECK_FAILS(eqf_flow_load(NULL, &loaded), EQF_ERR_NULL_POINTER, "path");
    CHECK_FAILS(eqf_flow_load(path, NULL), EQF_ERR_NULL_POINTER, "out");
    CHECK_FAILS(eqf_flow_save(NULL, path), EQF_ERR_NULL_POINTER, "flow");
    CHECK_FAILS(eqf_flow_save(flow, "/nonexistent-dir/model.json"), EQF_ERR_IO, "cannot write");
    CHECK(loaded == FLOW_SENTINEL);
    remove(path);
    remove(bad);
}

/* A KL energy callback that always fails, saying why. */
static int32_t failing_energy(void *user, int64_t n_particles, int64_t dim, const double *x,
                              double *U, double *gradient) {
    (void)user;
    (void)n_particles;
    (void)dim;
    (void)x;
    (void)U;
    (void)gradient;
    eqf_set_callback_error("host force field not initialised");
    return 5;
}

/* A KL energy callback that returns a finite U but never writes the gradient. */
static int32_t no_gradient_energy(void *user, int64_t n_particles, int64_t dim,
                                  const double *x, double *U, double *gradient) {
    (void)user;
    (void)n_particles;
    (void)dim;
    (void)x;
    (void)gradient;
    *U = 1.0;
    return 0;
}

static void fill_summary(eqf_train_summary *summary) {
    summary->size = sizeof *summary;
    summary->n_epochs = -1;
    summary->best_epoch = -1;
    summary->n_steps = -1;
    summary->stopped_early = -1;
    summary->initial_validation_nll = SENTINEL;
    summary->best_validation_nll = SENTINEL;
    summary->final_validation_nll = SENTINEL;
    summary->final_train_nll = SENTINEL;
    summary->wall_seconds = SENTINEL;
}

static int summary_untouched(const eqf_train_summary *summary) {
    return summary->size == sizeof *summary && summary->n_epochs == -1 &&
           summary->n_steps == -1 && summary->best_validation_nll == SENTINEL &&
           summary->wall_seconds == SENTINEL;
}

/* Training from C: options and their setters (a rejected value leaves the options unchanged,
 * seen through the run they configure), wrong sizes and counts, and failing KL callbacks that
 * leave the flow unchanged (its log-densities stay bit-identical). */
static void training(const eqf_flow *source) {
    double x[N_SAMPLES * PER_SAMPLE], log_q[N_SAMPLES], before[N_SAMPLES], after[N_SAMPLES];
    double bad[N_SAMPLES * PER_SAMPLE];
    eqf_train_options *options = OPTIONS_SENTINEL;
    eqf_train_summary summary;
    eqf_flow *flow = NULL;
    eqf_energy *other = NULL;
    int i;

    CHECK_FAILS(eqf_train_options_new(NULL), EQF_ERR_NULL_POINTER, "out");
    CHECK_FAILS(eqf_train_options_set_epochs(NULL, 1), EQF_ERR_NULL_POINTER, "options");
    CHECK_FAILS(eqf_train_options_set_kl_energy_fn(NULL, failing_energy, NULL),
                EQF_ERR_NULL_POINTER, "options");
    CHECK(eqf_train_options_new(&options) == EQF_OK && options != OPTIONS_SENTINEL);
    CHECK(eqf_flow_new(N_PARTICLES, DIM, 5, &flow) == EQF_OK);
    if (options == OPTIONS_SENTINEL || flow == NULL) {
        return;
    }
    /* Training data: samples of another flow, translated (any centre of mass is fine). */
    CHECK(eqf_flow_sample(source, 3, N_SAMPLES, x, log_q) == EQF_OK);
    for (i = 0; i < N_SAMPLES * PER_SAMPLE; i++) {
        x[i] += i % DIM == 0 ? 5.0 : -1.0;
    }
    CHECK(eqf_flow_log_density(flow, N_SAMPLES, x, before) == EQF_OK);

    /* Setters: valid values pass, invalid ones fail and change nothing. */
    CHECK(eqf_train_options_set_epochs(options, 2) == EQF_OK);
    CHECK(eqf_train_options_set_rk4_steps(options, 4) == EQF_OK);
    CHECK_FAILS(eqf_train_options_set_epochs(options, 0), EQF_ERR_INVALID_ARGUMENT, "n_epochs");
    CHECK_FAILS(eqf_train_options_set_epochs(options, -5), EQF_ERR_INVALID_ARGUMENT,
                "negative");
    CHECK_FAILS(eqf_train_options_set_batch_size(options, 0), EQF_ERR_INVALID_ARGUMENT,
                "batch_size");
    CHECK_FAILS(eqf_train_options_set_rk4_steps(options, 0), EQF_ERR_INVALID_ARGUMENT,
                "n_steps");
    CHECK_FAILS(eqf_train_options_set_learning_rate(options, NAN), EQF_ERR_INVALID_ARGUMENT,
                "lr");
    CHECK_FAILS(eqf_train_options_set_weight_decay(options, -1.0), EQF_ERR_INVALID_ARGUMENT,
                "weight_decay");
    CHECK_FAILS(eqf_train_options_set_kT(options, 0.0), EQF_ERR_INVALID_ARGUMENT, "kT");
    CHECK_FAILS(eqf_train_options_set_kl_samples(options, 0), EQF_ERR_INVALID_ARGUMENT,
                "n_kl_samples");
    CHECK_FAILS(eqf_train_options_set_lambda(options, 1.5), EQF_ERR_INVALID_ARGUMENT, "[0, 1]");
    CHECK_FAILS(eqf_train_options_set_lambda_linear(options, 1.0, -0.5),
                EQF_ERR_INVALID_ARGUMENT, "[0, 1]");

    /* Wrong sizes and counts: nothing is trained, the summary is not written. */
    fill_summary(&summary);
    summary.size = 8;
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_INVALID_ARGUMENT, "sizeof(eqf_train_summary)");
    CHECK(summary.size == 8 && summary.n_epochs == -1);
    fill_summary(&summary);
    CHECK_FAILS(eqf_flow_train(NULL, options, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_NULL_POINTER, "flow");
    CHECK_FAILS(eqf_flow_train(flow, NULL, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_NULL_POINTER, "options");
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, NULL, 0, NULL, &summary),
                EQF_ERR_NULL_POINTER, "x_train");
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, 2, NULL, &summary),
                EQF_ERR_NULL_POINTER, "x_validation");
    CHECK_FAILS(eqf_flow_train(flow, options, 0, x, 0, NULL, &summary),
                EQF_ERR_INVALID_ARGUMENT, "n_train = 0");
    CHECK_FAILS(eqf_flow_train(flow, options, -1, x, 0, NULL, &summary),
                EQF_ERR_INVALID_ARGUMENT, "n_train");
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, -4, x, &summary),
                EQF_ERR_INVALID_ARGUMENT, "n_validation");
    CHECK_FAILS(eqf_flow_train(flow, options, INT64_MAX, x, 0, NULL, &summary),
                EQF_ERR_INVALID_ARGUMENT, "n_train");
    memcpy(bad, x, sizeof x);
    bad[3] = NAN;
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, bad, 0, NULL, &summary),
                EQF_ERR_NON_FINITE, "training");
    CHECK(summary_untouched(&summary));

    /* KL targets: missing, for other particles, failing callbacks. */
    CHECK(eqf_train_options_set_lambda(options, 0.5) == EQF_OK);
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_INVALID_ARGUMENT, "eqf_train_options_set_kl_energy");
    CHECK(eqf_energy_double_well(3, DIM, 0.0, -4.0, 0.9, 4.0, &other) == EQF_OK);
    CHECK(eqf_train_options_set_kl_energy(options, other) == EQF_OK);
    CHECK(eqf_energy_free(other) == EQF_OK); /* the options keep it */
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_INVALID_ARGUMENT, "3 particles");
    CHECK(eqf_train_options_set_kl_energy_fn(options, failing_energy, NULL) == EQF_OK);
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_CALLBACK, "returned 5: host force field not initialised");
    CHECK(eqf_train_options_set_kl_energy_fn(options, no_gradient_energy, NULL) == EQF_OK);
    CHECK_FAILS(eqf_flow_train(flow, options, N_SAMPLES, x, 0, NULL, &summary),
                EQF_ERR_CALLBACK, "non-finite gradient");
    CHECK(summary_untouched(&summary));
    CHECK(eqf_flow_log_density(flow, N_SAMPLES, x, after) == EQF_OK);
    CHECK(memcmp(before, after, sizeof before) == 0);

    /* Back to pure ML: the run has the 2 epochs set before the rejected values. */
    CHECK(eqf_train_options_set_lambda(options, 1.0) == EQF_OK);
    CHECK(eqf_train_options_set_kl_energy_fn(options, NULL, NULL) == EQF_OK);
    CHECK(eqf_flow_train(flow, options, N_SAMPLES, x, N_SAMPLES, x, &summary) == EQF_OK);
    CHECK(summary.size == sizeof summary && summary.n_epochs == 2 && summary.n_steps == 2);
    CHECK(summary.stopped_early == 0 && isfinite(summary.best_validation_nll));
    CHECK(eqf_flow_log_density(flow, N_SAMPLES, x, after) == EQF_OK);
    CHECK(memcmp(before, after, sizeof before) != 0);
    CHECK(eqf_train_options_free(options) == EQF_OK);
    CHECK(eqf_flow_free(flow) == EQF_OK);
}

int main(void) {
    eqf_flow *flow = NULL;
    eqf_energy *energy = NULL;

    versions();
    no_error_yet();
    last_error_truncation();
    free_null();
    flow_creation();
    energy_creation();

    if (eqf_flow_new(N_PARTICLES, DIM, 11, &flow) != EQF_OK ||
        eqf_energy_double_well(N_PARTICLES, DIM, 0.0, -4.0, 0.9, 4.0, &energy) != EQF_OK) {
        fprintf(stderr, "cannot create the flow or the energy: %s\n", last_message());
        return 1;
    }
    flow_calls(flow);
    energy_calls(energy, flow);
    shared_memory(flow, energy);
    nested_callback_messages(flow, energy);
    model_files(flow);
    training(flow);
    CHECK(eqf_flow_free(flow) == EQF_OK);
    CHECK(eqf_energy_free(energy) == EQF_OK);

    printf("errors: %d checks, %d failed\n", n_checks, n_failed);
    return n_failed == 0 ? 0 : 1;
}
