! fortran_model.f90: a trained model from Fortran (module eqflow), e.g. the shipped
! models/dw4.json.
!
! Loads the model with flow%load, reads its integrator, samples x(D, N, n) and requires the
! sampled log q to equal the evaluated one (to 1e-8), queries the step certificate (for the
! model's RK4 grid, Dormand-Prince, and the smallest certified step count), runs flow moves
! with a bind(C) energy and reads their solver statistics (move%solver_stats), saves and
! reloads the model bit for bit, and checks the statuses of a missing file and of objects that
! hold no handle. A bind(C) log callback counts the failures. Prints the library version.
!
! Build: gfortran -std=f2018 -fcheck=all -Wall -Werror eqflow.f90 fortran_model.f90 -leqflow
! Usage: fortran_model --model PATH [--save PATH] [--quick]. --save writes a copy of the model
! there (and reloads it); --quick skips the costlier certificate checks (for valgrind).
! Exit status 0 on success.
module model_host
    use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_int64_t, c_ptr, c_f_pointer
    use eqflow, only: EQF_LOG_DEBUG, eqflow_string
    implicit none
    private
    public :: dw4_energy, dw4_callback, log_counts, count_messages

    ! What the log callback received. A log callback must be thread-safe in general; plain
    ! counters suffice here because only failed calls on this thread log while it is installed.
    type, public :: log_counts
        integer :: debug = 0, other = 0
        character(len=:), allocatable :: last
    end type log_counts

contains

    ! The DW-4 double well (a = 0, b = -4, c = 0.9, d0 = 4) of one configuration x(D, N).
    pure function dw4_energy(x) result(U)
        real(c_double), intent(in) :: x(:, :)
        real(c_double) :: U, s
        integer :: i, j
        U = 0.0_c_double
        do i = 1, size(x, 2)
            do j = i + 1, size(x, 2)
                s = norm2(x(:, i) - x(:, j)) - 4.0_c_double
                U = U - 4.0_c_double*s**2 + 0.9_c_double*s**4
            end do
        end do
    end function dw4_energy

    ! eqf_energy_fn; counts its calls in the integer `user` points to.
    function dw4_callback(user, n_particles, dim, x, U) bind(C) result(status)
        type(c_ptr), value :: user
        integer(c_int64_t), value :: n_particles, dim
        real(c_double), intent(in) :: x(dim, n_particles)
        real(c_double), intent(out) :: U
        integer(c_int32_t) :: status
        integer, pointer :: n_calls
        call c_f_pointer(user, n_calls)
        n_calls = n_calls + 1
        U = dw4_energy(x)
        status = 0
    end function dw4_callback

    ! eqf_log_fn: counts messages in the log_counts that `user` points to.
    subroutine count_messages(user, level, message) bind(C)
        type(c_ptr), value :: user
        integer(c_int32_t), value :: level
        type(c_ptr), value :: message
        type(log_counts), pointer :: counts
        call c_f_pointer(user, counts)
        if (level == EQF_LOG_DEBUG) then
            counts%debug = counts%debug + 1
            counts%last = eqflow_string(message)
        else
            counts%other = counts%other + 1
        end if
    end subroutine count_messages

end module model_host

program fortran_model
    use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_int64_t, c_loc
    use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
    use eqflow
    use model_host
    implicit none

    integer, parameter :: N = 4, D = 2
    type(eqflow_flow) :: flow, adaptive, fine, coarse, reloaded, empty_flow, strict
    type(eqflow_move) :: move, empty_move
    type(eqf_solver_stats) :: work, no_work
    type(log_counts), target :: counts
    real(c_double), allocatable :: x(:, :, :), log_q(:), log_q_again(:), log_q_reloaded(:)
    real(c_double), allocatable :: x_strict(:, :, :), log_q_strict(:), step_bound(:)
    real(c_double) :: state(D, N), proposal(D, N), U, worst, max_contraction, rtol, atol, bound
    integer(c_int64_t) :: n_proposed, n_accepted
    integer(c_int32_t) :: status, method, density_mode
    integer :: i, n_samples, n_moves, n_steps, needed, unit, n_certified
    integer, target :: n_energy_calls
    character(len=:), allocatable :: model, save, argument
    logical :: quick, certified, accepted

    ! Arguments.
    model = ''
    save = ''
    quick = .false.
    i = 1
    do while (i <= command_argument_count())
        argument = command_argument(i)
        if (argument == '--model' .and. i < command_argument_count()) then
            model = command_argument(i + 1)
            i = i + 1
        else if (argument == '--save' .and. i < command_argument_count()) then
            save = command_argument(i + 1)
            i = i + 1
        else if (argument == '--quick') then
            quick = .true.
        else
            model = ''
            exit
        end if
        i = i + 1
    end do
    if (len(model) == 0) then
        write (*, '(a)') 'usage: fortran_model --model PATH [--save PATH] [--quick]'
        error stop 2
    end if

    call expect(eqf_abi_version() == 1, 'ABI version 1')
    call expect(len(eqflow_version()) > 0, 'a version string')

    call flow%load(model)
    call expect(flow%n_particles() == N .and. flow%n_dim() == D, 'a DW-4 model')
    call flow%integrator(method=method, n_steps=n_steps, rtol=rtol, atol=atol, &
                         density_mode=density_mode)
    call expect(method == EQF_METHOD_RK4 .and. n_steps == 20 .and. &
                density_mode == EQF_DENSITY_EXACT_DISCRETE, &
                "the model's integrator: exact-discrete RK4, 20 steps")
    call expect(rtol == 0.0_c_double .and. atol == 0.0_c_double, 'no tolerances for RK4')

    ! Sampled log q equals evaluated log q (exact-discrete mode).
    n_samples = 200
    if (quick) n_samples = 20
    allocate (x(D, N, n_samples), log_q(n_samples), log_q_again(n_samples), &
              log_q_reloaded(n_samples))
    call flow%sample(17_c_int64_t, x, log_q)
    call flow%log_density(x, log_q_again)
    call expect(all(ieee_is_finite(log_q)), 'finite log q')
    worst = maxval(abs(log_q - log_q_again))
    call expect(worst <= 1.0e-8_c_double, 'sampled log q = evaluated log q to 1e-8')

    ! The step certificate: the model's grid, and Dormand-Prince (never certified).
    call flow%certificate(certified, max_contraction)
    call expect(ieee_is_finite(max_contraction) .and. max_contraction > 0.0_c_double, &
                'a finite contraction bound')
    call expect(certified .eqv. (max_contraction < 1.0_c_double), &
                'certified exactly when the bound is below 1')
    ! Per configuration: never above the global bound, each of the samples certified when
    ! the flow is.
    allocate (step_bound(n_samples))
    call flow%certify_configurations(x, step_bound, n_certified)
    call expect(all(step_bound <= max_contraction) .and. all(step_bound > 0.0_c_double), &
                'per-configuration bounds at most the global one')
    call expect(n_certified == count(step_bound < 1.0_c_double), &
                'certified exactly when the bound is below 1')
    if (certified) call expect(n_certified == n_samples, 'a certified flow certifies each sample')
    call flow%with_integrator(EQF_METHOD_DOPRI5, 0, 1.0e-5_c_double, 1.0e-10_c_double, &
                              EQF_DENSITY_CONTINUOUS, adaptive)
    call adaptive%certificate(certified, bound)
    call expect(.not. certified .and. .not. ieee_is_finite(bound) .and. bound > 0, &
                'Dormand-Prince is never certified')
    call adaptive%certify_configurations(x, step_bound, status=status)
    call expect(status == EQF_ERR_INVALID_ARGUMENT, 'no per-configuration certificate either')
    call adaptive%integrator(method=method, rtol=rtol, density_mode=density_mode)
    call expect(method == EQF_METHOD_DOPRI5 .and. rtol == 1.0e-5_c_double .and. &
                density_mode == EQF_DENSITY_CONTINUOUS, 'the integrator of the copy')
    needed = -1
    if (.not. quick) then
        call flow%certificate(certified, n_steps_needed=needed)
        call expect(needed > 0, 'some RK4 step count is certified')
        call flow%with_integrator(EQF_METHOD_RK4, needed, 0.0_c_double, 0.0_c_double, &
                                  EQF_DENSITY_EXACT_DISCRETE, fine)
        call fine%certificate(certified, bound)
        call expect(certified .and. bound < 1.0_c_double, &
                    'the smallest certified step count is certified')
        call flow%with_integrator(EQF_METHOD_RK4, needed - 1, 0.0_c_double, 0.0_c_double, &
                                  EQF_DENSITY_EXACT_DISCRETE, coarse)
        call coarse%certificate(certified)
        call expect(.not. certified, 'one step fewer is not certified')
        ! Strict mode: the certified grid samples, one step fewer is refused.
        call fine%with_require_certificate(.true., strict)
        call strict%require_certificate(certified)
        call expect(certified, 'strict mode is on in the copy')
        allocate(x_strict(D, N, 4), log_q_strict(4))
        call strict%sample(17_c_int64_t, x_strict, log_q_strict, status)
        call expect(status == EQF_OK, 'a certified grid samples in strict mode')
        call coarse%with_require_certificate(.true., strict)
        call strict%sample(17_c_int64_t, x_strict, log_q_strict, status)
        call expect(status == EQF_ERR_UNCERTIFIED, 'an uncertified grid is refused in strict mode')
        call strict%free()
    end if

    ! Flow moves with the host's energy, and the solver work they cost.
    state = x(:, :, 1)
    U = dw4_energy(state)
    call move%create(flow, 1.0_c_double, 5_c_int64_t)
    n_moves = 100
    if (quick) n_moves = 5
    n_energy_calls = 0
    do i = 1, n_moves
        call move%step(state, U, dw4_callback, c_loc(n_energy_calls), accepted)
    end do
    call expect(n_energy_calls == n_moves, 'one energy call per step')
    call move%stats(n_proposed, n_accepted)
    call move%solver_stats(work)
    call expect(n_proposed == n_moves, 'one decided proposal per step')
    call expect(work%n_steps >= 20*n_proposed, 'a 20-step push-forward per proposal')
    call expect(work%n_eval > 0 .and. work%n_jacobian > 0, "the exact-discrete solver's work")
    call expect(work%n_newton > 0, 'the first current state was pulled back')
    call expect(work%n_rejected == 0, 'RK4 rejects no steps')
    call expect(abs(U - dw4_energy(state)) <= 1.0e-9_c_double*(1 + abs(U)), &
                "the tracked energy is the state's")

    ! Save and reload: the same densities, bit for bit.
    if (len(save) > 0) then
        call flow%save(save)
        call reloaded%load(save)
        call reloaded%log_density(x, log_q_reloaded)
        call expect(all(log_q_reloaded == log_q_again), 'a reloaded model is bit-exact')

        ! A file larger than any model (1 GiB + 1 byte, written sparse: one byte at its end) is
        ! refused from its size with EQF_ERR_RESOURCE, before eqflow reads it; the flow is kept.
        open (newunit=unit, file=save//'.huge', access='stream', status='replace', &
              action='write')
        write (unit, pos=1073741825) 'x'
        close (unit)
        call reloaded%load(save//'.huge', status)
        call expect(status == EQF_ERR_RESOURCE, 'a 1 GiB file is refused: EQF_ERR_RESOURCE')
        call expect(reloaded%n_particles() == N, 'a refused load keeps the flow')
        open (newunit=unit, file=save//'.huge', access='stream', status='old')
        close (unit, status='delete')
    end if

    ! Failures through `status`: a missing file (the flow is kept), objects without a handle;
    ! each is logged to the callback.
    call eqflow_set_log_callback(count_messages, c_loc(counts))
    call flow%load('/nonexistent/model.json', status)
    call expect(status == EQF_ERR_IO, 'a missing model file: EQF_ERR_IO')
    call expect(flow%n_particles() == N, 'a failed load keeps the flow')
    call expect(counts%debug == 1, 'the failure reached the log callback')
    call expect(index(counts%last, '/nonexistent/model.json') > 0, 'the message names the path')
    call empty_flow%certificate(certified, status=status)
    call expect(status == EQF_ERR_NULL_POINTER, 'the certificate of no flow: EQF_ERR_NULL_POINTER')
    call empty_flow%integrator(method=method, status=status)
    call expect(status == EQF_ERR_NULL_POINTER, 'the integrator of no flow: EQF_ERR_NULL_POINTER')
    call empty_move%solver_stats(no_work, status)
    call expect(status == EQF_ERR_NULL_POINTER, 'the solver stats of no move: EQF_ERR_NULL_POINTER')
    ! Batch calls on no flow or move say so too (they said EQF_ERR_DIMENSION_MISMATCH, from the
    ! wrapper's shape check against N = D = -1, with no message of their own).
    call empty_flow%sample(7_c_int64_t, x, log_q, status)
    call expect(status == EQF_ERR_NULL_POINTER, 'sampling no flow: EQF_ERR_NULL_POINTER')
    call empty_flow%log_density(x, log_q_again, status)
    call expect(status == EQF_ERR_NULL_POINTER, 'the density of no flow: EQF_ERR_NULL_POINTER')
    call empty_move%propose(state, U, proposal, status)
    call expect(status == EQF_ERR_NULL_POINTER, 'a proposal of no move: EQF_ERR_NULL_POINTER')
    call expect(counts%debug == 7, 'every failure was logged')
    call eqflow_set_log_callback()
    call empty_flow%certificate(certified, status=status)
    call expect(status == EQF_ERR_NULL_POINTER, 'still EQF_ERR_NULL_POINTER')
    call expect(counts%debug == 7, 'nothing is logged after the callback is removed')

    write (*, '(a, a, a, i0, a, es8.1)') 'eqflow ', eqflow_version(), ' from Fortran: RK4-', &
        n_steps, ' exact-discrete, log q agrees to ', worst
    write (*, '(a, l1, a, f8.3, a, i0, a)') 'step certificate: certified ', &
        max_contraction < 1.0_c_double, ', max contraction ', max_contraction, &
        ', certified from ', needed, ' steps'
    write (*, '(i0, a, i0, a, i0, a, i0, a)') n_accepted, ' / ', n_proposed, &
        ' flow moves accepted, ', work%n_eval, ' field evaluations, ', work%n_newton, &
        ' Newton steps'

    call move%free()
    call fine%free()
    call coarse%free()
    call reloaded%free()
    call adaptive%free()
    call flow%free()
    ! The main program's variables live in its stack frame: free what they own.
    deallocate (x, log_q, log_q_again, log_q_reloaded, step_bound, model, save, argument, &
                counts%last)
    write (*, '(a)') 'fortran_model: ok'

contains

    function command_argument(i) result(value)
        integer, intent(in) :: i
        character(len=:), allocatable :: value
        integer :: length
        call get_command_argument(i, length=length)
        allocate (character(len=length) :: value)
        call get_command_argument(i, value)
    end function command_argument

    subroutine expect(condition, what)
        logical, intent(in) :: condition
        character(len=*), intent(in) :: what
        if (.not. condition) then
            write (*, '(a, a)') 'check failed: ', what
            error stop 1
        end if
    end subroutine expect

end program fortran_model
