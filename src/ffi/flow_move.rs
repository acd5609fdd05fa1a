//! The Boltzmann-generator Monte Carlo move behind an opaque `eqf_move` handle.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use crate::Error;
use crate::flow_move::FlowMove;

use super::flow::eqf_flow;
use super::{
    Region, catch, check_disjoint, check_not_null, check_output, free_handle, handle, input_array,
    write_handle, write_output,
};

/// An energy callback supplied by the host: writes U(x) of one configuration into `*U` and
/// returns 0, or returns any non-zero value to report failure (eqflow then fails with
/// EQF_ERR_CALLBACK and changes nothing).
///
/// `x` holds `n_particles * dim` doubles, particle-major (`x[i*dim + k]`, C `double x[N][D]`,
/// Fortran `x(D, N)`), and is valid only during the call. `*U` is in the same energy units as
/// the kT of the move; +infinity is a valid energy (always rejected), NaN and -infinity are
/// errors (EQF_ERR_NON_FINITE). `user` is passed through unchanged from `eqf_move_step`.
///
/// The callback runs on the thread that called `eqf_move_step`. It must not use the same move
/// (it may use flows, energies and other moves: a call on the same move from the callback
/// fails with EQF_ERR_INVALID_STATE and does nothing), and must not unwind through eqflow (no C++
/// exception, no longjmp): catch exceptions in the callback and return non-zero instead.
#[allow(non_camel_case_types, non_snake_case)]
pub type eqf_energy_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        U: *mut f64,
    ) -> i32,
>;

/// A Boltzmann-generator Monte Carlo move (opaque): independence Metropolis–Hastings with a flow
/// as the proposal.
///
/// From the current state x with energy U(x), the move proposes x' = F(z) + c(x), a flow sample
/// translated to the centre of mass c(x) of the current state (the move never changes the
/// centre of mass), and accepts it with probability min(1, exp(log w(x') - log w(x))), where
/// `log w = -U/kT - log q`. In the flow's default density mode (exact-discrete) log q of a
/// proposal and of the same configuration evaluated later agree to round-off, so the chain
/// samples exp(-U/kT) exactly.
///
/// Particle labels of a proposal are arbitrary: the flow is permutation equivariant, so
/// particle i of x' has no relation to particle i of x. Hosts that track particle identity must
/// not rely on labels surviving an accepted flow move.
///
/// A move keeps its own copy of the flow (freeing the flow first is safe), a cache of log q of
/// the current state (recomputed only when the coordinates differ, bit for bit, from the last
/// ones it saw), and acceptance statistics. A move belongs to one thread at a time; give each
/// thread (chain) its own move. A call on a move that another thread's call is using fails
/// with EQF_ERR_INVALID_STATE and does nothing (it does not wait, and nothing races); only
/// `eqf_move_free` cannot be guarded so: never free a move another thread may be using.
/// Created by `eqf_move_new`, released with `eqf_move_free`.
#[allow(non_camel_case_types)]
pub struct eqf_move {
    /// Held by each call for its duration: a second thread's call finds it taken.
    state: Mutex<MoveState>,
}

/// What an `eqf_move` holds.
struct MoveState {
    inner: FlowMove,
    /// The host's coordinates during `eqf_move_step`, reused to avoid an allocation per step.
    buffer: Vec<f64>,
}

/// Creates a Monte Carlo move that proposes from `flow` at temperature `kT`.
///
/// The random stream of proposal number k (counting decided proposals) is derived from
/// (`seed`, k): same flow, seed and sequence of calls, same chain, bit for bit, on any machine
/// and thread count. A failed call does not advance the stream, so it can be retried
/// identically. Give independent chains different seeds.
///
/// @param flow  the proposal flow (not NULL); the move keeps its own copy, so the flow may be
///              freed before the move. Its integrator and density mode are those of the move
///              (see `eqf_flow_with_integrator`)
/// @param kT    temperature in the energy units of U (> 0, finite)
/// @param seed  seed of the move's random streams
/// @param out   on success receives the new move, to be released with `eqf_move_free`;
///              untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (kT not positive and finite);
///         EQF_ERR_RESOURCE (the flow's exact-discrete workspace would exceed
///         EQF_MAX_WORKSPACE_BYTES, or memory is refused)
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_move_new(
    flow: *const eqf_flow,
    kT: f64,
    seed: u64,
    out: *mut *mut eqf_move,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?.flow();
        check_not_null(out, "out")?;
        let inner = FlowMove::new(Arc::new(flow.clone()), kT, seed)?;
        let buffer = vec![0.0; flow.layout().len()];
        let state = Mutex::new(MoveState { inner, buffer });
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract); it is written only now that the move exists.
        unsafe { write_handle(out, eqf_move { state }) };
        Ok(())
    })
}

