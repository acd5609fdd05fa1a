/*
 * eqflow.hpp: header-only C++17 RAII wrapper over the C API in eqflow.h.
 *
 * Written by hand (not generated). Every class owns one C handle, is movable and not copyable,
 * and releases its handle in the destructor. A failed call throws eqflow::Error, which carries
 * the EQF_ERR_* status and the library's message. The thread contract is that of the C API:
 * Flow and Energy objects are immutable and may be shared between threads (as const
 * references); a Move belongs to one thread at a time.
 *
 * Layout of configurations (as in eqflow.h): particle-major, x[i*D + k] (C double x[N][D]), a
 * batch of n configurations adds the slowest index, x[(s*N + i)*D + k].
 */
#ifndef EQFLOW_HPP
#define EQFLOW_HPP

#include "eqflow.h"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace eqflow {

/* A failed eqflow call: status() is the EQF_ERR_* code, what() the library's message. */
class Error : public std::runtime_error {
public:
    Error(int32_t status, const std::string &message)
        : std::runtime_error(message), status_(status) {}

    int32_t status() const noexcept { return status_; }

private:
    int32_t status_;
};

namespace detail {

/* The calling thread's last error message (eqf_last_error_message is per thread). */
inline std::string last_error_message() {
    const std::size_t length = eqf_last_error_message(nullptr, 0);
    std::vector<char> buffer(length + 1, '\0');
    eqf_last_error_message(buffer.data(), buffer.size());
    return std::string(buffer.data(), length);
}

inline void check(int32_t status) {
    if (status != EQF_OK) {
        throw Error(status, last_error_message());
    }
}

inline int64_t count(std::size_t n) { return static_cast<int64_t>(n); }

} // namespace detail

/* The library version, e.g. "0.1.0". */
inline std::string version() { return eqf_version(); }

/* Sets the number of threads of eqflow's batch calls (0 = default); see eqf_set_num_threads. */
inline void set_num_threads(int64_t n) { detail::check(eqf_set_num_threads(n)); }

/* log w[s] = -U[s]/kT - log_q[s]; see eqf_log_weights. */
inline std::vector<double> log_weights(const std::vector<double> &U,
                                       const std::vector<double> &log_q, double kT) {
    if (U.size() != log_q.size()) {
        throw Error(EQF_ERR_DIMENSION_MISMATCH, "log_weights: U and log_q differ in length");
    }
    std::vector<double> log_w(U.size());
    detail::check(
        eqf_log_weights(detail::count(U.size()), U.data(), log_q.data(), kT, log_w.data()));
    return log_w;
}

/* Kish effective sample size of log weights; see eqf_kish_ess. */
inline double kish_ess(const std::vector<double> &log_w) {
    double ess = 0.0;
    detail::check(eqf_kish_ess(detail::count(log_w.size()), log_w.data(), &ess));
    return ess;
}

/* An equivariant normalizing flow (eqf_flow). Immutable: share it between threads freely. */
class Flow {
public:
    /* An untrained flow for n_particles particles in dim dimensions; see eqf_flow_new. */
    Flow(int64_t n_particles, int64_t dim, uint64_t seed) {
        detail::check(eqf_flow_new(n_particles, dim, seed, &raw_));
    }

    /* Takes ownership of a handle from the C API (for example eqf_flow_with_integrator). */
    explicit Flow(eqf_flow *raw) noexcept : raw_(raw) {}

