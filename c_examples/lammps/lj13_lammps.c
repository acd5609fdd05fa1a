/*
 * lj13_lammps.c: eqflow's Boltzmann-generator flow moves inside LAMMPS, for the LJ-13 cluster,
 * with every energy computed by LAMMPS.
 *
 * The system (DESIGN.md §2): 13 particles in 3-D,
 *     U(x) = eps * sum_{i<j} [(r_m/d)^12 - 2 (r_m/d)^6] + (k/2) sum_i |x_i - x_mean|^2,
 * eps = 2, r_m = 1, k = 1, kT = 1, mass 1. In LAMMPS (units lj, one process):
 *   - the pair term is pair_style lj/cut with eps_LAMMPS = 2 and sigma = 2^(-1/6), so that
 *     4 eps_LAMMPS [(sigma/d)^12 - (sigma/d)^6] = 2/d^12 - 4/d^6 = eps [(1/d)^12 - 2 (1/d)^6];
 *     cutoff 100 (never reached: the confinement keeps the cluster a few units wide; the
 *     program stops if a pair distance ever exceeds 50) and pair_modify shift no;
 *   - the confinement uses the identity sum_i |x_i - x_mean|^2 = (1/N) sum_{i<j} |x_i - x_j|^2:
 *     a harmonic bond with r0 = 0 between all 78 pairs, bond_style harmonic (E = K (r - r0)^2)
 *     with K = k/(2N) = 1/26, atom_style bond. special_bonds lj 1 1 1 keeps the LJ interaction
 *     of bonded pairs (the default 0 0 0 would delete all of it, since every pair is bonded).
 *     pair_style harmonic/cut is no substitute: it is repulsive only (zero beyond its cutoff);
 *   - boundary s s s (shrink-wrapped, non-periodic: no atom can be lost, no images);
 *   - thermo_modify norm no, because under units lj the thermo "pe" is per atom by default.
 *
 * Dynamics: Langevin MD at kT = 1 (fix nve + fix langevin 1.0 1.0 DAMP SEED, timestep DT) in
 * segments of --steps steps. After every segment, --moves flow moves from a trained model
 * (models/lj13.json, or --model PATH), with eqflow's two-phase protocol:
 *   gather x from LAMMPS, U = pe  ->  eqf_move_propose(x, U) -> x'
 *   scatter x' into LAMMPS, run 0, U' = pe  ->  eqf_move_accept(U')
 *   rejected: scatter x back;  accepted: keep x', and draw new velocities.
 * Velocities: the target of the MD is exp(-(U + K)/kT) with K and U independent, so a
 * Metropolis move of x alone is exact whatever is done with v, and so is redrawing v from
 * Maxwell-Boltzmann (a Gibbs step). After an accepted flow move the particles are relabelled
 * arbitrarily (the flow is permutation equivariant) and the old velocities belong to another
 * configuration, so the program draws new velocities from the exact Maxwell-Boltzmann
 * distribution (independent N(0, kT/m) components, from its own seeded generator, set with
 * lammps_scatter_atoms "v"); LAMMPS's `velocity create` is not used because it rescales to the
 * exact target temperature. A rejected move leaves the velocities untouched.
 *
 * Checks: every energy LAMMPS reports (MD states, proposals, quenched minima) is compared with
 * eqflow's own LJ-13 energy (eqf_energy_lennard_jones(13, 3, 2, 1, 1) + eqf_energy_eval); a
 * relative difference above 1e-9 fails the run.
 *
 * Minima: after every segment a copy of the current state is quenched in a second LAMMPS
 * instance (same potential, no fixes; minimize with conjugate gradients), and the minimum is
 * identified by its 78 sorted pair distances (two minima are the same if they all agree within
 * MIN_TOL: invariant under translation, rotation, reflection and relabelling). The same is done
 * for plain Langevin MD (a third instance, same seeds, no flow moves) run for the same wall time
 * as the MD + flow run (quenching excluded from both clocks).
 *
 * Usage: lj13_lammps [--segments N] [--steps N] [--moves N] [--model PATH]
 * C99. Exit status 0 on success, 1 on any failure (message on stderr). LAMMPS itself exits the
 * process on an invalid input command, so all inputs are fixed here and the arguments are
 * validated before any command is issued.
 */
