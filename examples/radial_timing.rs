use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use std::time::Instant;
fn main() {
    let layout = Layout::new(4, 2).unwrap();
    let field = KernelField::initialise(layout, KernelConfig::double_well(), 0).unwrap();
    let n = 1_000_000;
    let t = Instant::now();
    let mut acc = 0.0;
    for i in 0..n {
        let (p, dp) = field.radial(1.0 + (i % 1000) as f64 * 0.005, 0.3);
        acc += p + dp;
    }
    println!(
        "radial incl time slice: {:.1} ns/call ({acc})",
        t.elapsed().as_secs_f64() * 1e9 / n as f64
    );
    let t = Instant::now();
    let mut acc = 0.0;
    for i in 0..n {
        acc += eqflow::field::exp::exp_nonpositive(-((i % 1000) as f64 * 0.005));
    }
    println!(
        "exp: {:.2} ns/call ({acc})",
        t.elapsed().as_secs_f64() * 1e9 / n as f64
    );
}
