// cpp_move.cpp: the C++17 RAII wrapper eqflow.hpp on DW-4.
//
// Flow, Energy and Move own their C handles (move-only); failures throw eqflow::Error with the
// status and message. Shows the two-phase protocol with the built-in double-well energy, the
// one-call step with a lambda (and what happens when the lambda throws), a flow with another
// integrator, importance weights, and training (TrainOptions with progress and KL-energy
// lambdas; an exception from the energy is rethrown and the flow is unchanged), and a flow
// configured from the host's data (FlowOptions). Built with -std=c++17 -Wall -Wextra -Werror.
// Usage: cpp_move [n_steps] (default 100). Exit status 0 on success.

#include <eqflow.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

static_assert(!std::is_copy_constructible_v<eqflow::Flow>, "handles are move-only");
static_assert(!std::is_copy_constructible_v<eqflow::Move>, "handles are move-only");
static_assert(!std::is_copy_constructible_v<eqflow::FlowOptions>, "handles are move-only");
static_assert(std::is_nothrow_move_constructible_v<eqflow::Move>, "moves are cheap");

namespace {

int n_failed = 0;

void require(bool condition, const char *what) {
    if (!condition) {
        std::fprintf(stderr, "check failed: %s\n", what);
        n_failed++;
    }
}

double centre(const std::vector<double> &x, int k) {
    return (x[k] + x[2 + k] + x[4 + k] + x[6 + k]) / 4.0;
}

} // namespace