#define _POSIX_C_SOURCE 199309L

#include <eqflow.h>
#include <lammps/library.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_ATOMS 13
#define DIM 3
#define N_COORDS (N_ATOMS * DIM)
#define N_PAIRS (N_ATOMS * (N_ATOMS - 1) / 2)
#define LJ_EPSILON 2.0
#define LJ_RM 1.0
#define CONFINEMENT_K 1.0
#define KT 1.0
#define DT 0.002
#define LANGEVIN_DAMP 0.5
#define PAIR_CUTOFF 100.0
#define MAX_PAIR_DISTANCE 50.0
#define ENERGY_RTOL 1e-9
#define MIN_TOL 1e-3
#define MAX_MINIMA 4096
#define QUENCH_GTOL 1e-6
#define QUENCH_RESTARTS 5
#define SEED_LANGEVIN 4928459
#define SEED_MOVE 2024
#define SEED_VELOCITIES 12345

/* Argument vectors for lammps_open_no_mpi and names for gather/scatter (the API takes char *). */
static char ARG0[] = "lj13_lammps", ARG_SCREEN[] = "-screen", ARG_LOG[] = "-log",
            ARG_NONE1[] = "none", ARG_NONE2[] = "none", ARG_NOCITE[] = "-nocite";
static char NAME_X[] = "x", NAME_V[] = "v";

