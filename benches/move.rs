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
//! Overhead = step / components − 1 (target < 5 %). The smallest systems are the worst case,
//! since the bookkeeping is O(N·D) and the flow O(N²·…). Run: `cargo bench --bench move`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use eqflow::flow::sample_rng;
use eqflow::geometry::{MAX_DIM, center_of_mass_into, translate};
use eqflow::{DoubleWell, Energy, Flow, FlowMove};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

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

fn bench_system(c: &mut Criterion, name: &str, flow: Flow, energy: DoubleWell) {
    let flow = Arc::new(flow);
    let (samples, _) = flow.sample(5, 2).unwrap();
    let len = flow.layout().len();
    let states = [samples[..len].to_vec(), samples[len..].to_vec()];
    let mut group = c.benchmark_group(name);
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(6));
    group.warm_up_time(Duration::from_secs(2));

    for (regime, host_changes_state) in [("cache_hit", false), ("cache_miss", true)] {
        let mut components = Components::new(Arc::clone(&flow));
        let mut x = states[0].clone();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("components", regime), |b| {
            b.iter(|| {
                let mut u = 0.0;
                if host_changes_state {
                    // The same host work as in the `step` measurement below.
                    i += 1;
                    x.copy_from_slice(&states[i % 2]);
                    u = energy.energy(&x);
                }
                black_box(components.run(black_box(&x), host_changes_state, &energy) + u)
            });
        });

        let mut mv = FlowMove::new(Arc::clone(&flow), 1.0, 1).unwrap();
        let mut x = states[0].clone();
        let mut u = energy.energy(&x);
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("step", regime), |b| {
            b.iter(|| {
                if host_changes_state {
                    i += 1;
                    x.copy_from_slice(&states[i % 2]);
                    u = energy.energy(&x);
                }
                black_box(mv.step(&mut x, &mut u, |y| Ok(energy.energy(y))).unwrap())
            });
        });
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

criterion_group!(move_benches, benches);
criterion_main!(move_benches);