int main(int argc, char **argv) {
    const int n_steps = argc > 1 ? std::atoi(argv[1]) : 100;
    if (n_steps < 1) {
        std::fprintf(stderr, "usage: cpp_move [n_steps > 0]\n");
        return 1;
    }
    try {
        const eqflow::Flow flow(4, 2, 7);
        const eqflow::Energy energy = eqflow::Energy::double_well(4, 2, 0.0, -4.0, 0.9, 4.0);
        require(flow.size() == 8, "N*D = 8");

        // A start far from the origin: a high-energy flow sample, shifted.
        auto [samples, log_q] = flow.sample(1, 1);
        (void)log_q;
        std::vector<double> x = samples;
        for (std::size_t i = 0; i < x.size(); i++) {
            x[i] += (i % 2 == 0) ? 5.0 : -1.0;
        }
        double U = energy(x.data());
        const double cx = centre(x, 0), cy = centre(x, 1);

        // Two-phase protocol: propose, evaluate with the host's energy, accept or not.
        eqflow::Move move(flow, 1.0, 42);
        try {
            move.accept(0.0);
            require(false, "accept without propose throws");
        } catch (const eqflow::Error &error) {
            require(error.status() == EQF_ERR_INVALID_STATE, "accept without propose: status");
        }
        int accepted_two_phase = 0;
        for (int step = 0; step < n_steps; step++) {
            std::vector<double> proposal = move.propose(x, U);
            const double U_proposal = energy(proposal.data());
            if (move.accept(U_proposal)) {
                x = proposal;
                U = U_proposal;
                accepted_two_phase++;
            }
        }
        require(std::fabs(centre(x, 0) - cx) < 1e-9 && std::fabs(centre(x, 1) - cy) < 1e-9,
                "the centre of mass is conserved");

        // One call per step with a lambda; the move is move-only and can live in a vector.
        std::vector<eqflow::Move> moves;
        moves.push_back(std::move(move));
        long n_calls = 0;
        auto host_energy = [&](const double *y) {
            n_calls++;
            return energy(y);
        };
        for (int step = 0; step < n_steps; step++) {
            moves[0].step(x, U, host_energy);
        }
        require(n_calls == n_steps, "one energy call per step");
        const eqflow::MoveStats stats = moves[0].stats();
        require(stats.n_proposed == 2 * n_steps, "a decided proposal per step");
        require(stats.n_accepted >= accepted_two_phase, "statistics include both phases");
        const eqf_solver_stats work = moves[0].solver_stats();
        require(work.n_steps >= 2 * n_steps * 20, "a 20-step push-forward per decided proposal");
        require(work.n_eval > 0 && work.n_jacobian > 0, "the exact-discrete solver's work");

        // An exception in the energy is rethrown; x, U and the move are unchanged.
        const std::vector<double> x_before = x;
        const double U_before = U;
        try {
            moves[0].step(x, U, [](const double *) -> double {
                throw std::runtime_error("host energy failed");
            });
            require(false, "the exception propagates");
        } catch (const std::runtime_error &error) {
            require(std::string(error.what()) == "host energy failed", "the host's exception");
        }
        require(x == x_before && U == U_before, "a failed step changes nothing");
        require(moves[0].stats().n_proposed == 2 * n_steps, "a failed step is not counted");
        require(moves[0].solver_stats().n_steps == work.n_steps &&
                    moves[0].solver_stats().n_eval == work.n_eval,
                "a failed step adds no solver work");
        try {
            moves[0].step(x, U, [](const double *) { return std::nan(""); });
            require(false, "NaN energy throws");
        } catch (const eqflow::Error &error) {
            require(error.status() == EQF_ERR_NON_FINITE, "NaN energy: EQF_ERR_NON_FINITE");
        }

        // Another integrator is another (immutable) flow.
        const eqflow::Flow continuous =
            flow.with_integrator(EQF_METHOD_DOPRI5, 0, 1e-5, 1e-10, EQF_DENSITY_CONTINUOUS);
        try {
            flow.with_integrator(EQF_METHOD_DOPRI5, 0, 1e-5, 1e-10, EQF_DENSITY_EXACT_DISCRETE);
            require(false, "exact-discrete needs RK4");
        } catch (const eqflow::Error &error) {
            require(error.status() == EQF_ERR_INVALID_ARGUMENT, "invalid integrator: status");
        }
        const std::vector<double> log_q_rk4 = flow.log_density(x);
        const std::vector<double> log_q_dopri = continuous.log_density(x);
        require(std::fabs(log_q_rk4[0] - log_q_dopri[0]) < 0.1, "both modes roughly agree");

        // Importance weights of a batch.
        const std::size_t n_batch = 5 * static_cast<std::size_t>(n_steps);
        auto [batch, batch_log_q] = flow.sample(3, n_batch);
        std::vector<double> batch_U(n_batch);
        energy.eval(static_cast<int64_t>(n_batch), batch.data(), batch_U.data());
        const double ess = eqflow::kish_ess(eqflow::log_weights(batch_U, batch_log_q, 1.0));
        require(ess >= 1.0 && ess <= static_cast<double>(n_batch), "1 <= ESS <= n");

        // Training from C++: chained options, a progress lambda that stops early, a KL energy
        // lambda, and an exception from it rethrown with the flow unchanged.
        eqflow::Flow student(4, 2, 11);
        auto [data, data_log_q] = flow.sample(5, 32);
        (void)data_log_q;
        const std::vector<double> untrained = student.log_density(data);
        int n_reports = 0;
        eqflow::TrainOptions options;
        options.epochs(3).batch_size(16).rk4_steps(8).seed(4).progress(
            [&](const eqf_train_epoch &report) {
                n_reports++;
                return report.epoch < 1; // stop after the second epoch
            });
        try {
            options.epochs(0);
            require(false, "epochs(0) throws");
        } catch (const eqflow::Error &error) {
            require(error.status() == EQF_ERR_INVALID_ARGUMENT, "epochs(0): status");
        }
        const eqf_train_summary ml = student.train(options, data);
        require(ml.stopped_early == 1 && ml.n_epochs == 2 && n_reports == 2,
                "the progress lambda stops training");
        require(student.log_density(data) != untrained, "training changed the flow");

        long n_energy_calls = 0;
        options.lambda(0.5).kl_samples(4).kl_energy([&](const double *y, double *gradient) {
            n_energy_calls++;
            double U_y = 0.0;
            energy.eval(1, y, &U_y, gradient);
            return U_y;
        });
        const eqf_train_summary mixed = student.train(options, data, data);
        require(n_energy_calls == 4 * mixed.n_steps, "one KL energy call per KL sample");
        require(!std::isnan(mixed.best_validation_nll), "a validation NLL");

        const std::vector<double> trained = student.log_density(data);
        options.kl_energy([](const double *, double *) -> double {
            throw std::runtime_error("host gradient failed");
        });
        try {
            student.train(options, data);
            require(false, "the KL energy's exception propagates");
        } catch (const std::runtime_error &error) {
            require(std::string(error.what()) == "host gradient failed", "the host's exception");
        }
        require(student.log_density(data) == trained, "a failed training changes nothing");

        // A flow configured for the host's data: scales fitted to the samples above, in a
        // unit ten times larger; a rejected setting throws and changes nothing.
        std::vector<double> data_nm = data;
        for (double &v : data_nm) {
            v *= 0.1;
        }
        eqflow::FlowOptions flow_options;
        flow_options.seed(7).fit_scales(4, 2, data_nm);
        const eqflow::FlowOptions::Scales scales = flow_options.scales();
        require(scales.distance_min >= 0.0 && scales.distance_max > scales.distance_min &&
                    scales.distance_max < 2.0 && scales.prior_sigma > 0.0,
                "fitted scales in the host's unit");
        try {
            flow_options.family("graph");
            require(false, "an unknown family throws");
        } catch (const eqflow::Error &error) {
            require(error.status() == EQF_ERR_INVALID_ARGUMENT, "unknown family: status");
        }
        require(flow_options.scales().distance_max == scales.distance_max,
                "a rejected setting leaves the options unchanged");
        const eqflow::Flow fitted(4, 2, flow_options.kernel_counts(20, 5));
        require(fitted.size() == 8 && std::isfinite(fitted.log_density(data_nm)[0]),
                "a flow from options evaluates the host's data");

        std::printf("eqflow %s from C++: %lld / %lld flow moves accepted, ESS = %.2f of %zu, "
                    "log q (RK4 exact) %.6f vs (Dormand-Prince) %.6f\n",
                    eqflow::version().c_str(), static_cast<long long>(stats.n_accepted),
                    static_cast<long long>(stats.n_proposed), ess, n_batch, log_q_rk4[0],
                    log_q_dopri[0]);
    } catch (const eqflow::Error &error) {
        std::fprintf(stderr, "eqflow error %d: %s\n", static_cast<int>(error.status()),
                     error.what());
        return 1;
    }
    std::printf("cpp_move: %d failed\n", n_failed);
    return n_failed == 0 ? 0 : 1;
}