static void report(const char *call, int32_t status) {
    char message[512];
    eqf_last_error_message(message, sizeof message);
    fprintf(stderr, "%s failed with status %d: %s\n", call, (int)status, message);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* splitmix64 and Box-Muller: the host's random numbers (velocities). */
static uint64_t host_rng = SEED_VELOCITIES;
static double uniform(void) {
    uint64_t z = (host_rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double gaussian(void) {
    return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform());
}

/* Exact Maxwell-Boltzmann velocities (mass 1): every component N(0, kT). */
static void draw_velocities(void *lmp) {
    double v[N_COORDS];
    int i;
    for (i = 0; i < N_COORDS; i++) {
        v[i] = sqrt(KT) * gaussian();
    }
    lammps_scatter_atoms(lmp, NAME_V, 1, 3, v);
}

static void command(void *lmp, const char *text) { lammps_command(lmp, text); }

/*
 * Creates a LAMMPS instance holding the LJ-13 system at positions x. With dynamics, adds
 * fix nve + fix langevin and Maxwell-Boltzmann velocities.
 */
static void *lammps_lj13(const double *x, int dynamics) {
    char *args[] = {ARG0, ARG_SCREEN, ARG_NONE1, ARG_LOG, ARG_NONE2, ARG_NOCITE};
    char line[256];
    void *lmp = lammps_open_no_mpi(6, args, NULL);
    int i, j;
    if (lmp == NULL) {
        return NULL;
    }
    command(lmp, "units lj");
    command(lmp, "atom_style bond");
    command(lmp, "atom_modify map array");
    command(lmp, "boundary s s s");
    command(lmp, "region box block -50 50 -50 50 -50 50");
    command(lmp, "create_box 1 box bond/types 1 extra/bond/per/atom 12 "
                 "extra/special/per/atom 24");
    command(lmp, "mass 1 1.0");
    /* 4 * 2 * [(s/d)^12 - (s/d)^6] with s^6 = 1/2: 2/d^12 - 4/d^6. */
    snprintf(line, sizeof line, "pair_style lj/cut %.1f", PAIR_CUTOFF);
    command(lmp, line);
    snprintf(line, sizeof line, "pair_coeff 1 1 %.17g %.17g", LJ_EPSILON,
             LJ_RM * pow(2.0, -1.0 / 6.0));
    command(lmp, line);
    command(lmp, "pair_modify shift no");
    command(lmp, "bond_style harmonic");
    /* E = K r^2 per pair with K = k / (2N). */
    snprintf(line, sizeof line, "bond_coeff 1 %.17g 0.0", CONFINEMENT_K / (2.0 * N_ATOMS));
    command(lmp, line);
    command(lmp, "special_bonds lj/coul 1.0 1.0 1.0");
    for (i = 0; i < N_ATOMS; i++) {
        snprintf(line, sizeof line, "create_atoms 1 single %.17g %.17g %.17g", x[i * DIM],
                 x[i * DIM + 1], x[i * DIM + 2]);
        command(lmp, line);
    }
    for (i = 0; i < N_ATOMS; i++) {
        for (j = i + 1; j < N_ATOMS; j++) {
            snprintf(line, sizeof line, "create_bonds single/bond 1 %d %d", i + 1, j + 1);
            command(lmp, line);
        }
    }
    command(lmp, "neighbor 1.0 bin");
    command(lmp, "neigh_modify every 1 delay 0 check yes");
    command(lmp, "thermo_style custom step pe");
    command(lmp, "thermo_modify norm no");
    command(lmp, "thermo 0");
    snprintf(line, sizeof line, "timestep %.17g", DT);
    command(lmp, line);
    if (dynamics) {
        command(lmp, "fix integrate all nve");
        snprintf(line, sizeof line, "fix thermostat all langevin %.17g %.17g %.17g %d", KT, KT,
                 LANGEVIN_DAMP, SEED_LANGEVIN);
        command(lmp, line);
        draw_velocities(lmp);
    } else {
        command(lmp, "min_style cg");
    }
    /* The energy of the initial configuration, so that "pe" is current. */
    command(lmp, "run 0 post no");
    return lmp;
}

static void gather_x(void *lmp, double *x) { lammps_gather_atoms(lmp, NAME_X, 1, 3, x); }
static void scatter_x(void *lmp, double *x) { lammps_scatter_atoms(lmp, NAME_X, 1, 3, x); }
static double lammps_pe(void *lmp) { return lammps_get_thermo(lmp, "pe"); }

/* The reference: eqflow's own LJ-13 energy, and the largest relative difference seen. */
static int sorted_distances(const double *x, double *d);

typedef struct {
    eqf_energy *energy;
    double max_rel;
    long n_checked;
} energy_check;

static int check_energy(energy_check *check, const double *x, double u_lammps,
                        const char *what) {
    double u_eqflow, rel, d[N_PAIRS];
    int32_t status = eqf_energy_eval(check->energy, 1, x, &u_eqflow, NULL);
    /* The LAMMPS cutoff must never cut: every checked configuration is within its range. */
    if (sorted_distances(x, d) != 0) {
        fprintf(stderr, "%s: the cluster is wider than the pair cutoff allows\n", what);
        return 1;
    }
    if (status != EQF_OK) {
        report("eqf_energy_eval", status);
        return 1;
    }
    if (!isfinite(u_eqflow) || !isfinite(u_lammps)) {
        fprintf(stderr, "%s: non-finite energy, LAMMPS %.17g, eqflow %.17g\n", what, u_lammps,
                u_eqflow);
        return 1;
    }
    rel = fabs(u_lammps - u_eqflow) / fmax(1.0, fmax(fabs(u_lammps), fabs(u_eqflow)));
    check->n_checked++;
    if (rel > check->max_rel) {
        check->max_rel = rel;
    }
    if (rel > ENERGY_RTOL) {
        fprintf(stderr, "%s: LAMMPS energy %.17g, eqflow %.17g, relative difference %.3g\n", what,
                u_lammps, u_eqflow, rel);
        return 1;
    }
    return 0;
}

/* Sorted pair distances; fails if the cluster has come apart (never expected). */
static int compare_doubles(const void *a, const void *b) {
    double da = *(const double *)a, db = *(const double *)b;
    return (da > db) - (da < db);
}
static int sorted_distances(const double *x, double *d) {
    int i, j, k, p = 0;
    for (i = 0; i < N_ATOMS; i++) {
        for (j = i + 1; j < N_ATOMS; j++) {
            double s = 0.0;
            for (k = 0; k < DIM; k++) {
                double r = x[i * DIM + k] - x[j * DIM + k];
                s += r * r;
            }
            d[p++] = sqrt(s);
        }
    }
    qsort(d, N_PAIRS, sizeof *d, compare_doubles);
    if (d[N_PAIRS - 1] > MAX_PAIR_DISTANCE) {
        fprintf(stderr, "a pair distance of %g exceeds %g\n", d[N_PAIRS - 1], MAX_PAIR_DISTANCE);
        return 1;
    }
    return 0;
}

/* The distinct minima of one run. */
typedef struct {
    double distances[MAX_MINIMA][N_PAIRS];
    double energy[MAX_MINIMA];
    long visits[MAX_MINIMA];
    int n;
    long n_quenches, n_unconverged;
} minima;

/* |grad U| of eqflow's LJ-13 energy at x, or a negative value on failure. */
static double gradient_norm(energy_check *check, const double *x) {
    double u, gradient[N_COORDS], norm = 0.0;
    int k;
    int32_t status = eqf_energy_eval(check->energy, 1, x, &u, gradient);
    if (status != EQF_OK) {
        report("eqf_energy_eval", status);
        return -1.0;
    }
    for (k = 0; k < N_COORDS; k++) {
        norm += gradient[k] * gradient[k];
    }
    return sqrt(norm);
}

/*
 * Quenches a copy of x in the scratch instance and records the minimum it reaches. LAMMPS's CG
 * occasionally stops at its iteration limit on a flat stretch; the minimisation is then
 * restarted (a fresh CG direction) up to QUENCH_RESTARTS times. Quenches that still end with
 * |grad U| > QUENCH_GTOL are counted as unconverged and not assigned to a minimum.
 */
static int quench(void *scratch, const double *x, minima *found, energy_check *check) {
    double xq[N_COORDS], d[N_PAIRS], u, norm;
    int m, p, attempt;
    memcpy(xq, x, sizeof xq);
    scatter_x(scratch, xq);
    for (attempt = 0; attempt < QUENCH_RESTARTS; attempt++) {
        command(scratch, "minimize 0.0 1.0e-10 5000 50000");
        gather_x(scratch, xq);
        if ((norm = gradient_norm(check, xq)) < 0.0) {
            return 1;
        }
        if (norm <= QUENCH_GTOL) {
            break;
        }
    }
    /* minimize leaves "pe" current for the final configuration. */
    u = lammps_pe(scratch);
    if (check_energy(check, xq, u, "quenched state") != 0 || sorted_distances(xq, d) != 0) {
        return 1;
    }
    found->n_quenches++;
    if (norm > QUENCH_GTOL) {
        found->n_unconverged++;
        return 0;
    }
    for (m = 0; m < found->n; m++) {
        for (p = 0; p < N_PAIRS; p++) {
            if (fabs(found->distances[m][p] - d[p]) > MIN_TOL) {
                break;
            }
        }
        if (p == N_PAIRS) {
            found->visits[m]++;
            return 0;
        }
    }
    if (found->n == MAX_MINIMA) {
        fprintf(stderr, "more than %d distinct minima\n", MAX_MINIMA);
        return 1;
    }
    memcpy(found->distances[found->n], d, sizeof d);
    found->energy[found->n] = u;
    found->visits[found->n] = 1;
    found->n++;
    return 0;
}

static double lowest(const minima *found) {
    double e = INFINITY;
    int m;
    for (m = 0; m < found->n; m++) {
        e = fmin(e, found->energy[m]);
    }
    return e;
}

/* A regular icosahedron around a central particle, centre at (1, 2, 3). */
static void initial_positions(double *x) {
    const double phi = 0.5 * (1.0 + sqrt(5.0));
    const double scale = 1.0 / sqrt(1.0 + phi * phi); /* vertices at distance 1 */
    const double v[12][3] = {{0, 1, phi},  {0, -1, phi},  {0, 1, -phi},  {0, -1, -phi},
                             {1, phi, 0},  {-1, phi, 0},  {1, -phi, 0},  {-1, -phi, 0},
                             {phi, 0, 1},  {-phi, 0, 1},  {phi, 0, -1},  {-phi, 0, -1}};
    int i, k;
    for (k = 0; k < DIM; k++) {
        x[k] = 1.0 + k;
    }
    for (i = 0; i < 12; i++) {
        for (k = 0; k < DIM; k++) {
            x[(i + 1) * DIM + k] = 1.0 + k + scale * v[i][k];
        }
    }
}

static int parse_count(const char *text, long *out) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < 0 || value > 100000000L) {
        return 1;
    }
    *out = value;
    return 0;
}

