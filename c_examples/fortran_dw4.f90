! fortran_dw4.f90: a DW-4 Monte Carlo simulation in Fortran through the eqflow module.
!
! The host owns the state x(D, N) and its energy, computed in Fortran by a bind(C) callback
! that eqflow calls for every flow proposal; `user` points to the potential's parameters. Each
! cycle does N_LOCAL local random-walk moves (the host's own Metropolis) and one flow move
! (eqflow_move%step); every tenth cycle the flow move uses the two-phase protocol (propose,
! host energy, accept) instead. Prints acceptance rates and the populations of the states,
! labelled by the number of pairs closer than d0. Also checks the thin layer's status handling.
! Then trains the flow on the chain's states (flow%train): maximum likelihood with a progress
! callback, ML+KL with the host's energy-and-gradient callback, and a failing callback that
! leaves the flow unchanged. Finally builds a flow configured from the chain's own scales
! (eqflow_flow_options%fit_scales), as a host with its own units would.
!
! Build: gfortran -std=f2018 -fcheck=all -Wall -Werror eqflow.f90 fortran_dw4.f90 -leqflow
! Usage: fortran_dw4 [cycles]. Exit status 0 on success.
module dw4_host
    use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_int64_t, c_ptr, c_f_pointer
    use eqflow, only: eqf_train_epoch
    implicit none
    private
    public :: double_well, dw_energy, dw_callback, short_pairs, dw_gradient_callback
    public :: failing_gradient_callback, count_epochs, n_gradient_calls

    ! Calls of the gradient callback (training calls it on this thread only).
    integer, save :: n_gradient_calls = 0

    type, bind(C) :: double_well
        real(c_double) :: a, b, c, d0
    end type double_well

contains

    pure function dw_energy(p, x) result(U)
        type(double_well), intent(in) :: p
        real(c_double), intent(in) :: x(:, :)
        real(c_double) :: U, s
        integer :: i, j
        U = 0.0_c_double
        do i = 1, size(x, 2)
            do j = i + 1, size(x, 2)
                s = norm2(x(:, i) - x(:, j)) - p%d0
                U = U + p%a*s + p%b*s**2 + p%c*s**4
            end do
        end do
    end function dw_energy

    ! eqf_energy_fn: eqflow calls this for every flow proposal.
    function dw_callback(user, n_particles, dim, x, U) bind(C) result(status)
        type(c_ptr), value :: user
        integer(c_int64_t), value :: n_particles, dim
        real(c_double), intent(in) :: x(dim, n_particles)
        real(c_double), intent(out) :: U
        integer(c_int32_t) :: status
        type(double_well), pointer :: p
        call c_f_pointer(user, p)
        U = dw_energy(p, x)
        status = 0
    end function dw_callback

    ! eqf_energy_grad_fn: U and its gradient +dU/dx, the KL target of training.
    function dw_gradient_callback(user, n_particles, dim, x, U, gradient) bind(C) result(status)
        type(c_ptr), value :: user
        integer(c_int64_t), value :: n_particles, dim
        real(c_double), intent(in) :: x(dim, n_particles)
        real(c_double), intent(out) :: U
        real(c_double), intent(out) :: gradient(dim, n_particles)
        integer(c_int32_t) :: status
        type(double_well), pointer :: p
        real(c_double) :: r(dim), d, s, dudd
        integer :: i, j
        call c_f_pointer(user, p)
        n_gradient_calls = n_gradient_calls + 1
        U = dw_energy(p, x)
        gradient = 0.0_c_double
        do i = 1, int(n_particles)
            do j = i + 1, int(n_particles)
                r = x(:, i) - x(:, j)
                d = norm2(r)
                s = d - p%d0
                dudd = p%a + 2.0_c_double*p%b*s + 4.0_c_double*p%c*s**3
                gradient(:, i) = gradient(:, i) + dudd*r/d
                gradient(:, j) = gradient(:, j) - dudd*r/d
            end do
        end do
        status = 0
    end function dw_gradient_callback

    ! An eqf_energy_grad_fn whose host computes U but then reports a failure (status 3).
    function failing_gradient_callback(user, n_particles, dim, x, U, gradient) bind(C) &
            result(status)
        type(c_ptr), value :: user
        integer(c_int64_t), value :: n_particles, dim
        real(c_double), intent(in) :: x(dim, n_particles)
        real(c_double), intent(out) :: U
        real(c_double), intent(out) :: gradient(dim, n_particles)
        integer(c_int32_t) :: status
        type(double_well), pointer :: p
        call c_f_pointer(user, p)
        U = dw_energy(p, x)
        gradient = 0.0_c_double
        status = 3
    end function failing_gradient_callback

    ! eqf_train_progress_fn: counts epochs in the integer `user` points to; never stops.
    function count_epochs(user, report) bind(C) result(stop)
        type(c_ptr), value :: user
        type(eqf_train_epoch), intent(in) :: report
        integer(c_int32_t) :: stop
        integer, pointer :: n_reports
        call c_f_pointer(user, n_reports)
        n_reports = n_reports + 1
        stop = 0
        if (report%epoch + 1 /= n_reports) stop = 1
    end function count_epochs

    integer function short_pairs(x, d0)
        real(c_double), intent(in) :: x(:, :), d0
        integer :: i, j
        short_pairs = 0
        do i = 1, size(x, 2)
            do j = i + 1, size(x, 2)
                if (norm2(x(:, i) - x(:, j)) < d0) short_pairs = short_pairs + 1
            end do
        end do
    end function short_pairs

end module dw4_host

program fortran_dw4
    use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_int64_t, c_loc
    use eqflow
    use dw4_host
    implicit none

    integer, parameter :: N = 4, D = 2, N_LOCAL = 8, N_PAIRS = N*(N - 1)/2
    real(c_double), parameter :: KT = 1.0_c_double, STEP = 0.6_c_double
    type(eqflow_flow) :: flow
    type(eqflow_move) :: move
    type(eqflow_train_options) :: options
    type(eqflow_flow_options) :: flow_options
    type(eqflow_flow) :: fitted
    real(c_double) :: distance_min, distance_max, sigma, distance_max_before
    type(eqf_train_summary) :: summary
    type(double_well), target :: potential
    real(c_double) :: x(D, N), trial(D, N), proposal(D, N), samples(D, N, 1), log_q(1)
    real(c_double), allocatable :: chain(:, :, :), chain_log_q(:), chain_log_q_after(:)
    integer, target :: n_reports
    real(c_double) :: U, U_trial, r(D + 2), com(D)
    integer(c_int64_t) :: n_proposed, n_accepted
    integer(c_int32_t) :: status
    integer :: cycle, s, p, n_cycles, local_accepted, populations(0:N_PAIRS), seed_size
    integer, allocatable :: seed(:)
    character(len=32) :: argument
    logical :: accepted

    n_cycles = 500
    if (command_argument_count() >= 1) then
        call get_command_argument(1, argument)
        read (argument, *) n_cycles
    end if
    potential = double_well(0.0_c_double, -4.0_c_double, 0.9_c_double, 4.0_c_double)

    ! The host's random numbers, seeded reproducibly.
    call random_seed(size=seed_size)
    allocate (seed(seed_size))
    seed = 20240 + [(s, s=1, seed_size)]
    call random_seed(put=seed)
    deallocate (seed)

    call flow%create(N, D, 7_c_int64_t)
    call move%create(flow, KT, 2024_c_int64_t)
    ! The move keeps its own copy of the flow.
    call flow%free()

    ! The thin layer reports failures through `status` when it is present.
    call flow%create(1, D, 0_c_int64_t, status)
    call expect(status == EQF_ERR_INVALID_ARGUMENT, 'eqf_flow_new(1 particle) fails')
    call expect(len(eqflow_last_error()) > 0, 'the message is available')
    call move%accept(0.0_c_double, accepted, status)
    call expect(status == EQF_ERR_INVALID_STATE, 'accept without propose: EQF_ERR_INVALID_STATE')
    call flow%create(N, D, 7_c_int64_t)

    ! Start: a square of side 2.6 centred at (10, -5).
    x = reshape([0.0_c_double, 0.0_c_double, 2.6_c_double, 0.0_c_double, &
                 0.0_c_double, 2.6_c_double, 2.6_c_double, 2.6_c_double], [D, N])
    x(1, :) = x(1, :) + 10.0_c_double
    x(2, :) = x(2, :) - 5.0_c_double
    U = dw_energy(potential, x)
    local_accepted = 0
    populations = 0
    allocate (chain(D, N, n_cycles), chain_log_q(n_cycles), chain_log_q_after(n_cycles))

    do cycle = 1, n_cycles
        do s = 1, N_LOCAL
            call random_number(r)
            p = 1 + min(N - 1, int(r(1)*N))
            trial = x
            trial(:, p) = trial(:, p) + STEP*(2.0_c_double*r(2:D + 1) - 1.0_c_double)
            U_trial = dw_energy(potential, trial)
            if (r(D + 2) < exp(-(U_trial - U)/KT)) then
                x = trial
                U = U_trial
                local_accepted = local_accepted + 1
            end if
        end do
        com = sum(x, dim=2)/N
        if (mod(cycle, 10) == 0) then
            call move%propose(x, U, proposal)
            U_trial = dw_energy(potential, proposal)
            call move%accept(U_trial, accepted)
            if (accepted) then
                x = proposal
                U = U_trial
            end if
        else
            call move%step(x, U, dw_callback, c_loc(potential), accepted)
        end if
        call expect(all(abs(sum(x, dim=2)/N - com) < 1.0e-9_c_double), &
                    'the flow move keeps the centre of mass')
        populations(short_pairs(x, potential%d0)) = populations(short_pairs(x, potential%d0)) + 1
        chain(:, :, cycle) = x
    end do

    call move%stats(n_proposed, n_accepted)
    call expect(n_proposed == n_cycles, 'one decided proposal per cycle')
    call expect(abs(U - dw_energy(potential, x)) < 1.0e-9_c_double*(1 + abs(U)), &
                'the tracked energy is the energy of the state')
    samples(:, :, 1) = x
    call flow%log_density(samples, log_q)

    write (*, '(a, i0, a, i0, a)') 'DW-4 Monte Carlo in Fortran: ', n_cycles, ' cycles of ', &
        N_LOCAL, ' local moves + 1 flow move'
    write (*, '(a, f6.3)') 'local moves accepted: ', &
        real(local_accepted, c_double)/real(n_cycles*N_LOCAL, c_double)
    write (*, '(a, i0, a, i0)') 'flow moves accepted:  ', n_accepted, ' / ', n_proposed
    write (*, '(a, f12.6, a, f12.6)') 'final U = ', U, ', log q = ', log_q(1)
    do s = 0, N_PAIRS
        write (*, '(i3, a, f8.4)') s, ' short pairs: ', &
            real(populations(s), c_double)/real(n_cycles, c_double)
    end do

    ! Training from Fortran on the chain's states (any centre of mass).
    call options%create()
    call options%set_epochs(2)
    call options%set_batch_size(16)
    call options%set_rk4_steps(8)
    call options%set_epochs(0, status)
    call expect(status == EQF_ERR_INVALID_ARGUMENT, 'zero epochs are rejected')
    n_reports = 0
    call options%set_progress(count_epochs, c_loc(n_reports))
    call flow%log_density(chain, chain_log_q)
    call flow%train(options, chain, summary=summary)
    call expect(summary%n_epochs == 2 .and. n_reports == 2, 'two epochs, two reports')
    call expect(summary%stopped_early == 0, 'not stopped early')
    call flow%log_density(chain, chain_log_q_after)
    call expect(any(chain_log_q_after /= chain_log_q), 'training changed the flow')

    call options%set_lambda_linear(1.0_c_double, 0.5_c_double)
    call options%set_kl_samples(4)
    call options%set_kl_energy_fn(dw_gradient_callback, c_loc(potential))
    n_reports = 0
    call flow%train(options, chain, chain, summary)
    call expect(n_gradient_calls == 4*(summary%n_steps/2), 'one call per KL sample of epoch 2')
    call expect(summary%best_validation_nll == summary%best_validation_nll, 'a validation NLL')

    ! A failing callback: EQF_ERR_CALLBACK, the flow unchanged.
    call flow%log_density(chain, chain_log_q)
    call options%set_lambda(0.5_c_double)
    call options%set_kl_energy_fn(failing_gradient_callback, c_loc(potential))
    call flow%train(options, chain, status=status)
    call expect(status == EQF_ERR_CALLBACK, 'a failing KL callback: EQF_ERR_CALLBACK')
    call flow%log_density(chain, chain_log_q_after)
    call expect(all(chain_log_q_after == chain_log_q), 'a failed training changes nothing')
    call flow%save('/nonexistent-dir/model.json', status)
    call expect(status == EQF_ERR_IO, 'saving to a missing directory: EQF_ERR_IO')
    write (*, '(a, i0, a, f10.4)') 'trained on the chain: ', n_gradient_calls, &
        ' KL energy calls, best validation NLL ', summary%best_validation_nll

    ! A flow with scales fitted to the chain (the host's own configurations).
    call flow_options%create()
    call flow_options%fit_scales(chain)
    call flow_options%scales(distance_min, distance_max, sigma)
    call expect(distance_min >= 0.0_c_double .and. distance_max > 4.0_c_double .and. &
                distance_max < 12.0_c_double .and. sigma > 0.5_c_double, 'fitted DW-4 scales')
    distance_max_before = distance_max
    call flow_options%set_prior_sigma(-1.0_c_double, status)
    call expect(status == EQF_ERR_INVALID_ARGUMENT, 'a negative sigma is rejected')
    call flow_options%set_family('graph', status)
    call expect(status == EQF_ERR_INVALID_ARGUMENT, 'an unknown family is rejected')
    call flow_options%scales(distance_min, distance_max, sigma)
    call expect(distance_max == distance_max_before, 'rejected settings change nothing')
    call flow_options%set_kernel_counts(30, 8)
    call flow_options%set_integrator(EQF_METHOD_RK4, 10, 0.0_c_double, 0.0_c_double, &
                                     EQF_DENSITY_EXACT_DISCRETE)
    call flow_options%set_seed(5_c_int64_t)
    call fitted%create_with_options(N, D, flow_options)
    call fitted%log_density(chain, chain_log_q)
    call expect(all(abs(chain_log_q) < huge(1.0_c_double)), 'the fitted flow evaluates the chain')
    write (*, '(a, f7.3, a, f7.3, a, f7.3)') 'fitted distance range ', distance_min, ' to ', &
        distance_max, ', prior sigma ', sigma
    call fitted%free()
    call flow_options%free()

    call options%free()
    call move%free()
    call flow%free()
    deallocate (chain, chain_log_q, chain_log_q_after)
    write (*, '(a)') 'fortran_dw4: ok'

contains

    subroutine expect(condition, what)
        logical, intent(in) :: condition
        character(len=*), intent(in) :: what
        if (.not. condition) then
            write (*, '(a, a)') 'check failed: ', what
            error stop 1
        end if
    end subroutine expect

end program fortran_dw4