/// Phase one of the two-phase protocol: proposes a new configuration from the current state.
///
/// The host passes its current configuration and energy; eqflow writes the proposal x' (same
/// layout, same centre of mass, arbitrary particle labels) into `x_proposed`. The host then
/// evaluates U(x') and calls `eqf_move_accept`; if that reports acceptance, the host copies
/// `x_proposed` into its state (bit for bit, so that the next move reuses the cached log q).
///
/// Calling `eqf_move_propose` again before `eqf_move_accept` replaces the pending proposal (by
/// the same proposal, translated to the new current centre of mass: the random stream advances
/// only when a proposal is decided).
///
/// Layout: N*D doubles, `x[i*D + k]` (C `double x[N][D]`, Fortran `x(D, N)`).
///
/// @param move        the move (not NULL)
/// @param x_current   input, N*D finite doubles: the current configuration (any centre of mass)
/// @param U_current   its energy (+infinity allowed; NaN and -infinity are errors)
/// @param x_proposed  output, N*D doubles, distinct from x_current; written only on success
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (x_proposed shares memory
///         with x_current); EQF_ERR_NON_FINITE (NaN or infinite coordinates, U NaN or
///         -infinity, non-finite log q); EQF_ERR_NOT_CONVERGED or EQF_ERR_NOT_INVERTIBLE
///         (the flow cannot evaluate the current state or produce a proposal);
///         EQF_ERR_UNCERTIFIED (strict mode, the default, and the flow's RK4 grid is not
///         certified one-to-one: `eqf_flow_with_require_certificate`). On failure the
///         move is unchanged (including its random stream, statistics and pending proposal)
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_move_propose(
    r#move: *mut eqf_move,
    x_current: *const f64,
    U_current: f64,
    x_proposed: *mut f64,
) -> i32 {
    catch(|| {
        // SAFETY: `move` is NULL (rejected) or a live handle from `eqf_move_new`, not freed
        // during the call (this function's contract); another thread's call is refused.
        let mut mv = unsafe { lock_move(r#move) }?;
        let len = mv.buffer.len();
        check_output(x_proposed, len, "x_proposed")?;
        check_disjoint(&[
            Region::of(x_current, len, "x_current"),
            Region::of(x_proposed, len, "x_proposed"),
        ])?;
        // SAFETY: `x_current` is NULL (rejected) or points to N*D doubles that the caller does
        // not modify during the call (this function's contract).
        let x = unsafe { input_array(x_current, len, "x_current") }?;
        let proposal = mv.inner.propose(x, U_current)?;
        // SAFETY: `x_proposed` was checked (non-NULL, aligned) for N*D doubles and is writable
        // for N*D doubles (this function's contract); `proposal` is the move's own buffer.
        unsafe { write_output(x_proposed, proposal) };
        Ok(())
    })
}

/// Phase two of the two-phase protocol: decides the pending proposal given its energy.
///
/// Accepts with probability min(1, exp(log w(x') - log w(x))), `log w = -U/kT - log q`. A
/// proposal with `U_proposed = +infinity` is always rejected; if the current state had
/// `U_current = +infinity` (weight 0, log w = -infinity), any proposal with finite energy is
/// accepted. Either way the proposal is no longer pending and the statistics count it. The
/// test is evaluated in log space and stays correct at any positive kT: where U/kT overflows
/// (kT = 1e-300, 5e-324) a proposal of lower energy is accepted and one of higher energy
/// rejected.
///
/// @param move        the move (not NULL)
/// @param U_proposed  the energy of the configuration written by `eqf_move_propose`
/// @param accepted    output: 1 if accepted (copy x_proposed into your state), 0 if rejected
///                    (keep x_current); written only on success
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_STATE (no proposal is pending);
///         EQF_ERR_NON_FINITE (U_proposed is NaN or -infinity; the proposal stays pending and
///         nothing changes)
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_move_accept(
    r#move: *mut eqf_move,
    U_proposed: f64,
    accepted: *mut i32,
) -> i32 {
    catch(|| {
        // SAFETY: `move` is NULL (rejected) or a live handle from `eqf_move_new`, not freed
        // during the call (this function's contract); another thread's call is refused.
        let mut mv = unsafe { lock_move(r#move) }?;
        check_not_null(accepted, "accepted")?;
        let decision = mv.inner.accept(U_proposed)?;
        // SAFETY: `accepted` is non-NULL (checked above) and valid for one write (this
        // function's contract).
        unsafe { accepted.write(i32::from(decision)) };
        Ok(())
    })
}

/// One complete move: proposes from (x, U), calls `energy` once for the proposal, and decides.
///
/// On acceptance `x` and `*U` are overwritten with the proposal and its energy; on rejection
/// they are left as they were. Equivalent to `eqf_move_propose`, the energy, and
/// `eqf_move_accept`, and produces the same chain; a pending proposal of `eqf_move_propose` is
/// discarded.
///
/// @param move      the move (not NULL)
/// @param x         input/output, N*D finite doubles (`x[i*D + k]`, Fortran `x(D, N)`)
/// @param U         input/output, the energy of x (+infinity allowed)
/// @param energy    the host's energy function (not NULL), called exactly once per successful
///                  step, on the thread of the caller
/// @param user      passed unchanged to `energy`
/// @param accepted  output: 1 if accepted, 0 if rejected; written only on success
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (two of x, U and accepted
///         share memory); EQF_ERR_CALLBACK (energy returned non-zero);
///         EQF_ERR_NON_FINITE (NaN or infinite coordinates, an energy that is NaN or
///         -infinity, non-finite log q); EQF_ERR_NOT_CONVERGED or EQF_ERR_NOT_INVERTIBLE (the
///         flow cannot evaluate the current state or produce a proposal); EQF_ERR_UNCERTIFIED
///         (strict mode, the default, with an uncertified RK4 grid). On failure x, U,
///         accepted and the move (random stream and statistics included) are unchanged, so the
///         step can be retried and gives the same proposal
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_move_step(
    r#move: *mut eqf_move,
    x: *mut f64,
    U: *mut f64,
    energy: eqf_energy_fn,
    user: *mut c_void,
    accepted: *mut i32,
) -> i32 {
    catch(|| {
        // SAFETY: `move` is NULL (rejected) or a live handle from `eqf_move_new`, not freed
        // during the call (this function's contract); another thread's call is refused.
        let mut guard = unsafe { lock_move(r#move) }?;
        let mv = &mut *guard;
        // Until the step returns, the energy callback must not use this move: marked here.
        let _stepping = Stepping::enter(r#move);
        let len = mv.buffer.len();
        check_not_null(U, "U")?;
        check_not_null(accepted, "accepted")?;
        let Some(energy) = energy else {
            return Err(Error::NullPointer {
                what: "energy".to_owned(),
            });
        };
        check_output(x, len, "x")?;
        check_disjoint(&[
            Region::of(x, len, "x"),
            Region::of(U, 1, "U"),
            Region::of(accepted, 1, "accepted"),
        ])?;
        // SAFETY: `x` is non-NULL and aligned (checked above) and points to N*D doubles (this
        // function's contract); the borrow ends with the copy.
        mv.buffer
            .copy_from_slice(unsafe { input_array(x, len, "x") }?);
        // SAFETY: `U` is non-NULL (checked above) and points to a readable double.
        let mut u = unsafe { U.read() };
        let (n_particles, dim) = (mv.inner.flow().n_particles(), mv.inner.flow().dim());
        let (n_particles, dim) = (n_particles as i64, dim as i64);
        let decision = mv.inner.step(&mut mv.buffer, &mut u, |proposal| {
            let mut value = f64::NAN;
            // In a message slot of its own: the callback may itself run eqflow calls with
            // callbacks (another move's step), whose messages must not replace its own.
            let (status, message) = super::callback_error::run_host_callback(|| {
                // SAFETY: `energy` and `user` come from the host, which guarantees that
                // `energy` accepts `user` and reads N*D doubles from `x`; `proposal` holds N*D
                // doubles and `value` is a live local double.
                unsafe { energy(user, n_particles, dim, proposal.as_ptr(), &raw mut value) }
            });
            if status == 0 {
                Ok(value)
            } else {
                Err(Error::Callback {
                    what: super::callback_error::annotate(
                        format!("the energy callback returned {status}"),
                        message,
                    ),
                })
            }
        })?;
        if decision {
            // SAFETY: `x` and `U` were checked non-NULL (and `x` aligned) for N*D doubles and
            // one double, writable (this function's contract); `buffer` is the move's own.
            unsafe {
                write_output(x, &mv.buffer);
                U.write(u);
            }
        }
        // SAFETY: `accepted` is non-NULL (checked above) and valid for one write.
        unsafe { accepted.write(i32::from(decision)) };
        Ok(())
    })
}

/// Reports how many proposals the move has decided and how many it accepted. The acceptance
/// rate is `n_accepted / n_proposed`. A proposal replaced by a new `eqf_move_propose` before
/// it was decided, and a failed call, count for nothing.
///
/// @param move        the move (not NULL)
/// @param n_proposed  output, number of decided proposals
/// @param n_accepted  output, number of accepted proposals
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (the outputs share memory)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_move_stats(
    r#move: *const eqf_move,
    n_proposed: *mut i64,
    n_accepted: *mut i64,
) -> i32 {
    catch(|| {
        // SAFETY: `move` is NULL (rejected) or a live handle from `eqf_move_new`, not freed
        // during the call (this function's contract); another thread's call is refused.
        let mv = unsafe { lock_move(r#move) }?;
        check_not_null(n_proposed, "n_proposed")?;
        check_not_null(n_accepted, "n_accepted")?;
        check_disjoint(&[
            Region::of(n_proposed, 1, "n_proposed"),
            Region::of(n_accepted, 1, "n_accepted"),
        ])?;
        let stats = mv.inner.stats();
        // SAFETY: both pointers are non-NULL (checked above) and valid for one write each
        // (this function's contract).
        unsafe {
            n_proposed.write(i64::try_from(stats.n_proposed).unwrap_or(i64::MAX));
            n_accepted.write(i64::try_from(stats.n_accepted).unwrap_or(i64::MAX));
        }
        Ok(())
    })
}

/// The work of the solvers behind a move, summed over its decided proposals: what a host
/// reads to see what its flow moves cost (and, with `n_newton`, how hard the exact-discrete
/// inverse worked on the states its chain visited).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct eqf_solver_stats {
    /// Evaluations of the field (each with its divergence).
    pub n_eval: i64,
    /// Evaluations of the field's Jacobian (exact-discrete mode).
    pub n_jacobian: i64,
    /// Integration steps taken.
    pub n_steps: i64,
    /// Rejected steps (adaptive Dormand–Prince).
    pub n_rejected: i64,
    /// Full step Jacobians evaluated while inverting (exact-discrete inverse).
    pub n_newton: i64,
    /// Inverted steps whose log-determinant took the first-order correction.
    pub n_corrected: i64,
}

impl From<crate::integrate::Stats> for eqf_solver_stats {
    fn from(s: crate::integrate::Stats) -> Self {
        let c = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        eqf_solver_stats {
            n_eval: c(s.n_eval),
            n_jacobian: c(s.n_jacobian),
            n_steps: c(s.n_steps),
            n_rejected: c(s.n_rejected),
            n_newton: c(s.n_newton),
            n_corrected: c(s.n_corrected),
        }
    }
}

/// Reports the solver work of the move's decided proposals (push-forwards of the proposals
/// and pull-backs of current states that were not cached); failed calls count for nothing.
///
/// @param move   the move (not NULL)
/// @param stats  output (not NULL)
/// @return EQF_OK; EQF_ERR_NULL_POINTER
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_move_solver_stats(
    r#move: *const eqf_move,
    stats: *mut eqf_solver_stats,
) -> i32 {
    catch(|| {
        // SAFETY: `move` is NULL (rejected) or a live handle from `eqf_move_new`, not freed
        // during the call (this function's contract); another thread's call is refused.
        let mv = unsafe { lock_move(r#move) }?;
        check_not_null(stats, "stats")?;
        let value = eqf_solver_stats::from(mv.inner.stats().solver);
        // SAFETY: `stats` is non-NULL (checked above) and valid for one write (this
        // function's contract).
        unsafe { stats.write(value) };
        Ok(())
    })
}

/// Releases a move created by `eqf_move_new`. NULL is accepted and does nothing. The flow the
/// move was created from is not affected. A move that a call on another thread is using at
/// this moment, or whose step is running the callback that asks, is not freed (a call that
/// *starts* after the free cannot be detected: the host must order them).
///
/// @return EQF_OK; EQF_ERR_INVALID_STATE (a call is using the move; nothing was freed)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_move_free(r#move: *mut eqf_move) -> i32 {
    // Freeing a move from its own step's callback would pull it from under the step.
    if stepping(r#move) {
        return catch(|| Err(stepping_error()));
    }
    // SAFETY: `move` is NULL or a handle from `eqf_move_new` not freed yet (this function's
    // contract); its state is only reached through the lock.
    if let Some(live) = unsafe { r#move.as_ref() }
        && matches!(live.state.try_lock(), Err(TryLockError::WouldBlock))
    {
        return catch(|| {
            Err(Error::InvalidState {
                what: "the move is in use by a call on another thread; it was not freed: free \
                       it once that call has returned"
                    .to_owned(),
            })
        });
    }
    // SAFETY: `move` is NULL or a handle from `eqf_move_new` not freed yet (this function's
    // contract).
    unsafe { free_handle(r#move) }
}

thread_local! {
    /// The moves whose `eqf_move_step` runs on this thread, by address: their energy callback
    /// runs inside the step, holding the move, and must not use it.
    static STEPPING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Whether `move` is inside `eqf_move_step` on this thread (compared by address only: the
/// move itself is not touched, as the step holds it).
fn stepping(r#move: *const eqf_move) -> bool {
    STEPPING
        .try_with(|s| s.borrow().contains(&r#move.addr()))
        .unwrap_or(false)
}

fn stepping_error() -> Error {
    Error::InvalidState {
        what: "the move is inside its own eqf_move_step on this thread (called from the step's \
               energy callback, which must not use the same move); nothing was done"
            .to_owned(),
    }
}

/// Marks a move as inside `eqf_move_step` until dropped (also when the step fails).
struct Stepping(usize);

impl Stepping {
    fn enter(r#move: *const eqf_move) -> Self {
        let address = r#move.addr();
        let _ = STEPPING.try_with(|s| s.borrow_mut().push(address));
        Stepping(address)
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        let _ = STEPPING.try_with(|s| {
            let mut s = s.borrow_mut();
            if let Some(i) = s.iter().rposition(|a| *a == self.0) {
                s.remove(i);
            }
        });
    }
}

/// Takes a move for a call, refusing one inside its own step on this thread (its energy
/// callback) and one that another thread's call holds. Never waits: a host that shares a move
/// between threads gets an error, not a stall or a race.
///
/// # Safety
/// As [`handle`]: `move` is NULL or a live move (not freed during the call).
unsafe fn lock_move<'a>(r#move: *const eqf_move) -> crate::Result<MutexGuard<'a, MoveState>> {
    if stepping(r#move) {
        return Err(stepping_error());
    }
    // SAFETY: forwarded contract of this function; the move is only ever shared, its state
    // is reached through the lock.
    let mv = unsafe { handle(r#move, "move") }?;
    match mv.state.try_lock() {
        Ok(state) => Ok(state),
        // A panic inside an earlier call (caught by `catch`, reported as EQF_ERR_INTERNAL)
        // marks the lock; the state is what that call left, as it was before the lock existed.
        Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Error::InvalidState {
            what: "the move is in use by a call on another thread (a move belongs to one \
                   thread at a time: give each thread its own); nothing was done"
                .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::{DoubleWell, Energy};
    use crate::ffi::flow::{eqf_flow_free, eqf_flow_new};
    use crate::ffi::{
        EQF_ERR_CALLBACK, EQF_ERR_INVALID_ARGUMENT, EQF_ERR_INVALID_STATE, EQF_ERR_NON_FINITE,
        EQF_ERR_NULL_POINTER, EQF_OK,
    };

    /// DW-4 energy for the callback; `user` points to a `DoubleWell`.
    unsafe extern "C" fn dw4(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        u: *mut f64,
    ) -> i32 {
        // SAFETY: the tests pass a live `DoubleWell` as `user`, and eqflow passes N*D doubles
        // and a writable double.
        unsafe {
            let energy = &*user.cast::<DoubleWell>();
            let x = std::slice::from_raw_parts(x, (n_particles * dim) as usize);
            u.write(energy.energy(x));
        }
        0
    }

    unsafe extern "C" fn failing(
        _: *mut c_void,
        _: i64,
        _: i64,
        _: *const f64,
        _: *mut f64,
    ) -> i32 {
        -3
    }

    unsafe extern "C" fn nan(_: *mut c_void, _: i64, _: i64, _: *const f64, u: *mut f64) -> i32 {
        // SAFETY: eqflow passes a writable double.
        unsafe { u.write(f64::NAN) };
        0
    }

    /// What the re-entrant callback below tried, and the statuses it got.
    struct Reentry {
        mv: *mut eqf_move,
        statuses: Vec<i32>,
    }

    /// A DW-4 energy that first calls every move function on its own move (`user` points to a
    /// `Reentry`), which the step holds: each must be refused, touching nothing.
    unsafe extern "C" fn reentrant(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        u: *mut f64,
    ) -> i32 {
        // SAFETY: the test passes a live `Reentry`; eqflow passes N*D doubles and a writable
        // double; the move functions get valid buffers of the right sizes.
        unsafe {
            let r = &mut *user.cast::<Reentry>();
            let len = (n_particles * dim) as usize;
            let x_slice = std::slice::from_raw_parts(x, len);
            let (mut y, mut uu, mut accepted) = (x_slice.to_vec(), 0.0, -7);
            let (mut p, mut a) = (0, 0);
            let mut solver = eqf_solver_stats::default();
            r.statuses.extend([
                eqf_move_step(
                    r.mv,
                    y.as_mut_ptr(),
                    &raw mut uu,
                    Some(dw4),
                    std::ptr::null_mut(),
                    &raw mut accepted,
                ),
                eqf_move_propose(r.mv, x, 0.0, y.as_mut_ptr()),
                eqf_move_accept(r.mv, 0.0, &raw mut accepted),
                eqf_move_stats(r.mv, &raw mut p, &raw mut a),
                eqf_move_solver_stats(r.mv, &raw mut solver),
                eqf_move_free(r.mv),
            ]);
            u.write(DoubleWell::dw4().energy(x_slice));
        }
        0
    }

    /// Issue 14 (session 23): the energy callback of `eqf_move_step` calling the same move
    /// (a nested step, a propose/accept pair, the statistics, even a free) got EQF_OK and
    /// corrupted the chain (40 proposals counted for 20 steps, U written next to another x).
    /// Each is now EQF_ERR_INVALID_STATE, and the outer step is the only one counted.
    #[test]
    fn the_energy_callback_cannot_use_the_move_it_runs_in() {
        let mv = new_move(3);
        let mut reentry = Reentry {
            mv,
            statuses: Vec::new(),
        };
        let mut x = [0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0];
        let mut u = DoubleWell::dw4().energy(&x);
        let mut accepted = -7;
        // SAFETY: live move and buffers; `reentry` outlives the call; freed once below.
        unsafe {
            let user = (&raw mut reentry).cast::<c_void>();
            let status = eqf_move_step(
                mv,
                x.as_mut_ptr(),
                &raw mut u,
                Some(reentrant),
                user,
                &raw mut accepted,
            );
            assert_eq!(status, EQF_OK);
            assert_eq!(reentry.statuses, [EQF_ERR_INVALID_STATE; 6]);
            assert_eq!(stats(mv).0, 1);
            if accepted == 1 {
                assert_eq!(u, DoubleWell::dw4().energy(&x));
            }
            // After the step the move is usable again.
            let energy = DoubleWell::dw4();
            let status = eqf_move_step(
                mv,
                x.as_mut_ptr(),
                &raw mut u,
                Some(dw4),
                (&raw const energy).cast_mut().cast::<c_void>(),
                &raw mut accepted,
            );
            assert_eq!(status, EQF_OK);
            assert_eq!(stats(mv).0, 2);
            assert_eq!(eqf_move_free(mv), EQF_OK);
        }
    }

    /// What the blocking callback below shares with the test: it says it is inside the step,
    /// then waits until told to go on.
    struct Gate {
        inside: std::sync::mpsc::Sender<()>,
        go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    /// A DW-4 energy that holds its step open until the test lets it go (`user`: a `Gate`).
    unsafe extern "C" fn gated(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        u: *mut f64,
    ) -> i32 {
        // SAFETY: the test passes a live `Gate` that outlives the step.
        let gate = unsafe { &*user.cast::<Gate>() };
        gate.inside.send(()).unwrap();
        gate.go.lock().unwrap().recv().unwrap();
        let energy = DoubleWell::dw4();
        // SAFETY: as `dw4`'s contract.
        unsafe {
            dw4(
                (&raw const energy).cast_mut().cast(),
                n_particles,
                dim,
                x,
                u,
            )
        }
    }

    /// A host that uses one move from two threads at once (forbidden) gets an error on the
    /// second thread, with nothing changed, instead of a data race.
    #[test]
    fn a_move_in_use_on_another_thread_is_refused() {
        let mv = new_move(3);
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let gate = Gate {
            inside: inside_tx,
            go: std::sync::Mutex::new(go_rx),
        };
        let address = mv.expose_provenance();
        std::thread::scope(|scope| {
            let gate = &gate;
            let stepper = scope.spawn(move || {
                let mv = std::ptr::with_exposed_provenance_mut::<eqf_move>(address);
                let mut x = [0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0];
                let mut u = DoubleWell::dw4().energy(&x);
                let mut accepted = -7;
                // SAFETY: live move and buffers; the gate outlives the step.
                unsafe {
                    let user = std::ptr::from_ref(gate).cast_mut().cast::<c_void>();
                    eqf_move_step(
                        mv,
                        x.as_mut_ptr(),
                        &raw mut u,
                        Some(gated),
                        user,
                        &raw mut accepted,
                    )
                }
            });
            inside_rx.recv().unwrap();
            // The step is inside its callback, holding the move: every call is refused.
            let mut x = [0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0];
            let mut y = x;
            let (mut u, mut accepted, mut p, mut a) = (0.0, -7, -1, -1);
            let mut solver = eqf_solver_stats::default();
            let energy = DoubleWell::dw4();
            let user = (&raw const energy).cast_mut().cast::<c_void>();
            // SAFETY: live move and buffers of the right sizes.
            let statuses = unsafe {
                [
                    eqf_move_propose(mv, x.as_ptr(), 1.0, y.as_mut_ptr()),
                    eqf_move_accept(mv, 1.0, &raw mut accepted),
                    eqf_move_step(
                        mv,
                        x.as_mut_ptr(),
                        &raw mut u,
                        Some(dw4),
                        user,
                        &raw mut accepted,
                    ),
                    eqf_move_stats(mv, &raw mut p, &raw mut a),
                    eqf_move_solver_stats(mv, &raw mut solver),
                ]
            };
            assert_eq!(statuses, [EQF_ERR_INVALID_STATE; 5]);
            let message = crate::ffi::with_last_error(str::to_owned);
            assert!(message.contains("another thread"), "{message}");
            assert_eq!((accepted, p, a, u), (-7, -1, -1, 0.0), "outputs written");
            // Nor is it freed from under the step (that used to free it: the step then went
            // on with freed memory).
            // SAFETY: a live move; refused, so not freed.
            assert_eq!(unsafe { eqf_move_free(mv) }, EQF_ERR_INVALID_STATE);
            let message = crate::ffi::with_last_error(str::to_owned);
            assert!(message.contains("it was not freed"), "{message}");
            assert_eq!(solver, eqf_solver_stats::default());
            go_tx.send(()).unwrap();
            assert_eq!(stepper.join().unwrap(), EQF_OK);
        });
        // The step completed; the move is usable from here again.
        assert_eq!(stats(mv).0, 1);
        // SAFETY: freed once.
        assert_eq!(unsafe { eqf_move_free(mv) }, EQF_OK);
    }

    #[test]
    fn solver_stats_count_the_decided_proposals_work() {
        let mv = new_move(3);
        let mut x = [0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0];
        let dw4_energy = DoubleWell::dw4();
        let user = (&raw const dw4_energy).cast_mut().cast::<c_void>();
        let mut u = dw4_energy.energy(&x);
        let mut accepted = 0;
        let mut before = eqf_solver_stats::default();
        let mut after = eqf_solver_stats::default();
        // SAFETY: live move, valid buffers; the move is freed once.
        unsafe {
            assert_eq!(eqf_move_solver_stats(mv, &raw mut before), EQF_OK);
            assert_eq!(before, eqf_solver_stats::default());
            assert_eq!(
                eqf_move_step(
                    mv,
                    x.as_mut_ptr(),
                    &raw mut u,
                    Some(dw4),
                    user,
                    &raw mut accepted
                ),
                EQF_OK
            );
            assert_eq!(eqf_move_solver_stats(mv, &raw mut after), EQF_OK);
            // First step: a pull-back of the (uncached) current state and one proposal, 20
            // exact-discrete steps each.
            assert_eq!(after.n_steps, 40, "{after:?}");
            assert!(after.n_eval >= 80 && after.n_jacobian > 0, "{after:?}");
            // A failed call adds nothing.
            assert_ne!(
                eqf_move_step(
                    mv,
                    x.as_mut_ptr(),
                    &raw mut u,
                    Some(nan),
                    std::ptr::null_mut(),
                    &raw mut accepted
                ),
                EQF_OK
            );
            let mut again = eqf_solver_stats::default();
            assert_eq!(eqf_move_solver_stats(mv, &raw mut again), EQF_OK);
            assert_eq!(again, after);
            assert_eq!(
                eqf_move_solver_stats(mv, std::ptr::null_mut()),
                EQF_ERR_NULL_POINTER
            );
            eqf_move_free(mv);
        }
    }

    /// What [`outer_with_message`] steps from inside its energy callback, and what it saw.
    struct Nesting {
        /// Another move, stepped with [`inner_with_message`].
        inner_move: *mut eqf_move,
        /// Whether the inner callback fails (after setting its message).
        inner_fails: bool,
        inner_status: i32,
        inner_message: String,
    }

    /// Sets the message "INNER", then fails if `*user` (a bool) says so, else returns the DW-4
    /// energy.
    unsafe extern "C" fn inner_with_message(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        u: *mut f64,
    ) -> i32 {
        // SAFETY: a valid C string; the test passes a live bool as `user`; eqflow passes N*D
        // doubles and a writable double, as `dw4` needs.
        unsafe {
            crate::ffi::callback_error::eqf_set_callback_error(c"INNER".as_ptr());
            if *user.cast::<bool>() {
                return 2;
            }
            let energy = DoubleWell::dw4();
            dw4(
                (&raw const energy).cast_mut().cast(),
                n_particles,
                dim,
                x,
                u,
            )
        }
    }

    /// Sets the message "OUTER", steps another move (whose callback sets "INNER"), and fails.
    unsafe extern "C" fn outer_with_message(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        u: *mut f64,
    ) -> i32 {
        // SAFETY: the test passes a live `Nesting` as `user`; eqflow passes N*D doubles and a
        // writable double; the nested step gets buffers of the right sizes.
        unsafe {
            let nesting = &mut *user.cast::<Nesting>();
            crate::ffi::callback_error::eqf_set_callback_error(c"OUTER".as_ptr());
            let mut y = std::slice::from_raw_parts(x, (n_particles * dim) as usize).to_vec();
            let mut u_y = DoubleWell::dw4().energy(&y);
            let mut accepted = -7;
            nesting.inner_status = eqf_move_step(
                nesting.inner_move,
                y.as_mut_ptr(),
                &raw mut u_y,
                Some(inner_with_message),
                (&raw mut nesting.inner_fails).cast(),
                &raw mut accepted,
            );
            nesting.inner_message = crate::ffi::with_last_error(str::to_owned);
            u.write(0.0);
        }
        1
    }

    /// Issue F1 of the C-ABI sweep: an energy callback that ran a step of another move lost
    /// its own message to the nested step (whose call site cleared the one slot), or got the
    /// inner callback's, even from an inner callback that succeeded.
    #[test]
    fn an_energy_callback_keeps_its_message_across_a_nested_step() {
        let (outer_move, inner_move) = (new_move(3), new_move(4));
        for inner_fails in [false, true] {
            let mut nesting = Nesting {
                inner_move,
                inner_fails,
                inner_status: -1,
                inner_message: String::new(),
            };
            let mut x = [0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0];
            let mut u = DoubleWell::dw4().energy(&x);
            let mut accepted = -7;
            // SAFETY: live moves and buffers; `nesting` outlives the step.
            let status = unsafe {
                eqf_move_step(
                    outer_move,
                    x.as_mut_ptr(),
                    &raw mut u,
                    Some(outer_with_message),
                    (&raw mut nesting).cast(),
                    &raw mut accepted,
                )
            };
            if inner_fails {
                assert_eq!(nesting.inner_status, EQF_ERR_CALLBACK);
                assert!(
                    nesting.inner_message.ends_with("returned 2: INNER"),
                    "{}",
                    nesting.inner_message
                );
            } else {
                assert_eq!(nesting.inner_status, EQF_OK, "{}", nesting.inner_message);
            }
            assert_eq!(status, EQF_ERR_CALLBACK);
            let message = crate::ffi::with_last_error(str::to_owned);
            assert!(
                message.ends_with("returned 1: OUTER") && !message.contains("INNER"),
                "inner callback fails: {inner_fails}; message {message:?}"
            );
        }
        // SAFETY: freed once.
        unsafe {
            assert_eq!(eqf_move_free(outer_move), EQF_OK);
            assert_eq!(eqf_move_free(inner_move), EQF_OK);
        }
    }

    /// A DW-4 move whose flow handle is freed right away (the move keeps its own copy).
    fn new_move(seed: u64) -> *mut eqf_move {
        let mut flow = std::ptr::null_mut();
        let mut mv = std::ptr::null_mut();
        // SAFETY: valid pointer slots; the flow is freed once.
        unsafe {
            assert_eq!(eqf_flow_new(4, 2, 5, &raw mut flow), EQF_OK);
            assert_eq!(eqf_move_new(flow, 1.0, seed, &raw mut mv), EQF_OK);
            assert_eq!(eqf_flow_free(flow), EQF_OK);
        }
        mv
    }

    fn stats(mv: *const eqf_move) -> (i64, i64) {
        let (mut p, mut a) = (-1, -1);
        // SAFETY: live move, valid outputs.
        assert_eq!(unsafe { eqf_move_stats(mv, &mut p, &mut a) }, EQF_OK);
        (p, a)
    }

    #[test]
    fn failed_steps_change_nothing_and_retry_identically() {
        let mut energy = DoubleWell::dw4();
        let user = (&raw mut energy).cast::<c_void>();
        // A flow sample of high energy (U ≈ 300), so that the first proposals are accepted.
        let start: [f64; 8] = crate::Flow::new(4, 2, 5).unwrap().sample(1, 1).unwrap().0[..]
            .try_into()
            .unwrap();
        let (reference, disturbed) = (new_move(9), new_move(9));
        let mut x_ref = start;
        let mut u_ref = energy.energy(&start);
        let mut x = x_ref;
        let mut u = u_ref;
        let mut accepted = 7;
        // SAFETY: live moves; arrays of N*D doubles; valid outputs.
        unsafe {
            for step in 0..20 {
                let mut acc_ref = 0;
                let status = eqf_move_step(
                    reference,
                    x_ref.as_mut_ptr(),
                    &mut u_ref,
                    Some(dw4),
                    user,
                    &mut acc_ref,
                );
                assert_eq!(status, EQF_OK);
                // Every kind of failure, then the real step.
                let status = eqf_move_step(
                    disturbed,
                    x.as_mut_ptr(),
                    &mut u,
                    Some(failing),
                    user,
                    &mut accepted,
                );
                assert_eq!(status, EQF_ERR_CALLBACK);
                let status = eqf_move_step(
                    disturbed,
                    x.as_mut_ptr(),
                    &mut u,
                    Some(nan),
                    user,
                    &mut accepted,
                );
                assert_eq!(status, EQF_ERR_NON_FINITE);
                let mut bad = x;
                bad[step % 8] = f64::NAN;
                let mut u_bad = u;
                let status = eqf_move_step(
                    disturbed,
                    bad.as_mut_ptr(),
                    &mut u_bad,
                    Some(dw4),
                    user,
                    &mut accepted,
                );
                assert_eq!(status, EQF_ERR_NON_FINITE);
                let mut u_nan = f64::NAN;
                let status = eqf_move_step(
                    disturbed,
                    x.as_mut_ptr(),
                    &mut u_nan,
                    Some(dw4),
                    user,
                    &mut accepted,
                );
                assert_eq!(status, EQF_ERR_NON_FINITE);
                let status =
                    eqf_move_step(disturbed, x.as_mut_ptr(), &mut u, None, user, &mut accepted);
                assert_eq!(status, EQF_ERR_NULL_POINTER);
                assert_eq!(
                    eqf_move_accept(disturbed, 0.0, &mut accepted),
                    EQF_ERR_INVALID_STATE
                );
                assert_eq!(accepted, 7, "a failed call wrote `accepted`");
                let status = eqf_move_step(
                    disturbed,
                    x.as_mut_ptr(),
                    &mut u,
                    Some(dw4),
                    user,
                    &mut accepted,
                );
                assert_eq!(status, EQF_OK);
                assert_eq!(accepted, acc_ref);
                accepted = 7;
                assert_eq!(x, x_ref);
                assert_eq!(u.to_bits(), u_ref.to_bits());
                assert_eq!(stats(disturbed), stats(reference));
            }
            assert!(stats(reference).1 > 0, "{:?}", stats(reference));
            assert_eq!(eqf_move_free(reference), EQF_OK);
            assert_eq!(eqf_move_free(disturbed), EQF_OK);
            assert_eq!(eqf_move_free(std::ptr::null_mut()), EQF_OK);
        }
    }

    #[test]
    fn two_phase_protocol_through_the_c_api() {
        let energy = DoubleWell::dw4();
        let mv = new_move(3);
        let x = [0.3, 0.1, 2.9, -0.4, -0.2, 2.7, 2.6, 2.8];
        let mut proposal = [f64::NAN; 8];
        let mut accepted = 7;
        // SAFETY: live move; arrays of N*D doubles; valid outputs; NULLs are rejected.
        unsafe {
            assert_eq!(
                eqf_move_accept(mv, 0.0, &mut accepted),
                EQF_ERR_INVALID_STATE
            );
            let u = energy.energy(&x);
            let status = eqf_move_propose(mv, x.as_ptr(), u, std::ptr::null_mut());
            assert_eq!(status, EQF_ERR_NULL_POINTER);
            let status = eqf_move_propose(mv, std::ptr::null(), u, proposal.as_mut_ptr());
            assert_eq!(status, EQF_ERR_NULL_POINTER);
            let status = eqf_move_propose(mv, x.as_ptr(), f64::NAN, proposal.as_mut_ptr());
            assert_eq!(status, EQF_ERR_NON_FINITE);
            assert!(proposal.iter().all(|v| v.is_nan()), "written on failure");
            assert_eq!(
                eqf_move_propose(mv, x.as_ptr(), u, proposal.as_mut_ptr()),
                EQF_OK
            );
            assert_eq!(
                eqf_move_accept(mv, f64::NAN, &mut accepted),
                EQF_ERR_NON_FINITE
            );
            assert_eq!(
                eqf_move_accept(mv, 0.0, std::ptr::null_mut()),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(accepted, 7);
            assert_eq!(stats(mv), (0, 0));
            let status = eqf_move_accept(mv, energy.energy(&proposal), &mut accepted);
            assert_eq!(status, EQF_OK);
            assert!(accepted == 0 || accepted == 1);
            assert_eq!(stats(mv), (1, i64::from(accepted)));
            let mut out = std::ptr::dangling_mut::<eqf_move>();
            let mut flow = std::ptr::null_mut();
            assert_eq!(eqf_flow_new(4, 2, 5, &raw mut flow), EQF_OK);
            assert_eq!(
                eqf_move_new(flow, 0.0, 1, &raw mut out),
                EQF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                eqf_move_new(std::ptr::null(), 1.0, 1, &raw mut out),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(
                eqf_move_new(flow, 1.0, 1, std::ptr::null_mut()),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(out, std::ptr::dangling_mut::<eqf_move>());
            let (mut p, mut a) = (0, 0);
            assert_eq!(
                eqf_move_stats(std::ptr::null(), &mut p, &mut a),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(
                eqf_move_stats(mv, std::ptr::null_mut(), &mut a),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(eqf_flow_free(flow), EQF_OK);
            assert_eq!(eqf_move_free(mv), EQF_OK);
        }
    }

    /// Writes the energy `*user` (a double) whatever the configuration.
    unsafe extern "C" fn constant(
        user: *mut c_void,
        _: i64,
        _: i64,
        _: *const f64,
        u: *mut f64,
    ) -> i32 {
        // SAFETY: the tests pass a live double as `user`; eqflow passes a writable double.
        unsafe { u.write(*user.cast::<f64>()) };
        0
    }

    /// Issue 14 through the C ABI: at kT = 1e-300 and 5e-324, `U/kT` overflows for these
    /// energies; downhill must still be accepted and uphill rejected, in one call and in two.
    #[test]
    fn tiny_kt_accepts_downhill_and_rejects_uphill() {
        let start: [f64; 8] = crate::Flow::new(4, 2, 5).unwrap().sample(1, 1).unwrap().0[..]
            .try_into()
            .unwrap();
        for kt in [1e-300, 5e-324] {
            for (u_from, u_to) in [(1e10, 1e9), (-1e9, -1e10)] {
                let mut flow = std::ptr::null_mut();
                let mut mv = std::ptr::null_mut();
                let mut proposal = [0.0; 8];
                let (mut x, mut u, mut u_next) = (start, u_from, u_to);
                let user = (&raw mut u_next).cast::<c_void>();
                let mut accepted = 7;
                // SAFETY: valid pointer slots; live move; arrays of N*D doubles; `user` is a
                // live double for `constant`.
                unsafe {
                    assert_eq!(eqf_flow_new(4, 2, 5, &raw mut flow), EQF_OK);
                    assert_eq!(eqf_move_new(flow, kt, 1, &raw mut mv), EQF_OK);
                    let status = eqf_move_step(
                        mv,
                        x.as_mut_ptr(),
                        &mut u,
                        Some(constant),
                        user,
                        &mut accepted,
                    );
                    assert_eq!(status, EQF_OK);
                    assert_eq!((accepted, u), (1, u_to), "kT {kt:e}: {u_from} -> {u_to}");
                    user.cast::<f64>().write(u_from);
                    let status = eqf_move_step(
                        mv,
                        x.as_mut_ptr(),
                        &mut u,
                        Some(constant),
                        user,
                        &mut accepted,
                    );
                    assert_eq!(status, EQF_OK);
                    assert_eq!((accepted, u), (0, u_to), "kT {kt:e}: {u_to} -> {u_from}");

                    let status =
                        eqf_move_propose(mv, start.as_ptr(), u_from, proposal.as_mut_ptr());
                    assert_eq!(status, EQF_OK);
                    assert_eq!(eqf_move_accept(mv, u_to, &mut accepted), EQF_OK);
                    assert_eq!(accepted, 1, "two-phase, kT {kt:e}: {u_from} -> {u_to}");
                    let status = eqf_move_propose(mv, start.as_ptr(), u_to, proposal.as_mut_ptr());
                    assert_eq!(status, EQF_OK);
                    assert_eq!(eqf_move_accept(mv, u_from, &mut accepted), EQF_OK);
                    assert_eq!(accepted, 0, "two-phase, kT {kt:e}: {u_to} -> {u_from}");
                    assert_eq!(stats(mv), (4, 2));
                    assert_eq!(eqf_move_free(mv), EQF_OK);
                    assert_eq!(eqf_flow_free(flow), EQF_OK);
                }
            }
        }
    }
}
