! fortran_own_system.f90: "bring your own system" -- a Fortran host with its own particles,
! units and energy builds, trains and uses a flow move through the eqflow module.
!
! The system is the host's, not a built-in benchmark: 7 argon atoms in nm and kJ/mol
! (Lennard-Jones sigma = 0.3405 nm, epsilon = 0.996 kJ/mol) held together by a weak harmonic
! tether to their centre of mass, at 30 K (kT = 0.2494 kJ/mol). The energy and its gradient are
! Fortran functions behind bind(C) callbacks.
!
! 1. The host runs its own Metropolis Monte Carlo and keeps a trajectory (every THIN-th sweep).
! 2. A flow is configured from that trajectory (eqflow_flow_options%fit_scales: the distance
!    range of its pair kernels and the prior's sigma, in nm), so nothing about the units is
!    typed in by hand.
! 3. The flow is trained from Fortran: maximum likelihood on the trajectory, then a short ML+KL
!    phase whose KL term calls the host's energy-and-gradient callback.
! 4. Flow moves (eqflow_move%step with the host's energy callback) alternate with local moves.
!    Checks that can fail: the fitted scales are in nm, training raised the validation
!    log-likelihood, the trained flow's moves are accepted far more often than those of the
!    default flow (eqf_flow_new, whose kernels assume distances of order 1 to 8), every
!    accepted state has the energy the host computes, and the centre of mass is conserved.
!
! Build: gfortran -std=f2018 -fcheck=all -Wall -Werror eqflow.f90 fortran_own_system.f90 -leqflow
! Usage: fortran_own_system [--quick]   (--quick: tiny sizes for valgrind; skips the quality
! checks). Exit status 0 on success.
module argon_host
    use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_int64_t, c_ptr, c_f_pointer
    implicit none
    private
    public :: cluster, cluster_energy, cluster_callback, cluster_gradient_callback

    ! The host's force field: LJ sigma (nm), epsilon (kJ/mol), tether k (kJ/mol/nm^2).
    type, bind(C) :: cluster
        real(c_double) :: sigma, epsilon, k_tether
    end type cluster

contains

    ! U(x) in kJ/mol for x(3, N) in nm; +dU/dx into `gradient` if present.
    pure subroutine cluster_energy(p, x, U, gradient)
        type(cluster), intent(in) :: p
        real(c_double), intent(in) :: x(:, :)
        real(c_double), intent(out) :: U
        real(c_double), intent(out), optional :: gradient(:, :)
        real(c_double) :: r(size(x, 1)), com(size(x, 1)), d2, s6, dudd2
        integer :: i, j, n
        n = size(x, 2)
        U = 0.0_c_double
        if (present(gradient)) gradient = 0.0_c_double
        do i = 1, n
            do j = i + 1, n
                r = x(:, i) - x(:, j)
                d2 = sum(r**2)
                s6 = (p%sigma**2/d2)**3
                U = U + 4.0_c_double*p%epsilon*(s6*s6 - s6)
                if (present(gradient)) then
                    ! dU/d(d^2) of 4 eps (s^12 - s^6).
                    dudd2 = -4.0_c_double*p%epsilon*(6.0_c_double*s6*s6 - 3.0_c_double*s6)/d2
                    gradient(:, i) = gradient(:, i) + 2.0_c_double*dudd2*r
                    gradient(:, j) = gradient(:, j) - 2.0_c_double*dudd2*r
                end if
            end do
        end do
        com = sum(x, dim=2)/n
        do i = 1, n
            U = U + 0.5_c_double*p%k_tether*sum((x(:, i) - com)**2)
            if (present(gradient)) gradient(:, i) = gradient(:, i) + p%k_tether*(x(:, i) - com)
        end do
    end subroutine cluster_energy

    ! eqf_energy_fn: eqflow calls this for every flow proposal; `user` is the force field.
    function cluster_callback(user, n_particles, dim, x, U) bind(C) result(status)
        type(c_ptr), value :: user
        integer(c_int64_t), value :: n_particles, dim
        real(c_double), intent(in) :: x(dim, n_particles)
        real(c_double), intent(out) :: U
        integer(c_int32_t) :: status
        type(cluster), pointer :: p
        call c_f_pointer(user, p)
        call cluster_energy(p, x, U)
        status = 0
    end function cluster_callback

    ! eqf_energy_grad_fn: U and +dU/dx, the KL target of training.
    function cluster_gradient_callback(user, n_particles, dim, x, U, gradient) bind(C) &
            result(status)
        type(c_ptr), value :: user
        integer(c_int64_t), value :: n_particles, dim
        real(c_double), intent(in) :: x(dim, n_particles)
        real(c_double), intent(out) :: U
        real(c_double), intent(out) :: gradient(dim, n_particles)
        integer(c_int32_t) :: status
        type(cluster), pointer :: p
        call c_f_pointer(user, p)
        call cluster_energy(p, x, U, gradient)
        status = 0
    end function cluster_gradient_callback

end module argon_host

program fortran_own_system
    use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_int64_t, c_loc
    use eqflow
    use argon_host
    implicit none

    integer, parameter :: N = 7, D = 3
    ! kT at 30 K in kJ/mol (k_B = 0.0083144626 kJ/mol/K).
    real(c_double), parameter :: KT = 0.0083144626_c_double*30.0_c_double
    real(c_double), parameter :: STEP = 0.02_c_double
    type(cluster), target :: field
    type(eqflow_flow_options) :: flow_options
    type(eqflow_flow) :: flow, default_flow
    type(eqflow_train_options) :: options
    type(eqf_train_summary) :: summary
    real(c_double), allocatable :: trajectory(:, :, :), train(:, :, :), validation(:, :, :)
    real(c_double), allocatable :: log_q_before(:), log_q_after(:)
    real(c_double) :: x(D, N), distance_min, distance_max, sigma, U, nll_before, nll_after
    real(c_double) :: acceptance_default, acceptance_trained
    integer :: n_frames, thin, n_epochs, n_moves, seed_size, s
    integer, allocatable :: seed(:)
    character(len=32) :: argument
    logical :: quick

    quick = .false.
    if (command_argument_count() >= 1) then
        call get_command_argument(1, argument)
        quick = trim(argument) == '--quick'
    end if
    n_frames = merge(16, 600, quick)
    thin = merge(2, 20, quick)
    n_epochs = merge(1, 25, quick)
    n_moves = merge(4, 400, quick)
    field = cluster(0.3405_c_double, 0.996_c_double, 2.0_c_double)

    call random_seed(size=seed_size)
    allocate (seed(seed_size))
    seed = 7310 + [(s, s=1, seed_size)]
    call random_seed(put=seed)
    deallocate (seed)

    ! 1. The host's own trajectory, started from a compact random cluster and equilibrated.
    call random_number(x)
    x = 0.4_c_double*x
    call cluster_energy(field, x, U)
    call local_sweeps(x, U, 200)
    allocate (trajectory(D, N, n_frames))
    do s = 1, n_frames
        call local_sweeps(x, U, thin)
        trajectory(:, :, s) = x
    end do
    train = trajectory(:, :, 1:n_frames*3/4)
    validation = trajectory(:, :, n_frames*3/4 + 1:)

    ! 2. A flow whose scales come from that trajectory.
    call flow_options%create()
    call flow_options%fit_scales(trajectory)
    call flow_options%scales(distance_min, distance_max, sigma)
    write (*, '(a, f7.4, a, f7.4, a, f7.4, a)') 'fitted pair-distance range ', distance_min, &
        ' to ', distance_max, ' nm, prior sigma ', sigma, ' nm'
    call expect(distance_max > 0.3_c_double .and. distance_max < 2.0_c_double, &
                'the fitted range is in nm (argon neighbours sit 0.38 nm apart)')
    call expect(sigma > 0.01_c_double .and. sigma < 1.0_c_double, 'the fitted sigma is in nm')
    call flow_options%set_seed(11_c_int64_t)
    call flow%create_with_options(N, D, flow_options)
    call flow_options%free()

    ! 3. Training from Fortran: ML, then ML+KL with the host's energy and gradient.
    allocate (log_q_before(size(validation, 3)), log_q_after(size(validation, 3)))
    call flow%log_density(validation, log_q_before)
    call options%create()
    call options%set_epochs(n_epochs)
    call options%set_batch_size(32)
    call options%set_kT(KT)
    call flow%train(options, train, validation, summary)
    call options%set_epochs(max(1, n_epochs/5))
    call options%set_lambda_linear(1.0_c_double, 0.8_c_double)
    call options%set_kl_samples(16)
    call options%set_kl_energy_fn(cluster_gradient_callback, c_loc(field))
    call flow%train(options, train, validation, summary)
    call options%free()
    call flow%log_density(validation, log_q_after)
    nll_before = -sum(log_q_before)/size(log_q_before)
    nll_after = -sum(log_q_after)/size(log_q_after)
    write (*, '(a, f9.3, a, f9.3)') 'validation NLL: untrained ', nll_before, ', trained ', &
        nll_after

    ! 4. Flow moves with the host's energy: the default flow against the trained one.
    call default_flow%create(N, D, 11_c_int64_t)
    acceptance_default = move_acceptance(default_flow)
    acceptance_trained = move_acceptance(flow)
    write (*, '(a, f6.3, a, f6.3)') 'flow moves accepted: default flow ', acceptance_default, &
        ', flow fitted and trained on the host''s trajectory ', acceptance_trained
    if (.not. quick) then
        call expect(nll_after < nll_before - 5.0_c_double, 'training raised the likelihood')
        call expect(acceptance_trained >= 0.01_c_double, 'the trained flow''s moves are accepted')
        call expect(acceptance_trained > 5.0_c_double*acceptance_default + 0.01_c_double, &
                    'the trained flow beats the default flow')
    end if
    call default_flow%free()
    call flow%free()
    deallocate (trajectory, train, validation, log_q_before, log_q_after)
    write (*, '(a)') 'fortran_own_system: ok'

contains

    ! `sweeps` sweeps of single-atom random-walk Metropolis moves on (x, U).
    subroutine local_sweeps(x, U, sweeps)
        real(c_double), intent(inout) :: x(:, :), U
        integer, intent(in) :: sweeps
        real(c_double) :: trial(D, N), r(D + 1), U_trial
        integer :: sweep, p
        do sweep = 1, sweeps
            do p = 1, N
                call random_number(r)
                trial = x
                trial(:, p) = trial(:, p) + STEP*(2.0_c_double*r(1:D) - 1.0_c_double)
                call cluster_energy(field, trial, U_trial)
                if (r(D + 1) < exp(-(U_trial - U)/KT)) then
                    x = trial
                    U = U_trial
                end if
            end do
        end do
    end subroutine local_sweeps

    ! The fraction of `n_moves` flow moves accepted from the last trajectory frame, with a
    ! sweep of local moves between them; checks the tracked energy and the centre of mass.
    function move_acceptance(proposer) result(rate)
        type(eqflow_flow), intent(in) :: proposer
        real(c_double) :: rate, state(D, N), U_state, U_check, com(D)
        type(eqflow_move) :: move
        integer(c_int64_t) :: n_proposed, n_accepted
        logical :: accepted
        integer :: m
        call move%create(proposer, KT, 99_c_int64_t)
        state = trajectory(:, :, n_frames)
        call cluster_energy(field, state, U_state)
        do m = 1, n_moves
            call local_sweeps(state, U_state, 1)
            com = sum(state, dim=2)/N
            call move%step(state, U_state, cluster_callback, c_loc(field), accepted)
            call cluster_energy(field, state, U_check)
            call expect(abs(U_check - U_state) < 1.0e-9_c_double*(1.0_c_double + abs(U_state)), &
                        'the tracked energy is the energy of the state')
            call expect(all(abs(sum(state, dim=2)/N - com) < 1.0e-9_c_double), &
                        'the flow move keeps the centre of mass')
        end do
        call move%stats(n_proposed, n_accepted)
        call expect(n_proposed == n_moves, 'one decided proposal per move')
        rate = real(n_accepted, c_double)/real(n_proposed, c_double)
        call move%free()
    end function move_acceptance

    subroutine expect(condition, what)
        logical, intent(in) :: condition
        character(len=*), intent(in) :: what
        if (.not. condition) then
            write (*, '(a, a)') 'check failed: ', what
            error stop 1
        end if
    end subroutine expect

end program fortran_own_system