int main(int argc, char **argv) {
    const char *model_path = "models/lj13.json";
    long n_segments = 200, n_steps = 500, n_moves = 5, segment, m, plain_segments = 0;
    eqf_flow *flow = NULL;
    eqf_move *move = NULL;
    energy_check check = {NULL, 0.0, 0};
    void *md = NULL, *plain = NULL, *scratch = NULL;
    static minima flow_minima, plain_minima, plain_minima_same_steps;
    double x[N_COORDS], proposal[N_COORDS], x0[N_COORDS], u, u_proposed;
    double t_flow = 0.0, t_plain = 0.0, t_start;
    int64_t n_proposed = 0, n_accepted = 0;
    int32_t status, accepted;
    int exit_code = 1, i;
    char run_segment[64];

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--segments") == 0 && i + 1 < argc) {
            if (parse_count(argv[++i], &n_segments) != 0 || n_segments < 1) {
                fprintf(stderr, "--segments must be a positive integer\n");
                return 1;
            }
        } else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
            if (parse_count(argv[++i], &n_steps) != 0 || n_steps < 1) {
                fprintf(stderr, "--steps must be a positive integer\n");
                return 1;
            }
        } else if (strcmp(argv[i], "--moves") == 0 && i + 1 < argc) {
            if (parse_count(argv[++i], &n_moves) != 0) {
                fprintf(stderr, "--moves must be a non-negative integer\n");
                return 1;
            }
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model_path = argv[++i];
        } else {
            fprintf(stderr,
                    "usage: %s [--segments N] [--steps N] [--moves N] [--model PATH]\n",
                    argv[0]);
            return 1;
        }
    }
    snprintf(run_segment, sizeof run_segment, "run %ld post no", n_steps);

    if ((status = eqf_flow_load(model_path, &flow)) != EQF_OK) {
        report("eqf_flow_load", status);
        goto cleanup;
    }
    if (eqf_flow_n_particles(flow) != N_ATOMS || eqf_flow_dim(flow) != DIM) {
        fprintf(stderr, "%s is not an LJ-13 model\n", model_path);
        goto cleanup;
    }
    if ((status = eqf_move_new(flow, KT, SEED_MOVE, &move)) != EQF_OK) {
        report("eqf_move_new", status);
        goto cleanup;
    }
    if ((status = eqf_energy_lennard_jones(N_ATOMS, DIM, LJ_EPSILON, LJ_RM, CONFINEMENT_K,
                                           &check.energy)) != EQF_OK) {
        report("eqf_energy_lennard_jones", status);
        goto cleanup;
    }

    initial_positions(x0);
    md = lammps_lj13(x0, 1);
    plain = lammps_lj13(x0, 1);
    scratch = lammps_lj13(x0, 0);
    if (md == NULL || plain == NULL || scratch == NULL) {
        fprintf(stderr, "lammps_open_no_mpi failed\n");
        goto cleanup;
    }
    if (lammps_get_natoms(md) != N_ATOMS) {
        fprintf(stderr, "LAMMPS has %g atoms\n", lammps_get_natoms(md));
        goto cleanup;
    }
    if (check_energy(&check, x0, lammps_pe(md), "initial state") != 0) {
        goto cleanup;
    }

    /* MD + flow moves. */
    for (segment = 0; segment < n_segments; segment++) {
        t_start = now();
        command(md, run_segment);
        gather_x(md, x);
        u = lammps_pe(md);
        if (check_energy(&check, x, u, "MD state") != 0) {
            goto cleanup;
        }
        for (m = 0; m < n_moves; m++) {
            if ((status = eqf_move_propose(move, x, u, proposal)) != EQF_OK) {
                report("eqf_move_propose", status);
                goto cleanup;
            }
            scatter_x(md, proposal);
            command(md, "run 0 post no");
            u_proposed = lammps_pe(md);
            if (check_energy(&check, proposal, u_proposed, "flow proposal") != 0) {
                goto cleanup;
            }
            if ((status = eqf_move_accept(move, u_proposed, &accepted)) != EQF_OK) {
                report("eqf_move_accept", status);
                goto cleanup;
            }
            if (accepted) {
                memcpy(x, proposal, sizeof x);
                u = u_proposed;
                draw_velocities(md);
            } else {
                scatter_x(md, x);
            }
        }
        t_flow += now() - t_start;
        if (quench(scratch, x, &flow_minima, &check) != 0) {
            goto cleanup;
        }
    }
    if ((status = eqf_move_stats(move, &n_proposed, &n_accepted)) != EQF_OK) {
        report("eqf_move_stats", status);
        goto cleanup;
    }
    if (n_proposed != n_segments * n_moves || n_accepted < 0 || n_accepted > n_proposed) {
        fprintf(stderr, "unexpected statistics %lld / %lld\n", (long long)n_accepted,
                (long long)n_proposed);
        goto cleanup;
    }

    /* Plain Langevin MD for the same wall time (at least the same number of segments). */
    while (plain_segments < n_segments || t_plain < t_flow) {
        t_start = now();
        command(plain, run_segment);
        gather_x(plain, x);
        u = lammps_pe(plain);
        t_plain += now() - t_start;
        if (check_energy(&check, x, u, "plain MD state") != 0 ||
            quench(scratch, x, &plain_minima, &check) != 0) {
            goto cleanup;
        }
        plain_segments++;
        if (plain_segments == n_segments) {
            plain_minima_same_steps = plain_minima;
        }
    }

    printf("LJ-13 in LAMMPS %d (units lj, lj/cut eps 2 sigma 2^(-1/6) + harmonic bonds "
           "K 1/26 over all %d pairs), kT = %.1f\n",
           lammps_version(md), N_PAIRS, KT);
    printf("MD + flow: %ld segments of %ld Langevin steps (dt %g) + %ld flow moves (%s)\n",
           n_segments, n_steps, DT, n_moves, model_path);
    printf("flow moves: %lld / %lld accepted (%.4f)\n", (long long)n_accepted,
           (long long)n_proposed,
           n_proposed > 0 ? (double)n_accepted / (double)n_proposed : 0.0);
    printf("energy check: %ld LAMMPS energies vs eqflow, max relative difference %.3e "
           "(tolerance %.0e)\n",
           check.n_checked, check.max_rel, ENERGY_RTOL);
    printf("distinct minima, MD + flow: %d in %ld quenches (%ld unconverged, lowest U %.6f), "
           "%.3f s\n",
           flow_minima.n, flow_minima.n_quenches, flow_minima.n_unconverged,
           lowest(&flow_minima), t_flow);
    printf("distinct minima, plain MD, same number of steps: %d in %ld quenches (%ld "
           "unconverged, lowest U %.6f)\n",
           plain_minima_same_steps.n, plain_minima_same_steps.n_quenches,
           plain_minima_same_steps.n_unconverged, lowest(&plain_minima_same_steps));
    printf("distinct minima, plain MD, same wall time: %d in %ld quenches (%ld unconverged, "
           "lowest U %.6f), %ld segments, %.3f s\n",
           plain_minima.n, plain_minima.n_quenches, plain_minima.n_unconverged,
           lowest(&plain_minima), plain_segments, t_plain);
    exit_code = 0;

cleanup:
    if (md != NULL) {
        lammps_close(md);
    }
    if (plain != NULL) {
        lammps_close(plain);
    }
    if (scratch != NULL) {
        lammps_close(scratch);
    }
    lammps_mpi_finalize();
    eqf_energy_free(check.energy);
    eqf_move_free(move);
    eqf_flow_free(flow);
    return exit_code;
}
