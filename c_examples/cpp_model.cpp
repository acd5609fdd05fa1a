// cpp_model.cpp: a trained model from C++ (eqflow.hpp), e.g. the shipped models/dw4.json.
//
// Loads the model with Flow::load, reads its integrator, samples and requires the sampled
// log q to equal the evaluated one (to 1e-8), queries the step certificate (for the model's
// RK4 grid, a finer one and Dormand-Prince, and the smallest certified step count), runs flow
// moves and reads their solver statistics, saves and reloads the model bit for bit, and checks
// the error statuses of a missing file and of a moved-from handle. Also the library version,
// the ABI version, the thread count and a log callback. Built with -std=c++17 -Wall -Wextra
// -Werror -pedantic.
//
// Usage: cpp_model --model PATH [--save PATH] [--quick]. --save writes a copy of the model
// there (and reloads it); --quick skips the costlier certificate checks (for valgrind).
// Exit status 0 on success.

#include <eqflow.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

int n_failed = 0;

void require(bool condition, const char *what) {
    if (!condition) {
        std::fprintf(stderr, "check failed: %s\n", what);
        n_failed++;
    }
}

/* The status of the eqflow::Error that `call` throws, or EQF_OK if it throws none. */
template <class F>
int32_t status_of(F &&call) {
    try {
        call();
    } catch (const eqflow::Error &error) {
        return error.status();
    }
    return EQF_OK;
}

/* What the log callback received. A log callback must be thread-safe in general; plain counters
 * suffice here because only failed calls on this thread log while it is installed. */
struct LogCounts {
    int debug = 0;
    int other = 0;
    std::string last;
};

} // namespace