    Flow(Flow &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    Flow &operator=(Flow &&other) noexcept {
        if (this != &other) {
            eqf_flow_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    Flow(const Flow &) = delete;
    Flow &operator=(const Flow &) = delete;
    ~Flow() { eqf_flow_free(raw_); }

    int64_t n_particles() const { return checked_size(eqf_flow_n_particles(get())); }
    int64_t dim() const { return checked_size(eqf_flow_dim(get())); }
    /* N*D, the number of doubles of one configuration. */
    std::size_t size() const { return static_cast<std::size_t>(n_particles() * dim()); }

    /* A new flow with the same parameters and another integrator; see eqf_flow_with_integrator
     * (method EQF_METHOD_*, density_mode EQF_DENSITY_*). */
    Flow with_integrator(int32_t method, int64_t n_steps, double rtol, double atol,
                         int32_t density_mode) const {
        eqf_flow *out = nullptr;
        detail::check(
            eqf_flow_with_integrator(get(), method, n_steps, rtol, atol, density_mode, &out));
        return Flow(out);
    }

    /* n samples into caller arrays of n*N*D and n doubles; see eqf_flow_sample. */
    void sample(uint64_t seed, int64_t n, double *x, double *log_q) const {
        detail::check(eqf_flow_sample(get(), seed, n, x, log_q));
    }

    /* n samples: (x of n*N*D doubles, log_q of n doubles). */
    std::pair<std::vector<double>, std::vector<double>> sample(uint64_t seed,
                                                               std::size_t n) const {
        std::vector<double> x(n * size()), log_q(n);
        sample(seed, detail::count(n), x.data(), log_q.data());
        return {std::move(x), std::move(log_q)};
    }

    /* log q of the configurations in x (a multiple of N*D doubles); see eqf_flow_log_density. */
    std::vector<double> log_density(const std::vector<double> &x) const {
        const std::size_t per = size();
        if (x.size() % per != 0) {
            throw Error(EQF_ERR_DIMENSION_MISMATCH,
                        "log_density: x is not a whole number of configurations");
        }
        std::vector<double> log_q(x.size() / per);
        detail::check(
            eqf_flow_log_density(get(), detail::count(log_q.size()), x.data(), log_q.data()));
        return log_q;
    }

    /* The C handle, still owned by this object. */
    const eqf_flow *get() const noexcept { return raw_; }

private:
    static int64_t checked_size(int64_t value) {
        if (value < 0) {
            detail::check(EQF_ERR_NULL_POINTER);
        }
        return value;
    }

    eqf_flow *raw_ = nullptr;
};

/* A built-in energy function (eqf_energy). Immutable: share it between threads freely. */
class Energy {
public:
    /* The double well of DW-2 / DW-4 (a = 0, b = -4, c = 0.9, d0 = 4 for the benchmarks). */
    static Energy double_well(int64_t n_particles, int64_t dim, double a, double b, double c,
                              double d0) {
        eqf_energy *raw = nullptr;
        detail::check(eqf_energy_double_well(n_particles, dim, a, b, c, d0, &raw));
        return Energy(raw);
    }

    /* The Lennard-Jones cluster of LJ-13 (epsilon = 2, r_m = 1, oscillator_k = 1). */
    static Energy lennard_jones(int64_t n_particles, int64_t dim, double epsilon, double r_m,
                                double oscillator_k) {
        eqf_energy *raw = nullptr;
        detail::check(eqf_energy_lennard_jones(n_particles, dim, epsilon, r_m, oscillator_k, &raw));
        return Energy(raw);
    }

    explicit Energy(eqf_energy *raw) noexcept : raw_(raw) {}
    Energy(Energy &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    Energy &operator=(Energy &&other) noexcept {
        if (this != &other) {
            eqf_energy_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    Energy(const Energy &) = delete;
    Energy &operator=(const Energy &) = delete;
    ~Energy() { eqf_energy_free(raw_); }

    /* Energies of n configurations, gradients (+dU/dx) if `gradient` is not null; see
     * eqf_energy_eval. */
    void eval(int64_t n, const double *x, double *U, double *gradient = nullptr) const {
        detail::check(eqf_energy_eval(raw_, n, x, U, gradient));
    }

    /* U of one configuration of N*D doubles. */
    double operator()(const double *x) const {
        double U = 0.0;
        eval(1, x, &U);
        return U;
    }

    const eqf_energy *get() const noexcept { return raw_; }

private:
    eqf_energy *raw_ = nullptr;
};

/* Decided and accepted proposals of a move. */
struct MoveStats {
    int64_t n_proposed = 0;
    int64_t n_accepted = 0;
    double acceptance_rate() const {
        return n_proposed == 0 ? 0.0 : static_cast<double>(n_accepted) / n_proposed;
    }
};

/* The Boltzmann-generator Monte Carlo move (eqf_move): independence Metropolis-Hastings with
 * the flow as proposal. Belongs to one thread at a time. See eqf_move_new for the rule. */
class Move {
public:
    /* A move proposing from `flow` (copied: the flow may be destroyed first) at temperature kT. */
    Move(const Flow &flow, double kT, uint64_t seed) : size_(flow.size()) {
        detail::check(eqf_move_new(flow.get(), kT, seed, &raw_));
    }

    Move(Move &&other) noexcept
        : raw_(std::exchange(other.raw_, nullptr)), size_(other.size_) {}
    Move &operator=(Move &&other) noexcept {
        if (this != &other) {
            eqf_move_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
            size_ = other.size_;
        }
        return *this;
    }
    Move(const Move &) = delete;
    Move &operator=(const Move &) = delete;
    ~Move() { eqf_move_free(raw_); }

    /* Phase one: writes a proposal (N*D doubles) from the current state; see eqf_move_propose. */
    void propose(const double *x_current, double U_current, double *x_proposed) {
        detail::check(eqf_move_propose(raw_, x_current, U_current, x_proposed));
    }

    std::vector<double> propose(const std::vector<double> &x_current, double U_current) {
        check_size(x_current.size());
        std::vector<double> proposal(size_);
        propose(x_current.data(), U_current, proposal.data());
        return proposal;
    }

    /* Phase two: true if the pending proposal is accepted; see eqf_move_accept. */
    bool accept(double U_proposed) {
        int32_t accepted = 0;
        detail::check(eqf_move_accept(raw_, U_proposed, &accepted));
        return accepted != 0;
    }

    /* One move with a C callback; see eqf_move_step. */
    bool step(double *x, double &U, eqf_energy_fn energy, void *user) {
        int32_t accepted = 0;
        detail::check(eqf_move_step(raw_, x, &U, energy, user, &accepted));
        return accepted != 0;
    }

    /* One move with any callable `double energy(const double *x)` (N*D doubles). On acceptance
     * x and U hold the proposal and its energy. An exception thrown by `energy` is caught at
     * the C boundary (it must not unwind through eqflow) and rethrown here, after eqflow has
     * reported the failed step and left x, U and the move unchanged. */
    template <class F>
    bool step(double *x, double &U, F &&energy) {
        using Callable = std::remove_reference_t<F>;
        Callback<Callable> callback{&energy, nullptr};
        int32_t accepted = 0;
        const int32_t status =
            eqf_move_step(raw_, x, &U, &Callback<Callable>::call, &callback, &accepted);
        if (callback.error) {
            std::rethrow_exception(callback.error);
        }
        detail::check(status);
        return accepted != 0;
    }

    template <class F>
    bool step(std::vector<double> &x, double &U, F &&energy) {
        check_size(x.size());
        return step(x.data(), U, std::forward<F>(energy));
    }

    MoveStats stats() const {
        MoveStats stats;
        detail::check(eqf_move_stats(raw_, &stats.n_proposed, &stats.n_accepted));
        return stats;
    }

    const eqf_move *get() const noexcept { return raw_; }
    eqf_move *get() noexcept { return raw_; }

private:
    template <class Callable>
    struct Callback {
        Callable *energy;
        std::exception_ptr error;

        static int32_t call(void *user, int64_t, int64_t, const double *x, double *U) noexcept {
            Callback *self = static_cast<Callback *>(user);
            try {
                *U = (*self->energy)(x);
                return 0;
            } catch (...) {
                self->error = std::current_exception();
                return 1;
            }
        }
    };

    void check_size(std::size_t n) const {
        if (n != size_) {
            throw Error(EQF_ERR_DIMENSION_MISMATCH,
                        "configuration has " + std::to_string(n) + " doubles, the move needs " +
                            std::to_string(size_));
        }
    }

    eqf_move *raw_ = nullptr;
    std::size_t size_ = 0;
};

} // namespace eqflow

#endif /* EQFLOW_HPP */
