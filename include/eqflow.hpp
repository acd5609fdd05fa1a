/*
 * eqflow.hpp: header-only C++17 RAII wrapper over the C API in eqflow.h.
 *
 * Written by hand (not generated). Every class owns one C handle, is movable and not copyable,
 * and releases its handle in the destructor. A failed call throws eqflow::Error, which carries
 * the EQF_ERR_* status and the library's message. The thread contract is that of the C API:
 * Flow and Energy objects are immutable and may be shared between threads (as const
 * references); Flow::train retrains a flow in place, swapping in the result at its end, while
 * other threads may go on reading it; a Move belongs to one thread at a time (a call on a move
 * that another thread is using throws, status EQF_ERR_INVALID_STATE); FlowOptions and
 * TrainOptions calls are serialised by a lock, and training copies its options when it starts.
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
#include <functional>
#include <memory>
#include <new>
#include <mutex>
#include <optional>
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

/* n*per zeros for a result, or eqflow::Error instead of std::length_error or std::bad_alloc
   (or a product that wraps around): more than EQF_MAX_ELEMENTS doubles is
   EQF_ERR_INVALID_ARGUMENT, as the C calls say; memory the system refuses EQF_ERR_RESOURCE. */
inline std::vector<double> doubles(std::size_t n, std::size_t per, const char *what) {
    if (per != 0 && n > static_cast<std::size_t>(EQF_MAX_ELEMENTS) / per) {
        throw Error(EQF_ERR_INVALID_ARGUMENT,
                    std::string(what) + ": more than EQF_MAX_ELEMENTS doubles");
    }
    try {
        return std::vector<double>(n * per);
    } catch (const std::bad_alloc &) {
        throw Error(EQF_ERR_RESOURCE, std::string(what) + ": the system refused the memory");
    }
}

using LogCallable = std::function<void(int32_t, const char *)>;

/* Every callable given to set_log_callback, kept until the program ends. */
struct LogRegistry {
    std::mutex mutex;
    std::vector<std::unique_ptr<LogCallable>> installed;

    static void call(void *user, int32_t level, const char *message) noexcept {
        try {
            (*static_cast<LogCallable *>(user))(level, message);
        } catch (...) {
        }
    }
};

inline LogRegistry &log_registry() {
    static LogRegistry registry;
    return registry;
}

} // namespace detail

/* The library version, e.g. "0.1.0". */
inline std::string version() { return eqf_version(); }

/* The version of the C ABI of the loaded library (eqf_abi_version); compare it with the
 * value a program was built against to detect a mismatched shared library. */
inline int32_t abi_version() { return eqf_abi_version(); }

/* Sets the number of threads of eqflow's batch calls (0 = default); see eqf_set_num_threads. */
inline void set_num_threads(int64_t n) { detail::check(eqf_set_num_threads(n)); }

/* The number of threads batch calls use now (starting the pool if needed); see
 * eqf_num_threads. */
inline int64_t num_threads() {
    const int64_t n = eqf_num_threads();
    if (n < 0) {
        throw Error(EQF_ERR_INVALID_ARGUMENT, detail::last_error_message());
    }
    return n;
}

/* From inside a host energy callback that is about to return a non-zero status: attaches
 * `message` to the failure, so the resulting eqflow::Error's text ends with it
 * (eqf_set_callback_error). */
inline void set_callback_error(const std::string &message) {
    eqf_set_callback_error(message.c_str());
}

/* Installs a C log callback (eqf_set_log_callback); a null `callback` removes it. */
inline void set_log_callback(eqf_log_fn callback, void *user) {
    eqf_set_log_callback(callback, user);
}

/* Installs any callable `void log(int32_t level, const char *message)` as the receiver of
 * eqflow's messages (level EQF_LOG_ERROR ... EQF_LOG_DEBUG; see eqf_set_log_callback). The
 * setting is process-wide and the callable may be called from any thread, concurrently: it
 * must be thread-safe. An exception it throws is swallowed (it must not unwind through
 * eqflow). Callables stay alive until the program ends, since a message that another thread
 * is delivering while the callback is replaced may still use the old one. */