int main(int argc, char **argv) {
    std::string model, save;
    bool quick = false;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model = argv[++i];
        } else if (std::strcmp(argv[i], "--save") == 0 && i + 1 < argc) {
            save = argv[++i];
        } else if (std::strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else {
            model.clear();
            break;
        }
    }
    if (model.empty()) {
        std::fprintf(stderr, "usage: cpp_model --model PATH [--save PATH] [--quick]\n");
        return 2;
    }
    try {
#ifdef EQF_EXPECTED_VERSION
        require(eqflow::version() == EQF_EXPECTED_VERSION, "the library's version");
#endif
        require(eqflow::abi_version() == 1, "ABI version 1");
        require(eqflow::num_threads() >= 1, "a thread pool");

        const eqflow::Flow flow = eqflow::Flow::load(model);
        require(flow.n_particles() == 4 && flow.dim() == 2, "a DW-4 model");
        const eqflow::Integrator integrator = flow.integrator();
        require(integrator.method == EQF_METHOD_RK4 && integrator.n_steps == 20 &&
                    integrator.density_mode == EQF_DENSITY_EXACT_DISCRETE,
                "the model's integrator: exact-discrete RK4, 20 steps");
        require(integrator.rtol == 0.0 && integrator.atol == 0.0, "no tolerances for RK4");

        // Sampled log q equals evaluated log q (exact-discrete mode).
        const std::size_t n = quick ? 20 : 200;
        auto [x, log_q] = flow.sample(17, n);
        const std::vector<double> log_q_again = flow.log_density(x);
        double worst = 0.0;
        for (std::size_t s = 0; s < n; s++) {
            require(std::isfinite(log_q[s]), "a finite log q");
            worst = std::fmax(worst, std::fabs(log_q[s] - log_q_again[s]));
        }
        require(worst <= 1e-8, "sampled log q = evaluated log q to 1e-8");

        // The step certificate of the model's 20-step grid, of a fine grid and of an adaptive
        // method (never certified).
        const eqflow::StepCertificate certificate = flow.certificate();
        require(std::isfinite(certificate.max_contraction) && certificate.max_contraction > 0.0,
                "a finite contraction bound");
        require(certificate.certified == (certificate.max_contraction < 1.0),
                "certified exactly when the bound is below 1");
        // Per configuration: never above the global bound, each sample certified when the
        // flow is.
        const std::vector<double> step_bound = flow.certify_configurations(x);
        require(step_bound.size() == n, "one bound per configuration");
        for (const double b : step_bound) {
            require(b > 0.0 && b <= certificate.max_contraction,
                    "per-configuration bounds at most the global one");
            require(!certificate.certified || b < 1.0, "a certified flow certifies each sample");
        }
        const eqflow::Flow adaptive =
            flow.with_integrator(EQF_METHOD_DOPRI5, 0, 1e-5, 1e-10, EQF_DENSITY_CONTINUOUS);
        const eqflow::StepCertificate adaptive_certificate = adaptive.certificate();
        require(!adaptive_certificate.certified &&
                    adaptive_certificate.max_contraction == std::numeric_limits<double>::infinity(),
                "Dormand-Prince is never certified");
        const eqflow::Integrator dopri = adaptive.integrator();
        require(dopri.method == EQF_METHOD_DOPRI5 && dopri.rtol == 1e-5 && dopri.atol == 1e-10 &&
                    dopri.density_mode == EQF_DENSITY_CONTINUOUS,
                "the integrator of the copy");
        long long needed = -1;
        if (!quick) {
            const std::optional<int64_t> count = flow.certified_step_count();
            require(count.has_value(), "some RK4 step count is certified");
            if (count) {
                needed = static_cast<long long>(*count);
                const eqflow::Flow fine =
                    flow.with_integrator(EQF_METHOD_RK4, *count, 0.0, 0.0,
                                         EQF_DENSITY_EXACT_DISCRETE);
                const eqflow::Flow coarse =
                    flow.with_integrator(EQF_METHOD_RK4, *count - 1, 0.0, 0.0,
                                         EQF_DENSITY_EXACT_DISCRETE);
                require(fine.certificate().certified && fine.certificate().max_contraction < 1.0,
                        "the smallest certified step count is certified");
                require(!coarse.certificate().certified,
                        "one step fewer is not certified");
                require(certificate.certified == (*count <= 20),
                        "the model's grid is certified iff it has enough steps");
                // Strict mode, on for every flow unless it opts out: the certified grid
                // samples, one step fewer is refused with the certified step count in the
                // message, and its opt-out (a copy) samples anyway.
                const eqflow::Flow lax_coarse = coarse.with_require_certificate(false);
                require(fine.require_certificate() && coarse.require_certificate() &&
                            !lax_coarse.require_certificate(),
                        "strict by default; the opt-out is a property of the copy");
                require(fine.sample(3, 4).second.size() == 4,
                        "a certified grid samples in strict mode");
                bool refused = false;
                try {
                    (void)coarse.sample(3, 4);
                } catch (const eqflow::Error &e) {
                    const std::string expected =
                        "certified with " + std::to_string(*count) + " RK4 steps";
                    refused = e.status() == EQF_ERR_UNCERTIFIED &&
                              std::string(e.what()).find(expected) != std::string::npos;
                }
                require(refused, "an uncertified grid is refused in strict mode");
                require(lax_coarse.sample(3, 4).second.size() == 4,
                        "the opt-out samples an uncertified grid");
            }
        }

        // Flow moves with the built-in DW-4 energy, and the solver work they cost.
        const eqflow::Energy energy = eqflow::Energy::double_well(4, 2, 0.0, -4.0, 0.9, 4.0);
        std::vector<double> state(x.begin(), x.begin() + 8);
        double U = energy(state.data());
        eqflow::Move move(flow, 1.0, 5);
        const int n_moves = quick ? 5 : 100;
        for (int step = 0; step < n_moves; step++) {
            move.step(state, U, [&](const double *y) { return energy(y); });
        }
        const eqflow::MoveStats stats = move.stats();
        const eqf_solver_stats work = move.solver_stats();
        require(stats.n_proposed == n_moves, "one decided proposal per step");
        require(work.n_steps >= 20 * stats.n_proposed, "a 20-step push-forward per proposal");
        require(work.n_eval > 0 && work.n_jacobian > 0, "the exact-discrete solver's work");
        require(work.n_newton > 0, "the first current state was pulled back");
        require(work.n_rejected == 0, "RK4 rejects no steps");
        require(std::fabs(U - energy(state.data())) <= 1e-9 * (1.0 + std::fabs(U)),
                "the tracked energy is the state's");

        // Save and reload: the same densities, bit for bit.
        if (!save.empty()) {
            flow.save(save);
            const eqflow::Flow reloaded = eqflow::Flow::load(save);
            require(reloaded.log_density(x) == log_q_again, "a reloaded model is bit-exact");
        }

        // Failures: a missing file, a moved-from (null) handle, logged to a callback.
        LogCounts counts;
        eqflow::set_log_callback([&counts](int32_t level, const char *message) {
            if (level == EQF_LOG_DEBUG) {
                counts.debug++;
                counts.last = message;
            } else {
                counts.other++;
            }
        });
        require(status_of([] { eqflow::Flow::load("/nonexistent/model.json"); }) == EQF_ERR_IO,
                "a missing model file: EQF_ERR_IO");
        require(counts.debug == 1 && counts.last.find("/nonexistent/model.json") !=
                                         std::string::npos,
                "the failure reached the log callback with the path");
        eqflow::Flow moved = eqflow::Flow::load(model);
        const eqflow::Flow taken = std::move(moved);
        require(status_of([&] { (void)moved.certificate(); }) == EQF_ERR_NULL_POINTER,
                "the certificate of a null flow: EQF_ERR_NULL_POINTER");
        require(status_of([&] { (void)moved.integrator(); }) == EQF_ERR_NULL_POINTER,
                "the integrator of a null flow: EQF_ERR_NULL_POINTER");
        // A count whose arrays no call accepts throws eqflow::Error before anything is
        // allocated (it threw std::length_error, or wrapped around).
        require(status_of([&] { (void)taken.sample(1, std::size_t(1) << 61); }) ==
                    EQF_ERR_INVALID_ARGUMENT,
                "2^61 samples: EQF_ERR_INVALID_ARGUMENT");
        eqflow::Move moved_move = std::move(move);
        require(status_of([&] { (void)move.solver_stats(); }) == EQF_ERR_NULL_POINTER,
                "the solver stats of a null move: EQF_ERR_NULL_POINTER");
        require(moved_move.solver_stats().n_eval == work.n_eval, "the moved move keeps its work");
        require(counts.debug == 4, "every failure was logged");
        eqflow::clear_log_callback();
        require(status_of([&] { (void)moved.certificate(); }) == EQF_ERR_NULL_POINTER,
                "still EQF_ERR_NULL_POINTER");
        require(counts.debug == 4, "nothing is logged after clear_log_callback");
        require(status_of([&] { flow.save("/nonexistent-dir/model.json"); }) == EQF_ERR_IO,
                "saving to a missing directory: EQF_ERR_IO");

        std::printf("eqflow %s (ABI %d) from C++: %s, RK4-%lld exact-discrete; log q agrees to "
                    "%.1e; step certificate: %s, max contraction %.3f, certified from %lld "
                    "steps; %lld / %lld flow moves accepted, %lld field evaluations, %lld "
                    "Newton steps\n",
                    eqflow::version().c_str(), static_cast<int>(eqflow::abi_version()),
                    model.c_str(), static_cast<long long>(integrator.n_steps), worst,
                    certificate.certified ? "certified" : "not certified",
                    certificate.max_contraction, needed,
                    static_cast<long long>(stats.n_accepted),
                    static_cast<long long>(stats.n_proposed), static_cast<long long>(work.n_eval),
                    static_cast<long long>(work.n_newton));
    } catch (const eqflow::Error &error) {
        std::fprintf(stderr, "eqflow error %d: %s\n", static_cast<int>(error.status()),
                     error.what());
        return 1;
    }
    std::printf("cpp_model: %d failed\n", n_failed);
    return n_failed == 0 ? 0 : 1;
}
