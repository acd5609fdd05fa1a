! eqflow.f90: Fortran 2018 binding of eqflow (module eqflow), shipped as source because .mod
! files are compiler-specific: compile it with your code, e.g.
!
!     gfortran -c eqflow.f90 && gfortran my_code.f90 eqflow.o -leqflow
!
! Written by hand over the C API in eqflow.h (not generated). Two layers:
!
! 1. Raw interfaces, bind(C) to the C functions of the same names (eqf_flow_new, eqf_move_step,
!    ...), with handles as type(c_ptr) and callbacks as type(c_funptr). Same arguments, same
!    meaning as in eqflow.h.
! 2. A thin derived-type layer: eqflow_flow, eqflow_flow_options, eqflow_energy, eqflow_move
!    and eqflow_train_options each hold a private c_ptr; type-bound procedures take an optional
!    `status` argument. If `status` is present it receives EQF_OK or the EQF_ERR_* code (the
!    message is then available from eqflow_last_error()); if it is absent, a failure prints the
!    message to the error unit and stops the program with `error stop`.
!
! Layout: a configuration of N particles in D dimensions is x(D, N) (coordinate k of particle i
! is x(k, i)); a batch of n configurations is x(D, N, n). These are exactly the bytes of the C
! layout x[i*D + k], so no copy or transposition is made. Arrays must be contiguous (the
! wrappers declare them `contiguous`, so a non-contiguous actual argument is copied in and out).
!
! Seeds are uint64_t in C; pass them as integer(c_int64_t) (the same 64 bits).
!
! Thread contract: as in eqflow.h. Flows and energies are immutable and may be shared between
! threads (OpenMP); flow%train retrains a flow in place, swapping in the result at its end,
! while other threads may go on reading it; a move belongs to one thread at a time (a call on a
! move another thread is using fails with EQF_ERR_INVALID_STATE); calls on options objects are
! serialised, and training copies its options when it starts. An energy callback must be
! bind(C) with the interface eqf_energy_fn below and return 0 on success; the training callbacks
! (eqf_energy_grad_fn, eqf_train_progress_fn) likewise. Training calls them only on the thread
! that called flow%train, never concurrently, so they may use non-thread-safe code. The log
! callback (eqf_log_fn, installed with eqflow_set_log_callback) is the exception: it is
! process-wide and may be called from any thread, concurrently, so it must be thread-safe
! (no unprotected module or SAVE variables); its message is a C string, read it with
! eqflow_string(message).
!
! C out-pointers that may be NULL are `optional` arguments of the raw interfaces (an absent
! argument is passed as NULL, Fortran 2018), except the older `gradient` and `x_validation`,
! which are type(c_ptr).
module eqflow
    use, intrinsic :: iso_c_binding, only: c_int32_t, c_int64_t, c_double, c_size_t, c_char, &
        c_ptr, c_funptr, c_null_ptr, c_null_funptr, c_null_char, c_associated, c_funloc, c_loc, &
        c_sizeof, c_f_pointer
    use, intrinsic :: iso_fortran_env, only: error_unit
    implicit none
    private

    ! Status codes (eqflow.h).
    integer(c_int32_t), parameter, public :: EQF_OK = 0
    integer(c_int32_t), parameter, public :: EQF_ERR_NULL_POINTER = 1
    integer(c_int32_t), parameter, public :: EQF_ERR_INVALID_ARGUMENT = 2
    integer(c_int32_t), parameter, public :: EQF_ERR_DIMENSION_MISMATCH = 3
    integer(c_int32_t), parameter, public :: EQF_ERR_NON_FINITE = 4
    integer(c_int32_t), parameter, public :: EQF_ERR_NOT_CONVERGED = 5
    integer(c_int32_t), parameter, public :: EQF_ERR_NOT_INVERTIBLE = 6
    integer(c_int32_t), parameter, public :: EQF_ERR_INVALID_STATE = 7
    integer(c_int32_t), parameter, public :: EQF_ERR_CALLBACK = 8
    integer(c_int32_t), parameter, public :: EQF_ERR_IO = 9
    integer(c_int32_t), parameter, public :: EQF_ERR_FORMAT = 10
    integer(c_int32_t), parameter, public :: EQF_ERR_INTERNAL = 11
    integer(c_int32_t), parameter, public :: EQF_ERR_RESOURCE = 12
    integer(c_int32_t), parameter, public :: EQF_ERR_UNCERTIFIED = 13

    ! Integrators and density modes (eqf_flow_with_integrator).
    integer(c_int32_t), parameter, public :: EQF_METHOD_RK4 = 0
    integer(c_int32_t), parameter, public :: EQF_METHOD_DOPRI5 = 1
    integer(c_int32_t), parameter, public :: EQF_DENSITY_EXACT_DISCRETE = 0
    integer(c_int32_t), parameter, public :: EQF_DENSITY_CONTINUOUS = 1
    ! Log levels (eqf_set_log_callback).
    integer(c_int32_t), parameter, public :: EQF_LOG_ERROR = 1
    integer(c_int32_t), parameter, public :: EQF_LOG_WARNING = 2
    integer(c_int32_t), parameter, public :: EQF_LOG_INFO = 3
    integer(c_int32_t), parameter, public :: EQF_LOG_DEBUG = 4
    ! Training objectives (eqf_train_options_set_objective).
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_MAXIMUM_LIKELIHOOD = 0
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_FLOW_MATCHING = 1
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_FLOW_MATCHING_OT = 2
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_FLOW_MATCHING_ALIGNED = 3
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_DISCRETE_LIKELIHOOD = 4
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_HUTCHINSON_RADEMACHER = 5
    integer(c_int32_t), parameter, public :: EQF_OBJECTIVE_HUTCHINSON_GAUSSIAN = 6

    ! Limits (eqflow.h): elements of one array, bytes of one exact-discrete workspace, particles.
    integer(c_int64_t), parameter, public :: EQF_MAX_ELEMENTS = 1099511627776_c_int64_t
    integer(c_int64_t), parameter, public :: EQF_MAX_WORKSPACE_BYTES = 4294967296_c_int64_t
    integer(c_int64_t), parameter, public :: EQF_MAX_PARTICLES = 1000000_c_int64_t
    integer(c_int64_t), parameter, public :: EQF_MAX_RK4_STEPS = 100000_c_int64_t
    integer(c_int64_t), parameter, public :: EQF_MAX_MANY_BODY_PARTICLES = 256_c_int64_t

    ! ---------------------------------------------------------------------------------------
    ! Layer 1: raw bind(C) interfaces.
    ! ---------------------------------------------------------------------------------------

    public :: eqf_energy_fn
    abstract interface
        ! The host's energy: U of one configuration x(dim, n_particles); return 0, or non-zero
        ! to report failure. See eqf_energy_fn in eqflow.h.
        function eqf_energy_fn(user, n_particles, dim, x, U) bind(C) result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: user
            integer(c_int64_t), value :: n_particles, dim
            real(c_double), intent(in) :: x(dim, n_particles)
            real(c_double), intent(out) :: U
            integer(c_int32_t) :: status
        end function eqf_energy_fn
    end interface

    public :: eqf_log_fn
    abstract interface
        ! Receives eqflow's messages: a level EQF_LOG_ERROR ... EQF_LOG_DEBUG and a C string
        ! valid only during the call (read it with eqflow_string). May be called from any
        ! thread, concurrently. See eqf_log_fn in eqflow.h.
        subroutine eqf_log_fn(user, level, message) bind(C)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: user
            integer(c_int32_t), value :: level
            type(c_ptr), value :: message
        end subroutine eqf_log_fn
    end interface

    ! The solver work behind a move's decided proposals (eqf_move_solver_stats).
    type, bind(C), public :: eqf_solver_stats
        integer(c_int64_t) :: n_eval = 0, n_jacobian = 0, n_steps = 0, n_rejected = 0, &
            n_newton = 0, n_corrected = 0
    end type eqf_solver_stats

    ! One training epoch's report and a training run's summary (eqflow.h). Both begin with
    ! their size in bytes; later versions only append fields.
    type, bind(C), public :: eqf_train_epoch
        integer(c_int64_t) :: size, epoch, n_epochs, n_steps
        real(c_double) :: lambda, train_nll, train_kl, train_loss, validation_nll, &
            elapsed_seconds
    end type eqf_train_epoch

    type, bind(C), public :: eqf_train_summary
        integer(c_int64_t) :: size, n_epochs, best_epoch, n_steps, stopped_early
        real(c_double) :: initial_validation_nll, best_validation_nll, final_validation_nll, &
            final_train_nll, wall_seconds
    end type eqf_train_summary

    public :: eqf_energy_grad_fn, eqf_train_progress_fn
    abstract interface
        ! The host's energy and gradient +dU/dx (not the force) of one configuration
        ! x(dim, n_particles), the KL target of training; return 0, or non-zero to report
        ! failure. See eqf_energy_grad_fn in eqflow.h.
        function eqf_energy_grad_fn(user, n_particles, dim, x, U, gradient) bind(C) &
                result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: user
            integer(c_int64_t), value :: n_particles, dim
            real(c_double), intent(in) :: x(dim, n_particles)
            real(c_double), intent(out) :: U
            real(c_double), intent(out) :: gradient(dim, n_particles)
            integer(c_int32_t) :: status
        end function eqf_energy_grad_fn

        ! Called after every training epoch; return 0 to continue, non-zero to stop early.
        function eqf_train_progress_fn(user, report) bind(C) result(stop)
            import :: c_ptr, c_int32_t, eqf_train_epoch
            type(c_ptr), value :: user
            type(eqf_train_epoch), intent(in) :: report
            integer(c_int32_t) :: stop
        end function eqf_train_progress_fn
    end interface

    public :: eqf_abi_version, eqf_last_error_message, eqf_set_num_threads, eqf_num_threads
    public :: eqf_flow_new, eqf_flow_free, eqf_flow_n_particles, eqf_flow_dim, eqf_flow_species
    public :: eqf_flow_sample, eqf_flow_log_density, eqf_flow_with_integrator
    public :: eqf_energy_double_well, eqf_energy_lennard_jones, eqf_energy_eval, eqf_energy_free
    public :: eqf_energy_lennard_jones_species
    public :: eqf_move_new, eqf_move_propose, eqf_move_accept, eqf_move_step, eqf_move_stats
    public :: eqf_move_free, eqf_log_weights, eqf_kish_ess, eqf_flow_save
    public :: eqf_flow_options_new, eqf_flow_options_free, eqf_flow_options_set_family
    public :: eqf_flow_options_set_distance_range, eqf_flow_options_set_kernel_counts
    public :: eqf_flow_options_set_prior_sigma, eqf_flow_options_set_integrator
    public :: eqf_flow_options_set_seed, eqf_flow_options_fit_scales, eqf_flow_options_scales
    public :: eqf_flow_options_set_require_certificate
    public :: eqf_flow_new_with_options, eqf_flow_options_set_species
    public :: eqf_train_options_new, eqf_train_options_free, eqf_train_options_set_epochs
    public :: eqf_train_options_set_batch_size, eqf_train_options_set_rk4_steps
    public :: eqf_train_options_set_learning_rate, eqf_train_options_set_weight_decay
    public :: eqf_train_options_set_seed, eqf_train_options_set_kT
    public :: eqf_train_options_set_kl_samples, eqf_train_options_set_lambda
    public :: eqf_train_options_set_lambda_linear, eqf_train_options_set_progress
    public :: eqf_train_options_set_objective, eqf_train_options_set_lipschitz_penalty
    public :: eqf_train_options_set_kl_energy, eqf_train_options_set_kl_energy_fn, eqf_flow_train
    public :: eqf_version, eqf_set_log_callback, eqf_flow_load, eqf_flow_certificate
    public :: eqf_flow_integrator, eqf_move_solver_stats, eqf_set_callback_error
    public :: eqf_flow_with_require_certificate, eqf_flow_require_certificate
    public :: eqf_flow_certify_configurations
    interface
        function eqf_set_callback_error(message) bind(C, name="eqf_set_callback_error") &
                result(status)
            import :: c_char, c_int32_t
            character(kind=c_char), intent(in) :: message(*)
            integer(c_int32_t) :: status
        end function eqf_set_callback_error

        function eqf_version() bind(C, name="eqf_version") result(version)
            import :: c_ptr
            type(c_ptr) :: version
        end function eqf_version

        subroutine eqf_set_log_callback(callback, user) bind(C, name="eqf_set_log_callback")
            import :: c_funptr, c_ptr
            type(c_funptr), value :: callback
            type(c_ptr), value :: user
        end subroutine eqf_set_log_callback

        function eqf_flow_load(path, out) bind(C, name="eqf_flow_load") result(status)
            import :: c_char, c_ptr, c_int32_t
            character(kind=c_char), intent(in) :: path(*)
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_flow_load

        function eqf_flow_certificate(flow, certified, max_contraction, n_steps_needed) &
                bind(C, name="eqf_flow_certificate") result(status)
            import :: c_ptr, c_int32_t, c_double, c_int64_t
            type(c_ptr), value :: flow
            integer(c_int32_t), intent(inout) :: certified
            real(c_double), intent(inout) :: max_contraction
            integer(c_int64_t), intent(inout), optional :: n_steps_needed
            integer(c_int32_t) :: status
        end function eqf_flow_certificate

        function eqf_flow_certify_configurations(flow, n, x, step_bound, n_certified) &
                bind(C, name="eqf_flow_certify_configurations") result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: flow
            integer(c_int64_t), value :: n
            real(c_double), intent(in) :: x(*)
            real(c_double), intent(inout) :: step_bound(*)
            integer(c_int64_t), intent(inout), optional :: n_certified
            integer(c_int32_t) :: status
        end function eqf_flow_certify_configurations

        function eqf_flow_with_require_certificate(flow, require, out) &
                bind(C, name="eqf_flow_with_require_certificate") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: flow
            integer(c_int32_t), value :: require
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_flow_with_require_certificate

        function eqf_flow_require_certificate(flow, require) &
                bind(C, name="eqf_flow_require_certificate") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: flow
            integer(c_int32_t), intent(inout) :: require
            integer(c_int32_t) :: status
        end function eqf_flow_require_certificate

        function eqf_flow_integrator(flow, method, n_steps, rtol, atol, density_mode) &
                bind(C, name="eqf_flow_integrator") result(status)
            import :: c_ptr, c_int32_t, c_int64_t, c_double
            type(c_ptr), value :: flow
            integer(c_int32_t), intent(inout), optional :: method, density_mode
            integer(c_int64_t), intent(inout), optional :: n_steps
            real(c_double), intent(inout), optional :: rtol, atol
            integer(c_int32_t) :: status
        end function eqf_flow_integrator

        function eqf_move_solver_stats(move, stats) bind(C, name="eqf_move_solver_stats") &
                result(status)
            import :: c_ptr, c_int32_t, eqf_solver_stats
            type(c_ptr), value :: move
            type(eqf_solver_stats), intent(inout) :: stats
            integer(c_int32_t) :: status
        end function eqf_move_solver_stats

        function eqf_abi_version() bind(C, name="eqf_abi_version") result(version)
            import :: c_int32_t
            integer(c_int32_t) :: version
        end function eqf_abi_version

        function eqf_last_error_message(buf, len) bind(C, name="eqf_last_error_message") &
                result(length)
            import :: c_ptr, c_size_t
            type(c_ptr), value :: buf
            integer(c_size_t), value :: len
            integer(c_size_t) :: length
        end function eqf_last_error_message

        function eqf_set_num_threads(n) bind(C, name="eqf_set_num_threads") result(status)
            import :: c_int64_t, c_int32_t
            integer(c_int64_t), value :: n
            integer(c_int32_t) :: status
        end function eqf_set_num_threads

        function eqf_num_threads() bind(C, name="eqf_num_threads") result(n)
            import :: c_int64_t
            integer(c_int64_t) :: n
        end function eqf_num_threads

        function eqf_flow_new(n_particles, dim, seed, out) bind(C, name="eqf_flow_new") &
                result(status)
            import :: c_int64_t, c_ptr, c_int32_t
            integer(c_int64_t), value :: n_particles, dim, seed
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_flow_new

        function eqf_flow_free(flow) bind(C, name="eqf_flow_free") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: flow
            integer(c_int32_t) :: status
        end function eqf_flow_free

        function eqf_flow_n_particles(flow) bind(C, name="eqf_flow_n_particles") result(n)
            import :: c_ptr, c_int64_t
            type(c_ptr), value :: flow
            integer(c_int64_t) :: n
        end function eqf_flow_n_particles

        ! Species indices are 0-based, as in C (uint32_t, passed as integer(c_int32_t)).
        function eqf_flow_species(flow, species, n_particles, n_species) &
                bind(C, name="eqf_flow_species") result(status)
            import :: c_ptr, c_int32_t, c_int64_t
            type(c_ptr), value :: flow
            integer(c_int32_t), intent(inout) :: species(*)
            integer(c_int64_t), value :: n_particles
            integer(c_int64_t), intent(inout) :: n_species
            integer(c_int32_t) :: status
        end function eqf_flow_species

        function eqf_flow_dim(flow) bind(C, name="eqf_flow_dim") result(n)
            import :: c_ptr, c_int64_t
            type(c_ptr), value :: flow
            integer(c_int64_t) :: n
        end function eqf_flow_dim

        function eqf_flow_sample(flow, seed, n, x, log_q) bind(C, name="eqf_flow_sample") &
                result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: flow
            integer(c_int64_t), value :: seed, n
            real(c_double), intent(inout) :: x(*), log_q(*)
            integer(c_int32_t) :: status
        end function eqf_flow_sample

        function eqf_flow_log_density(flow, n, x, log_q) bind(C, name="eqf_flow_log_density") &
                result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: flow
            integer(c_int64_t), value :: n
            real(c_double), intent(in) :: x(*)
            real(c_double), intent(inout) :: log_q(*)
            integer(c_int32_t) :: status
        end function eqf_flow_log_density

        function eqf_flow_with_integrator(flow, method, n_steps, rtol, atol, density_mode, &
                out) bind(C, name="eqf_flow_with_integrator") result(status)
            import :: c_ptr, c_int32_t, c_int64_t, c_double
            type(c_ptr), value :: flow
            integer(c_int32_t), value :: method, density_mode
            integer(c_int64_t), value :: n_steps
            real(c_double), value :: rtol, atol
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_flow_with_integrator

        function eqf_energy_double_well(n_particles, dim, a, b, c, d0, out) &
                bind(C, name="eqf_energy_double_well") result(status)
            import :: c_int64_t, c_double, c_ptr, c_int32_t
            integer(c_int64_t), value :: n_particles, dim
            real(c_double), value :: a, b, c, d0
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_energy_double_well

        function eqf_energy_lennard_jones(n_particles, dim, epsilon, r_m, oscillator_k, out) &
                bind(C, name="eqf_energy_lennard_jones") result(status)
            import :: c_int64_t, c_double, c_ptr, c_int32_t
            integer(c_int64_t), value :: n_particles, dim
            real(c_double), value :: epsilon, r_m, oscillator_k
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_energy_lennard_jones

        function eqf_energy_lennard_jones_species(n_particles, dim, species, n_species, &
                epsilon, r_m, oscillator_k, out) &
                bind(C, name="eqf_energy_lennard_jones_species") result(status)
            import :: c_int64_t, c_int32_t, c_double, c_ptr
            integer(c_int64_t), value :: n_particles, dim, n_species
            integer(c_int32_t), intent(in) :: species(*)
            real(c_double), intent(in) :: epsilon(*), r_m(*)
            real(c_double), value :: oscillator_k
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_energy_lennard_jones_species

        function eqf_energy_eval(energy, n, x, U, gradient) bind(C, name="eqf_energy_eval") &
                result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: energy
            integer(c_int64_t), value :: n
            real(c_double), intent(in) :: x(*)
            real(c_double), intent(inout) :: U(*)
            type(c_ptr), value :: gradient
            integer(c_int32_t) :: status
        end function eqf_energy_eval

        function eqf_energy_free(energy) bind(C, name="eqf_energy_free") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: energy
            integer(c_int32_t) :: status
        end function eqf_energy_free

        function eqf_move_new(flow, kT, seed, out) bind(C, name="eqf_move_new") result(status)
            import :: c_ptr, c_double, c_int64_t, c_int32_t
            type(c_ptr), value :: flow
            real(c_double), value :: kT
            integer(c_int64_t), value :: seed
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_move_new

        function eqf_move_propose(move, x_current, U_current, x_proposed) &
                bind(C, name="eqf_move_propose") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: move
            real(c_double), intent(in) :: x_current(*)
            real(c_double), value :: U_current
            real(c_double), intent(inout) :: x_proposed(*)
            integer(c_int32_t) :: status
        end function eqf_move_propose

        function eqf_move_accept(move, U_proposed, accepted) bind(C, name="eqf_move_accept") &
                result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: move
            real(c_double), value :: U_proposed
            integer(c_int32_t), intent(inout) :: accepted
            integer(c_int32_t) :: status
        end function eqf_move_accept

        function eqf_move_step(move, x, U, energy, user, accepted) &
                bind(C, name="eqf_move_step") result(status)
            import :: c_ptr, c_double, c_funptr, c_int32_t
            type(c_ptr), value :: move
            real(c_double), intent(inout) :: x(*)
            real(c_double), intent(inout) :: U
            type(c_funptr), value :: energy
            type(c_ptr), value :: user
            integer(c_int32_t), intent(inout) :: accepted
            integer(c_int32_t) :: status
        end function eqf_move_step

        function eqf_move_stats(move, n_proposed, n_accepted) bind(C, name="eqf_move_stats") &
                result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: move
            integer(c_int64_t), intent(inout) :: n_proposed, n_accepted
            integer(c_int32_t) :: status
        end function eqf_move_stats

        function eqf_move_free(move) bind(C, name="eqf_move_free") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: move
            integer(c_int32_t) :: status
        end function eqf_move_free

        function eqf_log_weights(n, U, log_q, kT, log_w) bind(C, name="eqf_log_weights") &
                result(status)
            import :: c_int64_t, c_double, c_int32_t
            integer(c_int64_t), value :: n
            real(c_double), intent(in) :: U(*), log_q(*)
            real(c_double), value :: kT
            real(c_double), intent(inout) :: log_w(*)
            integer(c_int32_t) :: status
        end function eqf_log_weights

        function eqf_kish_ess(n, log_w, ess) bind(C, name="eqf_kish_ess") result(status)
            import :: c_int64_t, c_double, c_int32_t
            integer(c_int64_t), value :: n
            real(c_double), intent(in) :: log_w(*)
            real(c_double), intent(inout) :: ess
            integer(c_int32_t) :: status
        end function eqf_kish_ess

        function eqf_flow_save(flow, path) bind(C, name="eqf_flow_save") result(status)
            import :: c_ptr, c_char, c_int32_t
            type(c_ptr), value :: flow
            character(kind=c_char), intent(in) :: path(*)
            integer(c_int32_t) :: status
        end function eqf_flow_save

        function eqf_flow_options_new(out) bind(C, name="eqf_flow_options_new") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_flow_options_new

        function eqf_flow_options_free(options) bind(C, name="eqf_flow_options_free") &
                result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: options
            integer(c_int32_t) :: status
        end function eqf_flow_options_free

        function eqf_flow_options_set_family(options, name) &
                bind(C, name="eqf_flow_options_set_family") result(status)
            import :: c_ptr, c_char, c_int32_t
            type(c_ptr), value :: options
            character(kind=c_char), intent(in) :: name(*)
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_family

        function eqf_flow_options_set_distance_range(options, min, max) &
                bind(C, name="eqf_flow_options_set_distance_range") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: min, max
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_distance_range

        function eqf_flow_options_set_kernel_counts(options, n_dist, n_time) &
                bind(C, name="eqf_flow_options_set_kernel_counts") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: n_dist, n_time
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_kernel_counts

        function eqf_flow_options_set_prior_sigma(options, sigma) &
                bind(C, name="eqf_flow_options_set_prior_sigma") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: sigma
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_prior_sigma

        function eqf_flow_options_set_integrator(options, method, n_steps, rtol, atol, &
                density_mode) bind(C, name="eqf_flow_options_set_integrator") result(status)
            import :: c_ptr, c_int32_t, c_int64_t, c_double
            type(c_ptr), value :: options
            integer(c_int32_t), value :: method, density_mode
            integer(c_int64_t), value :: n_steps
            real(c_double), value :: rtol, atol
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_integrator

        function eqf_flow_options_set_seed(options, seed) &
                bind(C, name="eqf_flow_options_set_seed") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: seed
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_seed

        function eqf_flow_options_set_require_certificate(options, require) &
                bind(C, name="eqf_flow_options_set_require_certificate") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: options
            integer(c_int32_t), value :: require
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_require_certificate

        function eqf_flow_options_fit_scales(options, n_particles, dim, x, n_configs) &
                bind(C, name="eqf_flow_options_fit_scales") result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: n_particles, dim, n_configs
            real(c_double), intent(in) :: x(*)
            integer(c_int32_t) :: status
        end function eqf_flow_options_fit_scales

        function eqf_flow_options_set_species(options, species, n_particles, n_species) &
                bind(C, name="eqf_flow_options_set_species") result(status)
            import :: c_ptr, c_int32_t, c_int64_t
            type(c_ptr), value :: options
            integer(c_int32_t), intent(in) :: species(*)
            integer(c_int64_t), value :: n_particles, n_species
            integer(c_int32_t) :: status
        end function eqf_flow_options_set_species

        function eqf_flow_options_scales(options, distance_min, distance_max, prior_sigma) &
                bind(C, name="eqf_flow_options_scales") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), intent(inout) :: distance_min, distance_max, prior_sigma
            integer(c_int32_t) :: status
        end function eqf_flow_options_scales

        function eqf_flow_new_with_options(n_particles, dim, options, out) &
                bind(C, name="eqf_flow_new_with_options") result(status)
            import :: c_int64_t, c_ptr, c_int32_t
            integer(c_int64_t), value :: n_particles, dim
            type(c_ptr), value :: options
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_flow_new_with_options

        function eqf_train_options_new(out) bind(C, name="eqf_train_options_new") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), intent(inout) :: out
            integer(c_int32_t) :: status
        end function eqf_train_options_new

        function eqf_train_options_free(options) bind(C, name="eqf_train_options_free") &
                result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: options
            integer(c_int32_t) :: status
        end function eqf_train_options_free

        function eqf_train_options_set_epochs(options, n_epochs) &
                bind(C, name="eqf_train_options_set_epochs") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: n_epochs
            integer(c_int32_t) :: status
        end function eqf_train_options_set_epochs

        function eqf_train_options_set_batch_size(options, batch_size) &
                bind(C, name="eqf_train_options_set_batch_size") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: batch_size
            integer(c_int32_t) :: status
        end function eqf_train_options_set_batch_size

        function eqf_train_options_set_rk4_steps(options, n_steps) &
                bind(C, name="eqf_train_options_set_rk4_steps") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: n_steps
            integer(c_int32_t) :: status
        end function eqf_train_options_set_rk4_steps

        function eqf_train_options_set_learning_rate(options, learning_rate) &
                bind(C, name="eqf_train_options_set_learning_rate") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: learning_rate
            integer(c_int32_t) :: status
        end function eqf_train_options_set_learning_rate

        function eqf_train_options_set_lipschitz_penalty(options, weight, target) &
                bind(C, name="eqf_train_options_set_lipschitz_penalty") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: weight, target
            integer(c_int32_t) :: status
        end function eqf_train_options_set_lipschitz_penalty

        function eqf_train_options_set_weight_decay(options, weight_decay) &
                bind(C, name="eqf_train_options_set_weight_decay") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: weight_decay
            integer(c_int32_t) :: status
        end function eqf_train_options_set_weight_decay

        function eqf_train_options_set_seed(options, seed) &
                bind(C, name="eqf_train_options_set_seed") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: seed
            integer(c_int32_t) :: status
        end function eqf_train_options_set_seed

        function eqf_train_options_set_kT(options, kT) bind(C, name="eqf_train_options_set_kT") &
                result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: kT
            integer(c_int32_t) :: status
        end function eqf_train_options_set_kT

        function eqf_train_options_set_kl_samples(options, n_samples) &
                bind(C, name="eqf_train_options_set_kl_samples") result(status)
            import :: c_ptr, c_int64_t, c_int32_t
            type(c_ptr), value :: options
            integer(c_int64_t), value :: n_samples
            integer(c_int32_t) :: status
        end function eqf_train_options_set_kl_samples

        function eqf_train_options_set_lambda(options, lambda) &
                bind(C, name="eqf_train_options_set_lambda") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: lambda
            integer(c_int32_t) :: status
        end function eqf_train_options_set_lambda

        function eqf_train_options_set_lambda_linear(options, start, end) &
                bind(C, name="eqf_train_options_set_lambda_linear") result(status)
            import :: c_ptr, c_double, c_int32_t
            type(c_ptr), value :: options
            real(c_double), value :: start, end
            integer(c_int32_t) :: status
        end function eqf_train_options_set_lambda_linear

        function eqf_train_options_set_objective(options, objective) &
                bind(C, name="eqf_train_options_set_objective") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: options
            integer(c_int32_t), value :: objective
            integer(c_int32_t) :: status
        end function eqf_train_options_set_objective

        function eqf_train_options_set_progress(options, progress, user) &
                bind(C, name="eqf_train_options_set_progress") result(status)
            import :: c_ptr, c_funptr, c_int32_t
            type(c_ptr), value :: options
            type(c_funptr), value :: progress
            type(c_ptr), value :: user
            integer(c_int32_t) :: status
        end function eqf_train_options_set_progress

        function eqf_train_options_set_kl_energy(options, energy) &
                bind(C, name="eqf_train_options_set_kl_energy") result(status)
            import :: c_ptr, c_int32_t
            type(c_ptr), value :: options, energy
            integer(c_int32_t) :: status
        end function eqf_train_options_set_kl_energy

        function eqf_train_options_set_kl_energy_fn(options, energy, user) &
                bind(C, name="eqf_train_options_set_kl_energy_fn") result(status)
            import :: c_ptr, c_funptr, c_int32_t
            type(c_ptr), value :: options
            type(c_funptr), value :: energy
            type(c_ptr), value :: user
            integer(c_int32_t) :: status
        end function eqf_train_options_set_kl_energy_fn

        function eqf_flow_train(flow, options, n_train, x_train, n_validation, x_validation, &
                summary) bind(C, name="eqf_flow_train") result(status)
            import :: c_ptr, c_int64_t, c_double, c_int32_t, eqf_train_summary
            type(c_ptr), value :: flow, options
            integer(c_int64_t), value :: n_train, n_validation
            real(c_double), intent(in) :: x_train(*)
            type(c_ptr), value :: x_validation
            type(eqf_train_summary), intent(inout) :: summary
            integer(c_int32_t) :: status
        end function eqf_flow_train
    end interface

    ! ---------------------------------------------------------------------------------------
    ! Layer 2: derived types owning the handles.
    ! ---------------------------------------------------------------------------------------

    public :: eqflow_last_error, eqflow_log_weights, eqflow_kish_ess, eqflow_version
    public :: eqflow_set_callback_error
    public :: eqflow_string, eqflow_set_log_callback

    ! An equivariant normalizing flow. Immutable once created: share it between threads.
    type, public :: eqflow_flow
        private
        type(c_ptr) :: ptr = c_null_ptr
    contains
        procedure :: create => flow_create
        procedure :: load => flow_load
        procedure :: create_with_options => flow_create_with_options
        procedure :: with_integrator => flow_with_integrator
        procedure :: integrator => flow_integrator
        procedure :: certificate => flow_certificate
        procedure :: certify_configurations => flow_certify_configurations
        procedure :: with_require_certificate => flow_with_require_certificate
        procedure :: require_certificate => flow_require_certificate
        procedure :: n_particles => flow_n_particles
        procedure :: n_dim => flow_n_dim
        procedure :: sample => flow_sample
        procedure :: log_density => flow_log_density
        procedure :: train => flow_train
        procedure :: save => flow_save
        procedure :: handle => flow_handle
        procedure :: free => flow_free
    end type eqflow_flow

    ! Settings of an untrained flow (defaults: those of eqf_flow_new): field family, distance
    ! range, kernel counts, prior sigma, integrator, seed, or scales fitted to the host's
    ! configurations. Every setter validates its value; a rejected value leaves the options
    ! unchanged. One thread at a time.
    type, public :: eqflow_flow_options
        private
        type(c_ptr) :: ptr = c_null_ptr
    contains
        procedure :: create => flow_options_create
        procedure :: set_family => flow_options_set_family
        procedure :: set_distance_range => flow_options_set_distance_range
        procedure :: set_kernel_counts => flow_options_set_kernel_counts
        procedure :: set_prior_sigma => flow_options_set_prior_sigma
        procedure :: set_integrator => flow_options_set_integrator
        procedure :: set_seed => flow_options_set_seed
        procedure :: set_require_certificate => flow_options_set_require_certificate
        procedure :: set_species => flow_options_set_species
        procedure :: fit_scales => flow_options_fit_scales
        procedure :: scales => flow_options_scales
        procedure :: free => flow_options_free
    end type eqflow_flow_options

    ! A built-in energy (double well, Lennard-Jones). Immutable once created.
    type, public :: eqflow_energy
        private
        type(c_ptr) :: ptr = c_null_ptr
        integer(c_int64_t) :: n_coords = 0
    contains
        procedure :: double_well => energy_double_well
        procedure :: lennard_jones => energy_lennard_jones
        procedure :: eval => energy_eval
        procedure :: free => energy_free
    end type eqflow_energy

    ! Settings of a training run (defaults: the paper's DW-4 ML protocol). Every setter
    ! validates its value; a rejected value leaves the options unchanged. One thread at a time.
    type, public :: eqflow_train_options
        private
        type(c_ptr) :: ptr = c_null_ptr
    contains
        procedure :: create => options_create
        procedure :: set_epochs => options_set_epochs
        procedure :: set_batch_size => options_set_batch_size
        procedure :: set_rk4_steps => options_set_rk4_steps
        procedure :: set_learning_rate => options_set_learning_rate
        procedure :: set_weight_decay => options_set_weight_decay
        procedure :: set_lipschitz_penalty => options_set_lipschitz_penalty
        procedure :: set_seed => options_set_seed
        procedure :: set_kT => options_set_kT
        procedure :: set_kl_samples => options_set_kl_samples
        procedure :: set_lambda => options_set_lambda
        procedure :: set_lambda_linear => options_set_lambda_linear
        procedure :: set_objective => options_set_objective
        procedure :: set_progress => options_set_progress
        procedure :: set_kl_energy => options_set_kl_energy
        procedure :: set_kl_energy_fn => options_set_kl_energy_fn
        procedure :: free => options_free
    end type eqflow_train_options

    ! The Boltzmann-generator Monte Carlo move. One thread at a time.
    type, public :: eqflow_move
        private
        type(c_ptr) :: ptr = c_null_ptr
        integer(c_int64_t) :: n_coords = 0
    contains
        procedure :: create => move_create
        procedure :: propose => move_propose
        procedure :: accept => move_accept
        procedure :: step => move_step
        procedure :: stats => move_stats
        procedure :: solver_stats => move_solver_stats
        procedure :: free => move_free
    end type eqflow_move

contains

    ! The calling thread's last eqflow error message ('' if none).
    function eqflow_last_error() result(message)
        character(len=:), allocatable :: message
        character(kind=c_char), allocatable, target :: buffer(:)
        integer(c_size_t) :: length, i
        length = eqf_last_error_message(c_null_ptr, 0_c_size_t)
        allocate (buffer(length + 1))
        length = eqf_last_error_message(c_loc(buffer), size(buffer, kind=c_size_t))
        allocate (character(len=length) :: message)
        do i = 1, length
            message(i:i) = buffer(i)
        end do
    end function eqflow_last_error

    ! From inside a host energy callback that is about to return a non-zero status: attaches
    ! `message` to the failure; eqflow_last_error then ends with it (eqf_set_callback_error).
    subroutine eqflow_set_callback_error(message)
        character(len=*), intent(in) :: message
        integer(c_int32_t) :: status
        status = eqf_set_callback_error(trim(message) // c_null_char)
    end subroutine eqflow_set_callback_error

    ! The library version, e.g. '0.1.0' (eqf_version).
    function eqflow_version() result(version)
        character(len=:), allocatable :: version
        version = eqflow_string(eqf_version())
    end function eqflow_version

    ! A Fortran copy of the NUL-terminated C string at `text` ('' for a null pointer), for
    ! eqf_version and the message of a log callback.
    function eqflow_string(text) result(string)
        type(c_ptr), intent(in) :: text
        character(len=:), allocatable :: string
        character(kind=c_char), pointer :: chars(:)
        integer :: length
        if (.not. c_associated(text)) then
            string = ''
            return
        end if
        ! The string's length is not known in advance: view it as a long array and stop at the
        ! NUL, never reading past it.
        call c_f_pointer(text, chars, [huge(0)])
        length = 0
        do while (chars(length + 1) /= c_null_char)
            length = length + 1
        end do
        allocate (character(len=length) :: string)
        do length = 1, len(string)
            string(length:length) = chars(length)
        end do
    end function eqflow_string

    ! Installs `callback` (interface eqf_log_fn) as the receiver of eqflow's messages, with
    ! `user` passed back to it (eqf_set_log_callback); without `callback`, removes it (the
    ! default: eqflow prints nothing). Process-wide; the callback must be thread-safe.
    subroutine eqflow_set_log_callback(callback, user)
        procedure(eqf_log_fn), optional :: callback
        type(c_ptr), intent(in), optional :: user
        type(c_ptr) :: user_ptr
        user_ptr = c_null_ptr
        if (present(user)) user_ptr = user
        if (present(callback)) then
            call eqf_set_log_callback(c_funloc(callback), user_ptr)
        else
            call eqf_set_log_callback(c_null_funptr, c_null_ptr)
        end if
    end subroutine eqflow_set_log_callback

    ! Reports `code` through `status` if present, else stops with the message on failure.
    subroutine finish(code, status, context)
        integer(c_int32_t), intent(in) :: code
        integer(c_int32_t), intent(out), optional :: status
        character(len=*), intent(in) :: context
        if (present(status)) then
            status = code
        else if (code /= EQF_OK) then
            write (error_unit, '(a, a, i0, a, a)') context, ' failed with status ', code, ': ', &
                eqflow_last_error()
            error stop 'eqflow error'
        end if
    end subroutine finish

    ! Checks an array dimension in the wrappers (the C API cannot see Fortran shapes).
    logical function shape_ok(found, expected, what, status)
        integer, intent(in) :: found
        integer(c_int64_t), intent(in) :: expected
        character(len=*), intent(in) :: what
        integer(c_int32_t), intent(out), optional :: status
        shape_ok = int(found, c_int64_t) == expected
        if (.not. shape_ok) then
            if (present(status)) then
                status = EQF_ERR_DIMENSION_MISMATCH
            else
                write (error_unit, '(a, a, i0, a, i0)') what, ': extent ', found, &
                    ', expected ', expected
                error stop 'eqflow error'
            end if
        end if
    end function shape_ok

    ! log_w = -U/kT - log_q, see eqf_log_weights.
    subroutine eqflow_log_weights(U, log_q, kT, log_w, status)
        real(c_double), intent(in), contiguous :: U(:), log_q(:)
        real(c_double), intent(in) :: kT
        real(c_double), intent(inout), contiguous :: log_w(:)
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int64_t) :: n
        n = size(U, kind=c_int64_t)
        if (.not. shape_ok(size(log_q), n, 'eqflow_log_weights: log_q', status)) return
        if (.not. shape_ok(size(log_w), n, 'eqflow_log_weights: log_w', status)) return
        call finish(eqf_log_weights(n, U, log_q, kT, log_w), status, 'eqf_log_weights')
    end subroutine eqflow_log_weights

    ! Kish effective sample size of log weights, see eqf_kish_ess.
    function eqflow_kish_ess(log_w, status) result(ess)
        real(c_double), intent(in), contiguous :: log_w(:)
        integer(c_int32_t), intent(out), optional :: status
        real(c_double) :: ess
        ess = 0.0_c_double
        call finish(eqf_kish_ess(size(log_w, kind=c_int64_t), log_w, ess), status, &
            'eqf_kish_ess')
    end function eqflow_kish_ess

    ! ----- flows ---------------------------------------------------------------------------

    ! An untrained flow for n_particles particles in dim dimensions (eqf_flow_new). Frees a
    ! flow this object held before.
    subroutine flow_create(this, n_particles, dim, seed, status)
        class(eqflow_flow), intent(inout) :: this
        integer, intent(in) :: n_particles, dim
        integer(c_int64_t), intent(in) :: seed
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_flow_new(int(n_particles, c_int64_t), int(dim, c_int64_t), seed, out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
        end if
        call finish(code, status, 'eqf_flow_new')
    end subroutine flow_create

    ! A flow from a model file written by flow%save or the eqflow command line (eqf_flow_load).
    ! Frees a flow this object held before (only on success).
    subroutine flow_load(this, path, status)
        class(eqflow_flow), intent(inout) :: this
        character(len=*), intent(in) :: path
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_flow_load(c_string(path), out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
        end if
        call finish(code, status, 'eqf_flow_load')
    end subroutine flow_load

    ! The flow's integrator and density mode, each output optional (eqf_flow_integrator): the
    ! arguments of flow%with_integrator. rtol and atol are 0 for RK4; for Dormand-Prince,
    ! n_steps is the maximum number of attempted steps.
    subroutine flow_integrator(this, method, n_steps, rtol, atol, density_mode, status)
        class(eqflow_flow), intent(in) :: this
        integer(c_int32_t), intent(out), optional :: method, density_mode
        integer, intent(out), optional :: n_steps
        real(c_double), intent(out), optional :: rtol, atol
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int32_t) :: method_out, density_out
        integer(c_int64_t) :: steps_out
        real(c_double) :: rtol_out, atol_out
        method_out = -1
        density_out = -1
        steps_out = 0
        rtol_out = 0.0_c_double
        atol_out = 0.0_c_double
        call finish(eqf_flow_integrator(this%ptr, method_out, steps_out, rtol_out, atol_out, &
            density_out), status, 'eqf_flow_integrator')
        if (present(method)) method = method_out
        if (present(n_steps)) n_steps = int(steps_out)
        if (present(rtol)) rtol = rtol_out
        if (present(atol)) atol = atol_out
        if (present(density_mode)) density_mode = density_out
    end subroutine flow_integrator

    ! Whether every step of the flow's RK4 map is certified to be a bijection
    ! (eqf_flow_certificate): `certified` when max_contraction, the worst step's increment
    ! bound, is below 1 (never for Dormand-Prince, max_contraction = +infinity). With
    ! n_steps_needed, also searches the smallest RK4 step count the field certifies (-1 if
    ! none), which costs more.
    subroutine flow_certificate(this, certified, max_contraction, n_steps_needed, status)
        class(eqflow_flow), intent(in) :: this
        logical, intent(out) :: certified
        real(c_double), intent(out), optional :: max_contraction
        integer, intent(out), optional :: n_steps_needed
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int32_t) :: flag, code
        integer(c_int64_t) :: needed
        real(c_double) :: contraction
        flag = 0
        contraction = 0.0_c_double
        needed = -1
        if (present(n_steps_needed)) then
            code = eqf_flow_certificate(this%ptr, flag, contraction, needed)
            n_steps_needed = int(needed)
        else
            code = eqf_flow_certificate(this%ptr, flag, contraction)
        end if
        certified = flag /= 0
        if (present(max_contraction)) max_contraction = contraction
        call finish(code, status, 'eqf_flow_certificate')
    end subroutine flow_certificate

    ! Per-configuration certificates (eqf_flow_certify_configurations) of the
    ! n = size(step_bound) configurations x(D, N, n): each one's worst step bound, below 1 when
    ! it is proved to have exactly one preimage under the RK4 map (its density is exact even
    ! where the flow's certificate fails); n_certified counts them.
    subroutine flow_certify_configurations(this, x, step_bound, n_certified, status)
        class(eqflow_flow), intent(in) :: this
        real(c_double), intent(in), contiguous :: x(:, :, :)
        real(c_double), intent(inout), contiguous :: step_bound(:)
        integer, intent(out), optional :: n_certified
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int64_t) :: count
        integer(c_int32_t) :: code
        if (.not. batch_shape_ok(this, x, size(step_bound), 'certify_configurations: x', &
            status)) return
        count = 0
        code = eqf_flow_certify_configurations(this%ptr, size(step_bound, kind=c_int64_t), x, &
            step_bound, count)
        if (present(n_certified)) n_certified = int(count)
        call finish(code, status, 'eqf_flow_certify_configurations')
    end subroutine flow_certify_configurations

    ! A new flow with this flow's parameters and integrator and strict mode on or off
    ! (eqf_flow_with_require_certificate): in strict mode an uncertified exact-discrete grid is
    ! refused with EQF_ERR_UNCERTIFIED, the message naming the certified step count. Every
    ! flow is strict unless it opts out (.false.).
    subroutine flow_with_require_certificate(this, require, new, status)
        class(eqflow_flow), intent(in) :: this
        logical, intent(in) :: require
        type(eqflow_flow), intent(inout) :: new
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code, flag
        out = c_null_ptr
        flag = 0
        if (require) flag = 1
        code = eqf_flow_with_require_certificate(this%ptr, flag, out)
        if (code == EQF_OK) then
            call new%free()
            new%ptr = out
        end if
        call finish(code, status, 'eqf_flow_with_require_certificate')
    end subroutine flow_with_require_certificate

    ! Whether strict mode is on (eqf_flow_require_certificate).
    subroutine flow_require_certificate(this, require, status)
        class(eqflow_flow), intent(in) :: this
        logical, intent(out) :: require
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int32_t) :: flag, code
        flag = 0
        code = eqf_flow_require_certificate(this%ptr, flag)
        require = flag /= 0
        call finish(code, status, 'eqf_flow_require_certificate')
    end subroutine flow_require_certificate

    ! An untrained flow for n_particles particles in dim dimensions with the given options
    ! (eqf_flow_new_with_options). Frees a flow this object held before.
    subroutine flow_create_with_options(this, n_particles, dim, options, status)
        class(eqflow_flow), intent(inout) :: this
        integer, intent(in) :: n_particles, dim
        type(eqflow_flow_options), intent(in) :: options
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_flow_new_with_options(int(n_particles, c_int64_t), int(dim, c_int64_t), &
            options%ptr, out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
        end if
        call finish(code, status, 'eqf_flow_new_with_options')
    end subroutine flow_create_with_options

    ! A new flow with this flow's parameters and another integrator (eqf_flow_with_integrator).
    subroutine flow_with_integrator(this, method, n_steps, rtol, atol, density_mode, new, status)
        class(eqflow_flow), intent(in) :: this
        integer(c_int32_t), intent(in) :: method, density_mode
        integer, intent(in) :: n_steps
        real(c_double), intent(in) :: rtol, atol
        type(eqflow_flow), intent(inout) :: new
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_flow_with_integrator(this%ptr, method, int(n_steps, c_int64_t), rtol, atol, &
            density_mode, out)
        if (code == EQF_OK) then
            call new%free()
            new%ptr = out
        end if
        call finish(code, status, 'eqf_flow_with_integrator')
    end subroutine flow_with_integrator

    integer function flow_n_particles(this)
        class(eqflow_flow), intent(in) :: this
        flow_n_particles = int(eqf_flow_n_particles(this%ptr))
    end function flow_n_particles

    integer function flow_n_dim(this)
        class(eqflow_flow), intent(in) :: this
        flow_n_dim = int(eqf_flow_dim(this%ptr))
    end function flow_n_dim

    ! n = size(log_q) samples into x(D, N, n) with their log-densities (eqf_flow_sample).
    subroutine flow_sample(this, seed, x, log_q, status)
        class(eqflow_flow), intent(in) :: this
        integer(c_int64_t), intent(in) :: seed
        real(c_double), intent(inout), contiguous :: x(:, :, :)
        real(c_double), intent(inout), contiguous :: log_q(:)
        integer(c_int32_t), intent(out), optional :: status
        if (.not. batch_shape_ok(this, x, size(log_q), 'sample: x', status)) return
        call finish(eqf_flow_sample(this%ptr, seed, size(log_q, kind=c_int64_t), x, log_q), &
            status, 'eqf_flow_sample')
    end subroutine flow_sample

    ! log q of the n = size(log_q) configurations x(D, N, n) (eqf_flow_log_density).
    subroutine flow_log_density(this, x, log_q, status)
        class(eqflow_flow), intent(in) :: this
        real(c_double), intent(in), contiguous :: x(:, :, :)
        real(c_double), intent(inout), contiguous :: log_q(:)
        integer(c_int32_t), intent(out), optional :: status
        if (.not. batch_shape_ok(this, x, size(log_q), 'log_density: x', status)) return
        call finish(eqf_flow_log_density(this%ptr, size(log_q, kind=c_int64_t), x, log_q), &
            status, 'eqf_flow_log_density')
    end subroutine flow_log_density

    logical function batch_shape_ok(flow, x, n, what, status)
        class(eqflow_flow), intent(in) :: flow
        real(c_double), intent(in) :: x(:, :, :)
        integer, intent(in) :: n
        character(len=*), intent(in) :: what
        integer(c_int32_t), intent(out), optional :: status
        ! A NULL handle goes through to the C call, whose EQF_ERR_NULL_POINTER and message say
        ! so (its N and D, -1, would make every extent a mismatch).
        batch_shape_ok = .true.
        if (.not. c_associated(flow%ptr)) return
        batch_shape_ok = shape_ok(size(x, 1), eqf_flow_dim(flow%ptr), what//'(D,:,:)', status)
        if (batch_shape_ok) then
            batch_shape_ok = shape_ok(size(x, 2), eqf_flow_n_particles(flow%ptr), &
                what//'(:,N,:)', status)
        end if
        if (batch_shape_ok) then
            batch_shape_ok = shape_ok(size(x, 3), int(n, c_int64_t), what//'(:,:,n)', status)
        end if
    end function batch_shape_ok

    ! Trains the flow in place (eqf_flow_train): maximum likelihood on x_train(D, N, n), with a
    ! KL term if the options say so; x_validation(D, N, m) is optional. `summary` receives what
    ! the run did (only on success). On failure the flow is unchanged.
    subroutine flow_train(this, options, x_train, x_validation, summary, status)
        class(eqflow_flow), intent(inout) :: this
        type(eqflow_train_options), intent(in) :: options
        real(c_double), intent(in), contiguous :: x_train(:, :, :)
        real(c_double), intent(in), contiguous, target, optional :: x_validation(:, :, :)
        type(eqf_train_summary), intent(inout), optional :: summary
        integer(c_int32_t), intent(out), optional :: status
        type(eqf_train_summary) :: result
        type(c_ptr) :: validation_ptr
        integer(c_int64_t) :: n_validation
        integer(c_int32_t) :: code
        if (.not. batch_shape_ok(this, x_train, size(x_train, 3), 'train: x_train', status)) &
            return
        validation_ptr = c_null_ptr
        n_validation = 0
        if (present(x_validation)) then
            if (.not. batch_shape_ok(this, x_validation, size(x_validation, 3), &
                'train: x_validation', status)) return
            n_validation = size(x_validation, 3, kind=c_int64_t)
            if (n_validation > 0) validation_ptr = c_loc(x_validation)
        end if
        result%size = int(c_sizeof(result), c_int64_t)
        code = eqf_flow_train(this%ptr, options%ptr, size(x_train, 3, kind=c_int64_t), x_train, &
            n_validation, validation_ptr, result)
        if (code == EQF_OK .and. present(summary)) summary = result
        call finish(code, status, 'eqf_flow_train')
    end subroutine flow_train

    ! Saves the flow to a model file (eqf_flow_save).
    subroutine flow_save(this, path, status)
        class(eqflow_flow), intent(in) :: this
        character(len=*), intent(in) :: path
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_save(this%ptr, c_string(path)), status, 'eqf_flow_save')
    end subroutine flow_save

    ! A NUL-terminated copy of a Fortran string.
    pure function c_string(text) result(chars)
        character(len=*), intent(in) :: text
        character(kind=c_char) :: chars(len(text) + 1)
        integer :: i
        do i = 1, len(text)
            chars(i) = text(i:i)
        end do
        chars(len(text) + 1) = c_null_char
    end function c_string

    ! The C handle (still owned by this object), for the raw interfaces.
    function flow_handle(this) result(ptr)
        class(eqflow_flow), intent(in) :: this
        type(c_ptr) :: ptr
        ptr = this%ptr
    end function flow_handle

    ! Releases the flow (no-op if none). Moves created from it stay valid.
    subroutine flow_free(this)
        class(eqflow_flow), intent(inout) :: this
        integer(c_int32_t) :: code
        if (c_associated(this%ptr)) code = eqf_flow_free(this%ptr)
        this%ptr = c_null_ptr
    end subroutine flow_free

    ! ----- flow options --------------------------------------------------------------------

    ! Options with the defaults of eqf_flow_options_new. Frees options this object held before.
    subroutine flow_options_create(this, status)
        class(eqflow_flow_options), intent(inout) :: this
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_flow_options_new(out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
        end if
        call finish(code, status, 'eqf_flow_options_new')
    end subroutine flow_options_create

    ! The field family by name: 'kernel' (default) or 'envpair'.
    subroutine flow_options_set_family(this, name, status)
        class(eqflow_flow_options), intent(inout) :: this
        character(len=*), intent(in) :: name
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_family(this%ptr, c_string(name)), status, &
            'eqf_flow_options_set_family')
    end subroutine flow_options_set_family

    ! Centres of the first and the last distance kernel, in the host's length unit.
    subroutine flow_options_set_distance_range(this, min, max, status)
        class(eqflow_flow_options), intent(inout) :: this
        real(c_double), intent(in) :: min, max
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_distance_range(this%ptr, min, max), status, &
            'eqf_flow_options_set_distance_range')
    end subroutine flow_options_set_distance_range

    subroutine flow_options_set_kernel_counts(this, n_dist, n_time, status)
        class(eqflow_flow_options), intent(inout) :: this
        integer, intent(in) :: n_dist, n_time
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_kernel_counts(this%ptr, int(n_dist, c_int64_t), &
            int(n_time, c_int64_t)), status, 'eqf_flow_options_set_kernel_counts')
    end subroutine flow_options_set_kernel_counts

    subroutine flow_options_set_prior_sigma(this, sigma, status)
        class(eqflow_flow_options), intent(inout) :: this
        real(c_double), intent(in) :: sigma
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_prior_sigma(this%ptr, sigma), status, &
            'eqf_flow_options_set_prior_sigma')
    end subroutine flow_options_set_prior_sigma

    ! Integrator and density mode, as for flow%with_integrator.
    subroutine flow_options_set_integrator(this, method, n_steps, rtol, atol, density_mode, &
            status)
        class(eqflow_flow_options), intent(inout) :: this
        integer(c_int32_t), intent(in) :: method, density_mode
        integer, intent(in) :: n_steps
        real(c_double), intent(in) :: rtol, atol
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_integrator(this%ptr, method, int(n_steps, c_int64_t), &
            rtol, atol, density_mode), status, 'eqf_flow_options_set_integrator')
    end subroutine flow_options_set_integrator

    subroutine flow_options_set_seed(this, seed, status)
        class(eqflow_flow_options), intent(inout) :: this
        integer(c_int64_t), intent(in) :: seed
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_seed(this%ptr, seed), status, &
            'eqf_flow_options_set_seed')
    end subroutine flow_options_set_seed

    ! Strict mode of the flows built from these options
    ! (eqf_flow_options_set_require_certificate).
    subroutine flow_options_set_require_certificate(this, require, status)
        class(eqflow_flow_options), intent(inout) :: this
        logical, intent(in) :: require
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_require_certificate(this%ptr, &
            merge(1_c_int32_t, 0_c_int32_t, require)), status, &
            'eqf_flow_options_set_require_certificate')
    end subroutine flow_options_set_require_certificate

    ! The species of the particles: species(i) is particle i's 0-based index, below n_species
    ! (eqf_flow_options_set_species).
    subroutine flow_options_set_species(this, species, n_species, status)
        class(eqflow_flow_options), intent(inout) :: this
        integer(c_int32_t), intent(in) :: species(:)
        integer, intent(in) :: n_species
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_set_species(this%ptr, species, size(species, kind=c_int64_t), &
            int(n_species, c_int64_t)), status, 'eqf_flow_options_set_species')
    end subroutine flow_options_set_species

    ! Distance range and prior sigma from the host's configurations x(D, N, n_configs)
    ! (eqf_flow_options_fit_scales).
    subroutine flow_options_fit_scales(this, x, status)
        class(eqflow_flow_options), intent(inout) :: this
        real(c_double), intent(in), contiguous :: x(:, :, :)
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_flow_options_fit_scales(this%ptr, size(x, 2, kind=c_int64_t), &
            size(x, 1, kind=c_int64_t), x, size(x, 3, kind=c_int64_t)), status, &
            'eqf_flow_options_fit_scales')
    end subroutine flow_options_fit_scales

    ! The distance range and prior sigma the options hold (eqf_flow_options_scales).
    subroutine flow_options_scales(this, distance_min, distance_max, prior_sigma, status)
        class(eqflow_flow_options), intent(in) :: this
        real(c_double), intent(out) :: distance_min, distance_max, prior_sigma
        integer(c_int32_t), intent(out), optional :: status
        distance_min = 0.0_c_double
        distance_max = 0.0_c_double
        prior_sigma = 0.0_c_double
        call finish(eqf_flow_options_scales(this%ptr, distance_min, distance_max, prior_sigma), &
            status, 'eqf_flow_options_scales')
    end subroutine flow_options_scales

    subroutine flow_options_free(this)
        class(eqflow_flow_options), intent(inout) :: this
        integer(c_int32_t) :: code
        if (c_associated(this%ptr)) code = eqf_flow_options_free(this%ptr)
        this%ptr = c_null_ptr
    end subroutine flow_options_free

    ! ----- energies ------------------------------------------------------------------------

    ! The pairwise double well of DW-2/DW-4 (eqf_energy_double_well).
    subroutine energy_double_well(this, n_particles, dim, a, b, c, d0, status)
        class(eqflow_energy), intent(inout) :: this
        integer, intent(in) :: n_particles, dim
        real(c_double), intent(in) :: a, b, c, d0
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_energy_double_well(int(n_particles, c_int64_t), int(dim, c_int64_t), a, b, &
            c, d0, out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
            this%n_coords = int(n_particles, c_int64_t) * int(dim, c_int64_t)
        end if
        call finish(code, status, 'eqf_energy_double_well')
    end subroutine energy_double_well

    ! The Lennard-Jones cluster of LJ-13 (eqf_energy_lennard_jones).
    subroutine energy_lennard_jones(this, n_particles, dim, epsilon, r_m, oscillator_k, status)
        class(eqflow_energy), intent(inout) :: this
        integer, intent(in) :: n_particles, dim
        real(c_double), intent(in) :: epsilon, r_m, oscillator_k
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_energy_lennard_jones(int(n_particles, c_int64_t), int(dim, c_int64_t), &
            epsilon, r_m, oscillator_k, out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
            this%n_coords = int(n_particles, c_int64_t) * int(dim, c_int64_t)
        end if
        call finish(code, status, 'eqf_energy_lennard_jones')
    end subroutine energy_lennard_jones

    ! U(s) of the configurations x(D, N, s), and the gradient +dU/dx (same shape) if present
    ! (eqf_energy_eval).
    subroutine energy_eval(this, x, U, gradient, status)
        class(eqflow_energy), intent(in) :: this
        real(c_double), intent(in), contiguous :: x(:, :, :)
        real(c_double), intent(inout), contiguous :: U(:)
        real(c_double), intent(inout), contiguous, target, optional :: gradient(:, :, :)
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: gradient_ptr
        ! Shapes are checked against a created energy; a NULL handle goes through to the C
        ! call, whose EQF_ERR_NULL_POINTER and message say so.
        if (c_associated(this%ptr)) then
            if (.not. shape_ok(size(x, 1) * size(x, 2), this%n_coords, 'eval: x(D,N,:)', &
                status)) return
            if (.not. shape_ok(size(x, 3), size(U, kind=c_int64_t), 'eval: x(:,:,n)', &
                status)) return
            if (present(gradient)) then
                if (.not. shape_ok(size(gradient), size(x, kind=c_int64_t), 'eval: gradient', &
                    status)) return
            end if
        end if
        gradient_ptr = c_null_ptr
        if (present(gradient)) gradient_ptr = c_loc(gradient)
        call finish(eqf_energy_eval(this%ptr, size(U, kind=c_int64_t), x, U, gradient_ptr), &
            status, 'eqf_energy_eval')
    end subroutine energy_eval

    subroutine energy_free(this)
        class(eqflow_energy), intent(inout) :: this
        integer(c_int32_t) :: code
        if (c_associated(this%ptr)) code = eqf_energy_free(this%ptr)
        this%ptr = c_null_ptr
        this%n_coords = 0
    end subroutine energy_free

    ! ----- training options ----------------------------------------------------------------

    ! Options with the defaults of eqf_train_options_new. Frees options this object held before.
    subroutine options_create(this, status)
        class(eqflow_train_options), intent(inout) :: this
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_train_options_new(out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
        end if
        call finish(code, status, 'eqf_train_options_new')
    end subroutine options_create

    subroutine options_set_epochs(this, n_epochs, status)
        class(eqflow_train_options), intent(inout) :: this
        integer, intent(in) :: n_epochs
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_epochs(this%ptr, int(n_epochs, c_int64_t)), status, &
            'eqf_train_options_set_epochs')
    end subroutine options_set_epochs

    subroutine options_set_batch_size(this, batch_size, status)
        class(eqflow_train_options), intent(inout) :: this
        integer, intent(in) :: batch_size
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_batch_size(this%ptr, int(batch_size, c_int64_t)), &
            status, 'eqf_train_options_set_batch_size')
    end subroutine options_set_batch_size

    subroutine options_set_rk4_steps(this, n_steps, status)
        class(eqflow_train_options), intent(inout) :: this
        integer, intent(in) :: n_steps
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_rk4_steps(this%ptr, int(n_steps, c_int64_t)), status, &
            'eqf_train_options_set_rk4_steps')
    end subroutine options_set_rk4_steps

    subroutine options_set_learning_rate(this, learning_rate, status)
        class(eqflow_train_options), intent(inout) :: this
        real(c_double), intent(in) :: learning_rate
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_learning_rate(this%ptr, learning_rate), status, &
            'eqf_train_options_set_learning_rate')
    end subroutine options_set_learning_rate

    subroutine options_set_weight_decay(this, weight_decay, status)
        class(eqflow_train_options), intent(inout) :: this
        real(c_double), intent(in) :: weight_decay
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_weight_decay(this%ptr, weight_decay), status, &
            'eqf_train_options_set_weight_decay')
    end subroutine options_set_weight_decay

    subroutine options_set_lipschitz_penalty(this, weight, target, status)
        class(eqflow_train_options), intent(inout) :: this
        real(c_double), intent(in) :: weight, target
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_lipschitz_penalty(this%ptr, weight, target), status, &
            'eqf_train_options_set_lipschitz_penalty')
    end subroutine options_set_lipschitz_penalty

    subroutine options_set_seed(this, seed, status)
        class(eqflow_train_options), intent(inout) :: this
        integer(c_int64_t), intent(in) :: seed
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_seed(this%ptr, seed), status, &
            'eqf_train_options_set_seed')
    end subroutine options_set_seed

    subroutine options_set_kT(this, kT, status)
        class(eqflow_train_options), intent(inout) :: this
        real(c_double), intent(in) :: kT
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_kT(this%ptr, kT), status, 'eqf_train_options_set_kT')
    end subroutine options_set_kT

    subroutine options_set_kl_samples(this, n_samples, status)
        class(eqflow_train_options), intent(inout) :: this
        integer, intent(in) :: n_samples
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_kl_samples(this%ptr, int(n_samples, c_int64_t)), &
            status, 'eqf_train_options_set_kl_samples')
    end subroutine options_set_kl_samples

    ! A constant ML weight lambda in [0, 1] (1: pure maximum likelihood).
    subroutine options_set_lambda(this, lambda, status)
        class(eqflow_train_options), intent(inout) :: this
        real(c_double), intent(in) :: lambda
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_lambda(this%ptr, lambda), status, &
            'eqf_train_options_set_lambda')
    end subroutine options_set_lambda

    ! lambda from `start` in the first epoch to `end` in the last.
    subroutine options_set_lambda_linear(this, start, end, status)
        class(eqflow_train_options), intent(inout) :: this
        real(c_double), intent(in) :: start, end
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_lambda_linear(this%ptr, start, end), status, &
            'eqf_train_options_set_lambda_linear')
    end subroutine options_set_lambda_linear

    ! The training objective, one of the EQF_OBJECTIVE_* constants.
    subroutine options_set_objective(this, objective, status)
        class(eqflow_train_options), intent(inout) :: this
        integer(c_int32_t), intent(in) :: objective
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_objective(this%ptr, objective), status, &
            'eqf_train_options_set_objective')
    end subroutine options_set_objective

    ! The progress callback (interface eqf_train_progress_fn), called after every epoch.
    subroutine options_set_progress(this, progress, user, status)
        class(eqflow_train_options), intent(inout) :: this
        procedure(eqf_train_progress_fn) :: progress
        type(c_ptr), intent(in) :: user
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_progress(this%ptr, c_funloc(progress), user), status, &
            'eqf_train_options_set_progress')
    end subroutine options_set_progress

    ! A built-in energy as the KL target (the options keep it: it may be freed afterwards).
    subroutine options_set_kl_energy(this, energy, status)
        class(eqflow_train_options), intent(inout) :: this
        type(eqflow_energy), intent(in) :: energy
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_kl_energy(this%ptr, energy%ptr), status, &
            'eqf_train_options_set_kl_energy')
    end subroutine options_set_kl_energy

    ! The host's energy and gradient (interface eqf_energy_grad_fn) as the KL target.
    subroutine options_set_kl_energy_fn(this, energy, user, status)
        class(eqflow_train_options), intent(inout) :: this
        procedure(eqf_energy_grad_fn) :: energy
        type(c_ptr), intent(in) :: user
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_train_options_set_kl_energy_fn(this%ptr, c_funloc(energy), user), &
            status, 'eqf_train_options_set_kl_energy_fn')
    end subroutine options_set_kl_energy_fn

    subroutine options_free(this)
        class(eqflow_train_options), intent(inout) :: this
        integer(c_int32_t) :: code
        if (c_associated(this%ptr)) code = eqf_train_options_free(this%ptr)
        this%ptr = c_null_ptr
    end subroutine options_free

    ! ----- moves ---------------------------------------------------------------------------

    ! A Monte Carlo move proposing from `flow` at temperature kT (eqf_move_new). The move keeps
    ! its own copy of the flow.
    subroutine move_create(this, flow, kT, seed, status)
        class(eqflow_move), intent(inout) :: this
        type(eqflow_flow), intent(in) :: flow
        real(c_double), intent(in) :: kT
        integer(c_int64_t), intent(in) :: seed
        integer(c_int32_t), intent(out), optional :: status
        type(c_ptr) :: out
        integer(c_int32_t) :: code
        out = c_null_ptr
        code = eqf_move_new(flow%ptr, kT, seed, out)
        if (code == EQF_OK) then
            call this%free()
            this%ptr = out
            this%n_coords = eqf_flow_n_particles(flow%ptr) * eqf_flow_dim(flow%ptr)
        end if
        call finish(code, status, 'eqf_move_new')
    end subroutine move_create

    ! Phase one: x_proposed(D, N) from the current state x_current(D, N) with energy U_current
    ! (eqf_move_propose).
    subroutine move_propose(this, x_current, U_current, x_proposed, status)
        class(eqflow_move), intent(inout) :: this
        real(c_double), intent(in), contiguous :: x_current(:, :)
        real(c_double), intent(in) :: U_current
        real(c_double), intent(inout), contiguous :: x_proposed(:, :)
        integer(c_int32_t), intent(out), optional :: status
        ! As energy_eval: a NULL handle goes through to the C call's EQF_ERR_NULL_POINTER.
        if (c_associated(this%ptr)) then
            if (.not. shape_ok(size(x_current), this%n_coords, 'propose: x_current', status)) &
                return
            if (.not. shape_ok(size(x_proposed), this%n_coords, 'propose: x_proposed', &
                status)) return
        end if
        call finish(eqf_move_propose(this%ptr, x_current, U_current, x_proposed), status, &
            'eqf_move_propose')
    end subroutine move_propose

    ! Phase two: decides the pending proposal given its energy (eqf_move_accept).
    subroutine move_accept(this, U_proposed, accepted, status)
        class(eqflow_move), intent(inout) :: this
        real(c_double), intent(in) :: U_proposed
        logical, intent(out) :: accepted
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int32_t) :: flag, code
        flag = 0
        code = eqf_move_accept(this%ptr, U_proposed, flag)
        accepted = flag /= 0
        call finish(code, status, 'eqf_move_accept')
    end subroutine move_accept

    ! One move on x(D, N) with energy U, calling `energy` once for the proposal (eqf_move_step);
    ! on acceptance x and U hold the proposal and its energy. `user` is passed to `energy`.
    subroutine move_step(this, x, U, energy, user, accepted, status)
        class(eqflow_move), intent(inout) :: this
        real(c_double), intent(inout), contiguous :: x(:, :)
        real(c_double), intent(inout) :: U
        procedure(eqf_energy_fn) :: energy
        type(c_ptr), intent(in) :: user
        logical, intent(out) :: accepted
        integer(c_int32_t), intent(out), optional :: status
        integer(c_int32_t) :: flag, code
        accepted = .false.
        if (c_associated(this%ptr)) then
            if (.not. shape_ok(size(x), this%n_coords, 'step: x', status)) return
        end if
        flag = 0
        code = eqf_move_step(this%ptr, x, U, c_funloc(energy), user, flag)
        accepted = flag /= 0
        call finish(code, status, 'eqf_move_step')
    end subroutine move_step

    ! Decided and accepted proposals so far (eqf_move_stats).
    subroutine move_stats(this, n_proposed, n_accepted, status)
        class(eqflow_move), intent(in) :: this
        integer(c_int64_t), intent(out) :: n_proposed, n_accepted
        integer(c_int32_t), intent(out), optional :: status
        n_proposed = 0
        n_accepted = 0
        call finish(eqf_move_stats(this%ptr, n_proposed, n_accepted), status, 'eqf_move_stats')
    end subroutine move_stats

    ! The solver work of the decided proposals (eqf_move_solver_stats).
    subroutine move_solver_stats(this, stats, status)
        class(eqflow_move), intent(in) :: this
        type(eqf_solver_stats), intent(out) :: stats
        integer(c_int32_t), intent(out), optional :: status
        call finish(eqf_move_solver_stats(this%ptr, stats), status, 'eqf_move_solver_stats')
    end subroutine move_solver_stats

    subroutine move_free(this)
        class(eqflow_move), intent(inout) :: this
        integer(c_int32_t) :: code
        if (c_associated(this%ptr)) code = eqf_move_free(this%ptr)
        this%ptr = c_null_ptr
        this%n_coords = 0
    end subroutine move_free

end module eqflow
