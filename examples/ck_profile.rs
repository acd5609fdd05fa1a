use eqflow::system::System;
fn main() {
    let sys = System::from_name_or_file("lj13").unwrap();
    let flow = sys.untrained_flow_of("coordkernel", 0).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    pool.install(|| flow.sample(1, 64).unwrap());
    println!("{:?} per sample", t.elapsed() / 64);
}