template <class F>
void set_log_callback(F &&callback) {
    auto holder = std::make_unique<detail::LogCallable>(std::forward<F>(callback));
    detail::LogRegistry &registry = detail::log_registry();
    const std::lock_guard<std::mutex> lock(registry.mutex);
    eqf_set_log_callback(&detail::LogRegistry::call, holder.get());
    registry.installed.push_back(std::move(holder));
}

/* Removes the log callback: eqflow is silent again (the default). */
inline void clear_log_callback() {
    const std::lock_guard<std::mutex> lock(detail::log_registry().mutex);
    eqf_set_log_callback(nullptr, nullptr);
}

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

/* Settings of an untrained flow (eqf_flow_options): the defaults of eqf_flow_new. Setters
 * return *this, so settings chain: FlowOptions().distance_range(0.25, 1.5).prior_sigma(0.3).
 * A rejected value throws eqflow::Error and leaves the options unchanged. Move-only; one thread
 * at a time. Build a flow with Flow(n_particles, dim, options). */
class FlowOptions {
public:
    /* The length scales the options hold (see eqf_flow_options_scales). */
    struct Scales {
        double distance_min;
        double distance_max;
        double prior_sigma;
    };

    FlowOptions() { detail::check(eqf_flow_options_new(&raw_)); }
    FlowOptions(FlowOptions &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    FlowOptions &operator=(FlowOptions &&other) noexcept {
        if (this != &other) {
            eqf_flow_options_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    FlowOptions(const FlowOptions &) = delete;
    FlowOptions &operator=(const FlowOptions &) = delete;
    ~FlowOptions() { eqf_flow_options_free(raw_); }

    /* "kernel" (default) or "envpair"; see eqf_flow_options_set_family. */
    FlowOptions &family(const std::string &name) {
        return set(eqf_flow_options_set_family(raw_, name.c_str()));
    }
    /* Centres of the first and last distance kernel, in the host's length unit. */
    FlowOptions &distance_range(double min, double max) {
        return set(eqf_flow_options_set_distance_range(raw_, min, max));
    }
    FlowOptions &kernel_counts(int64_t n_dist, int64_t n_time) {
        return set(eqf_flow_options_set_kernel_counts(raw_, n_dist, n_time));
    }
    FlowOptions &prior_sigma(double sigma) {
        return set(eqf_flow_options_set_prior_sigma(raw_, sigma));
    }
    /* method EQF_METHOD_*, density_mode EQF_DENSITY_*; see eqf_flow_with_integrator. */
    FlowOptions &integrator(int32_t method, int64_t n_steps, double rtol, double atol,
                            int32_t density_mode) {
        return set(
            eqf_flow_options_set_integrator(raw_, method, n_steps, rtol, atol, density_mode));
    }
    FlowOptions &seed(uint64_t seed) { return set(eqf_flow_options_set_seed(raw_, seed)); }
    /* Strict mode of the flows built from these options; see
     * eqf_flow_options_set_require_certificate. */
    FlowOptions &require_certificate(bool require) {
        return set(eqf_flow_options_set_require_certificate(raw_, require ? 1 : 0));
    }
    /* The species index of each particle (below n_species; empty: identical particles); see
     * eqf_flow_options_set_species. */
    FlowOptions &species(const std::vector<uint32_t> &species, int64_t n_species) {
        return set(eqf_flow_options_set_species(raw_, species.empty() ? nullptr : species.data(),
                                                detail::count(species.size()), n_species));
    }

    /* Distance range and prior sigma from n_configs configurations x of N*D doubles each; see
     * eqf_flow_options_fit_scales. */
    FlowOptions &fit_scales(int64_t n_particles, int64_t dim, const double *x,
                            int64_t n_configs) {
        return set(eqf_flow_options_fit_scales(raw_, n_particles, dim, x, n_configs));
    }
    /* As above, with as many configurations as x holds (its size a multiple of N*D). */
    FlowOptions &fit_scales(int64_t n_particles, int64_t dim, const std::vector<double> &x) {
        const int64_t per_config = n_particles * dim;
        if (per_config <= 0 || detail::count(x.size()) % per_config != 0) {
            throw Error(EQF_ERR_DIMENSION_MISMATCH,
                        "fit_scales: the size of x is not a multiple of N*D");
        }
        return fit_scales(n_particles, dim, x.data(), detail::count(x.size()) / per_config);
    }

    Scales scales() const {
        Scales s{0.0, 0.0, 0.0};
        detail::check(
            eqf_flow_options_scales(raw_, &s.distance_min, &s.distance_max, &s.prior_sigma));
        return s;
    }

    const eqf_flow_options *get() const noexcept { return raw_; }

private:
    FlowOptions &set(int32_t status) {
        detail::check(status);
        return *this;
    }

    eqf_flow_options *raw_ = nullptr;
};

class TrainOptions;

/* The integrator and density mode of a flow (eqf_flow_integrator): method EQF_METHOD_*,
 * density_mode EQF_DENSITY_*; rtol and atol are 0 for RK4; n_steps is the number of steps of
 * RK4 or the maximum number of attempted Dormand-Prince steps. */
struct Integrator {
    int32_t method = EQF_METHOD_RK4;
    int64_t n_steps = 0;
    double rtol = 0.0;
    double atol = 0.0;
    int32_t density_mode = EQF_DENSITY_EXACT_DISCRETE;
};

/* The step certificate of a flow's RK4 map (eqf_flow_certificate): certified when every step
 * is a bijection, i.e. when max_contraction, the worst step's increment bound, is below 1
 * (never for an adaptive method, whose max_contraction is +infinity). */
struct StepCertificate {
    bool certified = false;
    double max_contraction = 0.0;
};

/* An equivariant normalizing flow (eqf_flow). Immutable: share it between threads freely (only
 * Flow::train changes it). */
class Flow {
public:
    /* An untrained flow for n_particles particles in dim dimensions; see eqf_flow_new. */
    Flow(int64_t n_particles, int64_t dim, uint64_t seed) {
        detail::check(eqf_flow_new(n_particles, dim, seed, &raw_));
    }

    /* An untrained flow with the given options; see eqf_flow_new_with_options. */
    Flow(int64_t n_particles, int64_t dim, const FlowOptions &options) {
        detail::check(eqf_flow_new_with_options(n_particles, dim, options.get(), &raw_));
    }

    /* Takes ownership of a handle from the C API (for example eqf_flow_with_integrator). */
    explicit Flow(eqf_flow *raw) noexcept : raw_(raw) {}

    /* A flow from a model file written by save() or the eqflow command line; see
     * eqf_flow_load. */
    static Flow load(const std::string &path) {
        eqf_flow *out = nullptr;
        detail::check(eqf_flow_load(path.c_str(), &out));
        return Flow(out);
    }

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
    /* The species index of each particle (all 0 for identical particles); see
     * eqf_flow_species. */
    std::vector<uint32_t> species() const {
        std::vector<uint32_t> out(static_cast<std::size_t>(n_particles()));
        detail::check(eqf_flow_species(get(), out.data(), detail::count(out.size()), nullptr));
        return out;
    }
    /* The number of species (1 for identical particles). */
    int64_t n_species() const {
        int64_t n = 0;
        detail::check(eqf_flow_species(get(), nullptr, 0, &n));
        return n;
    }
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

    /* A new flow with the same parameters and integrator and strict mode on or off: in strict
     * mode an uncertified exact-discrete grid is refused (EQF_ERR_UNCERTIFIED, the message
     * naming the certified step count). Every flow is strict unless it opts out (false); see
     * eqf_flow_with_require_certificate. */
    Flow with_require_certificate(bool require) const {
        eqf_flow *out = nullptr;
        detail::check(eqf_flow_with_require_certificate(get(), require ? 1 : 0, &out));
        return Flow(out);
    }

    /* Whether strict mode is on; see eqf_flow_require_certificate. */
    bool require_certificate() const {
        int32_t require = 0;
        detail::check(eqf_flow_require_certificate(get(), &require));
        return require != 0;
    }

    /* Writes the flow to a model file (bit-exact parameters); see eqf_flow_save. */
    void save(const std::string &path) const {
        detail::check(eqf_flow_save(get(), path.c_str()));
    }

    /* The integrator and density mode; see eqf_flow_integrator. */
    Integrator integrator() const {
        Integrator out;
        detail::check(eqf_flow_integrator(get(), &out.method, &out.n_steps, &out.rtol,
                                          &out.atol, &out.density_mode));
        return out;
    }

    /* Whether every step of the RK4 map is certified to be a bijection; see
     * eqf_flow_certificate. */
    StepCertificate certificate() const {
        int32_t certified = 0;
        StepCertificate out;
        detail::check(eqf_flow_certificate(get(), &certified, &out.max_contraction, nullptr));
        out.certified = certified != 0;
        return out;
    }

    /* The smallest RK4 step count whose map the field certifies, or nothing if none up to the
     * search's limit (16 times the flow's own count or 4,096, whichever is larger; a search:
     * costlier than certificate()); see eqf_flow_certificate. */
    std::optional<int64_t> certified_step_count() const {
        int32_t certified = 0;
        double max_contraction = 0.0;
        int64_t needed = -1;
        detail::check(eqf_flow_certificate(get(), &certified, &max_contraction, &needed));
        if (needed < 0) {
            return std::nullopt;
        }
        return needed;
    }

    /* Per-configuration certificates of the configurations in x (a multiple of N*D doubles):
     * each one's worst step bound, below 1 when it is proved to have exactly one preimage
     * under the RK4 map (its density is exact even where certificate() fails); see
     * eqf_flow_certify_configurations. */
    std::vector<double> certify_configurations(const std::vector<double> &x) const {
        const std::size_t per = size();
        if (x.size() % per != 0) {
            throw Error(EQF_ERR_DIMENSION_MISMATCH,
                        "certify_configurations: x is not a whole number of configurations");
        }
        std::vector<double> bounds(x.size() / per);
        detail::check(eqf_flow_certify_configurations(get(), detail::count(bounds.size()),
                                                      x.data(), bounds.data(), nullptr));
        return bounds;
    }

    /* n samples into caller arrays of n*N*D and n doubles; see eqf_flow_sample. */
    void sample(uint64_t seed, int64_t n, double *x, double *log_q) const {
        detail::check(eqf_flow_sample(get(), seed, n, x, log_q));
    }

    /* n samples: (x of n*N*D doubles, log_q of n doubles). */
    std::pair<std::vector<double>, std::vector<double>> sample(uint64_t seed,
                                                               std::size_t n) const {
        std::vector<double> x = detail::doubles(n, size(), "sample: x");
        std::vector<double> log_q = detail::doubles(n, 1, "sample: log_q");
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

    /* Trains this flow in place (see eqf_flow_train): maximum likelihood on x_train (a whole
     * number of configurations of N*D doubles), with a KL term if the options say so; an
     * empty x_validation means no validation set. On failure the flow is unchanged and the
     * error is thrown: eqflow::Error, or the exception a callback threw (an exception from the
     * KL energy fails the call; one from the progress callback stops training, the flow
     * keeping the best parameters so far, and is rethrown). Defined after TrainOptions. */
    eqf_train_summary train(const TrainOptions &options,
                            const std::vector<double> &x_train,
                            const std::vector<double> &x_validation = {});

    /* The C handle, still owned by this object. */
    const eqf_flow *get() const noexcept { return raw_; }
    eqf_flow *get() noexcept { return raw_; }

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

    /* Lennard-Jones with one epsilon and r_m per species pair: species[i] < n_species, epsilon
     * and r_m symmetric n_species x n_species, row-major; see eqf_energy_lennard_jones_species. */
    static Energy lennard_jones_species(int64_t dim, const std::vector<uint32_t> &species,
                                        int64_t n_species, const std::vector<double> &epsilon,
                                        const std::vector<double> &r_m, double oscillator_k) {
        const std::size_t pairs = static_cast<std::size_t>(n_species < 0 ? 0 : n_species);
        if (epsilon.size() != pairs * pairs || r_m.size() != pairs * pairs) {
            throw Error(EQF_ERR_DIMENSION_MISMATCH,
                        "lennard_jones_species: epsilon and r_m must hold n_species^2 values");
        }
        eqf_energy *raw = nullptr;
        detail::check(eqf_energy_lennard_jones_species(detail::count(species.size()), dim,
                                                       species.data(), n_species, epsilon.data(),
                                                       r_m.data(), oscillator_k, &raw));
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

/* Settings of a training run (eqf_train_options): defaults of the paper's DW-4 ML protocol;
 * every setter validates its value (throwing eqflow::Error, the options unchanged) and returns
 * *this, so settings chain: TrainOptions().epochs(10).batch_size(32). Move-only. Callbacks are
 * any callables; the options own them, and they run on the thread that calls Flow::train. */
class TrainOptions {
public:
    TrainOptions() { detail::check(eqf_train_options_new(&raw_)); }
    TrainOptions(TrainOptions &&other) noexcept
        : raw_(std::exchange(other.raw_, nullptr)), progress_(std::move(other.progress_)),
          energy_(std::move(other.energy_)) {}
    TrainOptions &operator=(TrainOptions &&other) noexcept {
        if (this != &other) {
            eqf_train_options_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
            progress_ = std::move(other.progress_);
            energy_ = std::move(other.energy_);
        }
        return *this;
    }
    TrainOptions(const TrainOptions &) = delete;
    TrainOptions &operator=(const TrainOptions &) = delete;
    ~TrainOptions() { eqf_train_options_free(raw_); }

    TrainOptions &epochs(int64_t n) { return set(eqf_train_options_set_epochs(raw_, n)); }
    TrainOptions &batch_size(int64_t n) { return set(eqf_train_options_set_batch_size(raw_, n)); }
    TrainOptions &rk4_steps(int64_t n) { return set(eqf_train_options_set_rk4_steps(raw_, n)); }
    TrainOptions &learning_rate(double lr) {
        return set(eqf_train_options_set_learning_rate(raw_, lr));
    }
    TrainOptions &weight_decay(double wd) {
        return set(eqf_train_options_set_weight_decay(raw_, wd));
    }
    TrainOptions &lipschitz_penalty(double weight, double target = 0.9) {
        return set(eqf_train_options_set_lipschitz_penalty(raw_, weight, target));
    }
    TrainOptions &seed(uint64_t seed) { return set(eqf_train_options_set_seed(raw_, seed)); }
    TrainOptions &kT(double kT) { return set(eqf_train_options_set_kT(raw_, kT)); }
    TrainOptions &kl_samples(int64_t n) { return set(eqf_train_options_set_kl_samples(raw_, n)); }
    /* A constant ML weight lambda in [0, 1] (1: pure ML, 0: pure reverse KL). */
    TrainOptions &lambda(double lambda) { return set(eqf_train_options_set_lambda(raw_, lambda)); }
    /* lambda from `start` in the first epoch to `end` in the last. */
    TrainOptions &lambda_linear(double start, double end) {
        return set(eqf_train_options_set_lambda_linear(raw_, start, end));
    }

    /* EQF_OBJECTIVE_MAXIMUM_LIKELIHOOD (default), EQF_OBJECTIVE_DISCRETE_LIKELIHOOD,
     * EQF_OBJECTIVE_FLOW_MATCHING, EQF_OBJECTIVE_FLOW_MATCHING_ALIGNED,
     * EQF_OBJECTIVE_FLOW_MATCHING_OT, EQF_OBJECTIVE_HUTCHINSON_RADEMACHER or
     * EQF_OBJECTIVE_HUTCHINSON_GAUSSIAN (dense field). */
    TrainOptions &objective(int32_t objective) {
        return set(eqf_train_options_set_objective(raw_, objective));
    }

    /* Called after every epoch with its report; return true to continue, false to stop early
     * (not an error). */
    template <class F>
    TrainOptions &progress(F &&progress) {
        auto holder = std::make_unique<ProgressHolder>();
        holder->callback = std::forward<F>(progress);
        set(eqf_train_options_set_progress(raw_, &ProgressHolder::call, holder.get()));
        progress_ = std::move(holder);
        return *this;
    }

    /* A built-in energy as the KL target (the options keep it alive). */
    TrainOptions &kl_energy(const Energy &energy) {
        set(eqf_train_options_set_kl_energy(raw_, energy.get()));
        energy_.reset();
        return *this;
    }

    /* The host's energy as the KL target: any callable `double energy(const double *x, double
     * *gradient)` that returns U(x) and writes +dU/dx (N*D doubles each). It is called only on
     * the thread that calls Flow::train, never concurrently. */
    template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, Energy>>>
    TrainOptions &kl_energy(F &&energy) {
        auto holder = std::make_unique<EnergyHolder>();
        holder->callback = std::forward<F>(energy);
        set(eqf_train_options_set_kl_energy_fn(raw_, &EnergyHolder::call, holder.get()));
        energy_ = std::move(holder);
        return *this;
    }

    const eqf_train_options *get() const noexcept { return raw_; }

private:
    friend class Flow;

    struct ProgressHolder {
        std::function<bool(const eqf_train_epoch &)> callback;
        std::exception_ptr error;

        static int32_t call(void *user, const eqf_train_epoch *report) noexcept {
            ProgressHolder *self = static_cast<ProgressHolder *>(user);
            try {
                return self->callback(*report) ? 0 : 1;
            } catch (...) {
                self->error = std::current_exception();
                return 1;
            }
        }
    };

    struct EnergyHolder {
        std::function<double(const double *, double *)> callback;
        std::exception_ptr error;

        static int32_t call(void *user, int64_t, int64_t, const double *x, double *U,
                            double *gradient) noexcept {
            EnergyHolder *self = static_cast<EnergyHolder *>(user);
            try {
                *U = self->callback(x, gradient);
                return 0;
            } catch (...) {
                self->error = std::current_exception();
                return 1;
            }
        }
    };

    TrainOptions &set(int32_t status) {
        detail::check(status);
        return *this;
    }

    /* Clears exceptions a previous run left, so that only this run's are rethrown. */
    void clear_errors() const noexcept {
        if (progress_) {
            progress_->error = nullptr;
        }
        if (energy_) {
            energy_->error = nullptr;
        }
    }

    void rethrow_errors() const {
        if (energy_ && energy_->error) {
            std::rethrow_exception(std::exchange(energy_->error, nullptr));
        }
        if (progress_ && progress_->error) {
            std::rethrow_exception(std::exchange(progress_->error, nullptr));
        }
    }

    eqf_train_options *raw_ = nullptr;
    std::unique_ptr<ProgressHolder> progress_;
    std::unique_ptr<EnergyHolder> energy_;
};

inline eqf_train_summary Flow::train(const TrainOptions &options,
                                     const std::vector<double> &x_train,
                                     const std::vector<double> &x_validation) {
    const std::size_t per = size();
    if (x_train.size() % per != 0 || x_validation.size() % per != 0) {
        throw Error(EQF_ERR_DIMENSION_MISMATCH,
                    "train: data are not a whole number of configurations");
    }
    eqf_train_summary summary{};
    summary.size = sizeof summary;
    options.clear_errors();
    const int32_t status = eqf_flow_train(
        raw_, options.get(), detail::count(x_train.size() / per), x_train.data(),
        detail::count(x_validation.size() / per),
        x_validation.empty() ? nullptr : x_validation.data(), &summary);
    options.rethrow_errors();
    detail::check(status);
    return summary;
}

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

    /// The solver work of the decided proposals (eqf_move_solver_stats).
    eqf_solver_stats solver_stats() const {
        eqf_solver_stats stats{};
        detail::check(eqf_move_solver_stats(raw_, &stats));
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
