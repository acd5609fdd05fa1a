//! Overhead of the Monte Carlo move beyond the work it cannot avoid.
//!
//! A flow move costs one proposal (a prior draw pushed through the flow), the host's energy of
//! the proposal and, when the host changed the state since the last move, one density
//! evaluation (pull-back) of the current state. This benchmark times exactly those components
//! back to back, and `FlowMove::step` doing the same work, in the two regimes:
//!
//! * `cache_hit`: chains of flow moves only (the current state's log q is cached);
//! * `cache_miss`: the host changes the state before every move (alternating between two
//!   configurations, in both measurements), so the move pulls it back.
//!
//! The two are timed in interleaved rounds (components, then step, in every round; each
//! benchmark reports its own half), so that the machine's drift over a run cannot masquerade as
//! overhead. The step's proposal uses other latents than the components' one, but in the
//! exact-discrete mode a proposal costs the same for every latent, and both pull back the same
//! configurations. Overhead = step / components − 1 (target < 5 %). The smallest systems are the
//! worst case, since the bookkeeping is O(N·D) and the flow O(N²·…).
//! Run: `cargo bench --bench move`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use eqflow::flow::sample_rng;
use eqflow::geometry::{MAX_DIM, center_of_mass_into, translate};
use eqflow::{DoubleWell, Energy, Flow, FlowMove};
use std::cell::RefCell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The unavoidable work of one move, without the move: proposal, optional pull-back, energy.
struct Components {
    flow: Arc<Flow>,
    workspace: eqflow::integrate::Workspace,
    z: Vec<f64>,
    scratch: Vec<f64>,
    counter: u64,
}

impl Components {
    fn new(flow: Arc<Flow>) -> Self {
        let len = flow.layout().len();
        Components {
            workspace: flow.workspace(),
            flow,
            z: vec![0.0; len],
            scratch: vec![0.0; len],
            counter: 0,
        }
    }

    fn run(&mut self, x: &[f64], pull_back: bool, energy: &DoubleWell) -> f64 {
        let mut log_q_current = 0.0;
        if pull_back {
            self.scratch.copy_from_slice(x);
            log_q_current = self
                .flow
                .pull_back(&mut self.scratch, &mut self.workspace)
                .unwrap()
                .0;
        }
        let mut rng = sample_rng(1, self.counter);
        self.counter += 1;
        self.flow.prior().sample_into(&mut rng, &mut self.z);
        let (log_q, _) = self
            .flow
            .push_forward(&mut self.z, &mut self.workspace)
            .unwrap();
        let dim = self.flow.dim();
        let mut com = [0.0; MAX_DIM];
        center_of_mass_into(x, dim, &mut com[..dim]);
        translate(&mut self.z, dim, &com[..dim]);
        energy.energy(&self.z) + log_q + log_q_current
    }
}

/// Interleaved rounds: the host's work, then the components, then a move step, each timed on
/// its own, with the state (move, components, configurations) kept across criterion's calls.
/// The two criterion benchmarks of a regime each report their half of their rounds; the
/// overhead itself is printed from the summed halves of *all* rounds of both benchmarks, which
/// pair every step with a components run of the same fraction of a second — on this VM the
/// throughput drifts by up to 40% over seconds, so two separately timed benchmarks do not
/// resolve a few per cent.
struct Rounds<'a> {
    components: Components,
    mv: FlowMove,
    energy: &'a DoubleWell,
    states: &'a [Vec<f64>; 2],
    host_changes_state: bool,
    x_c: Vec<f64>,
    x_s: Vec<f64>,
    u_s: f64,
    round: u64,
    /// Summed (components, step) time and number of rounds, over every call.
    total: (Duration, Duration, u64),
}

impl<'a> Rounds<'a> {
    fn new(
        flow: &Arc<Flow>,
        energy: &'a DoubleWell,
        states: &'a [Vec<f64>; 2],
        host_changes_state: bool,
    ) -> Self {
        let x = states[0].clone();
        Rounds {
            components: Components::new(Arc::clone(flow)),
            mv: FlowMove::new(Arc::clone(flow), 1.0, 1).unwrap(),
            energy,
            states,
            host_changes_state,
            u_s: energy.energy(&x),
            x_c: x.clone(),
            x_s: x,
            round: 0,
            total: (Duration::ZERO, Duration::ZERO, 0),
        }
    }

    /// Runs `iters` rounds and returns the summed (components, step) times.
    fn run(&mut self, iters: u64) -> (Duration, Duration) {
        let (mut t_components, mut t_step) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..iters {
            self.round += 1;
            if self.host_changes_state {
                // The host's own work is outside both timings.
                let next = &self.states[(self.round % 2) as usize];
                self.x_c.copy_from_slice(next);
                self.x_s.copy_from_slice(next);
                self.u_s = self.energy.energy(&self.x_s);
            }
            let energy = self.energy;
            let t0 = Instant::now();
            black_box(
                self.components
                    .run(black_box(&self.x_c), self.host_changes_state, energy),
            );
            let t1 = Instant::now();
            black_box(
                self.mv
                    .step(&mut self.x_s, &mut self.u_s, |y| Ok(energy.energy(y)))
                    .unwrap(),
            );
            let t2 = Instant::now();
            t_components += t1 - t0;
            t_step += t2 - t1;
        }
        self.total.0 += t_components;
        self.total.1 += t_step;
        self.total.2 += iters;
        (t_components, t_step)
    }
}

fn bench_system(c: &mut Criterion, name: &str, flow: Flow, energy: DoubleWell) {
    let flow = Arc::new(flow);
    let (samples, _) = flow.sample(5, 2).unwrap();
    let len = flow.layout().len();
    let states = [samples[..len].to_vec(), samples[len..].to_vec()];
    let mut group = c.benchmark_group(name);
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(8));
    group.warm_up_time(Duration::from_secs(2));

    for (regime, host_changes_state) in [("cache_hit", false), ("cache_miss", true)] {
        let rounds = RefCell::new(Rounds::new(&flow, &energy, &states, host_changes_state));
        group.bench_function(BenchmarkId::new("components", regime), |b| {
            b.iter_custom(|iters| rounds.borrow_mut().run(iters).0);
        });
        group.bench_function(BenchmarkId::new("step", regime), |b| {
            b.iter_custom(|iters| rounds.borrow_mut().run(iters).1);
        });
        let (components, step, n) = rounds.borrow().total;
        println!(
            "{name}/{regime}: paired over {n} rounds: components {:.2} µs, step {:.2} µs, \
             overhead {:+.1}%",
            components.as_secs_f64() * 1e6 / n as f64,
            step.as_secs_f64() * 1e6 / n as f64,
            100.0 * (step.as_secs_f64() / components.as_secs_f64() - 1.0)
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_system(
        c,
        "move_dw2",
        Flow::new(2, 2, 0).unwrap(),
        DoubleWell::dw2(),
    );
    bench_system(
        c,
        "move_dw4",
        Flow::new(4, 2, 0).unwrap(),
        DoubleWell::dw4(),
    );
}

// No plots: criterion's plotters backend needs a system font, which CI machines lack.
criterion_group! {
    name = move_benches;
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(move_benches);
