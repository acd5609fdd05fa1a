//! A bounded fuzz run over every reader of untrusted files: the model loader (kernel,
//! envpair, coordkernel and dense model files), the .npy reader and the .xyz reader. Each
//! input is a seeded mutation of a valid file (bytes flipped, cut, duplicated; numbers
//! replaced by extreme values; lines dropped). The contract under test: a reader returns `Ok`
//! or a typed error — it never panics — and a model that loads keeps the product's promise:
//! the log q given at sampling equals the log q evaluated for the sample, or the call fails.
//! `EQFLOW_FUZZ_ITERATIONS` raises the count (default 300 per reader, a few seconds).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::rng;
use eqflow::geometry::Layout;
use eqflow::io::{model, npy, xyz};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

fn iterations() -> usize {
    std::env::var("EQFLOW_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

const EXTREMES: [&str; 12] = [
    "0",
    "-0",
    "1e308",
    "-1e308",
    "1e-320",
    "5e-324",
    "NaN",
    "1e999",
    "-7",
    "4294967297",
    "18446744073709551617",
    "0.5",
];

/// One random mutation of `bytes`.
fn mutate(r: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return out;
    }
    match r.random_range(0..6) {
        0 => {
            for _ in 0..r.random_range(1..8) {
                let i = r.random_range(0..out.len());
                out[i] ^= 1 << r.random_range(0..8);
            }
        }
        1 => out.truncate(r.random_range(0..out.len())),
        2 => {
            let a = r.random_range(0..out.len());
            let b = (a + r.random_range(1..64)).min(out.len());
            let piece = out[a..b].to_vec();
            out.splice(a..a, piece);
        }
        3 | 4 => {
            // Replace one number token by an extreme value (text formats).
            let text = String::from_utf8_lossy(&out).into_owned();
            let starts: Vec<usize> = text
                .char_indices()
                .filter(|&(i, c)| {
                    (c.is_ascii_digit() || c == '-')
                        && !text[..i].ends_with(|p: char| p.is_ascii_alphanumeric() || p == '.')
                })
                .map(|(i, _)| i)
                .collect();
            if let Some(&s) = starts.get(r.random_range(0..starts.len().max(1))) {
                let end = text[s + 1..]
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+')
                    })
                    .map_or(text.len(), |e| s + 1 + e);
                let value = EXTREMES[r.random_range(0..EXTREMES.len())];
                out = format!("{}{value}{}", &text[..s], &text[end..]).into_bytes();
            }
        }
        _ => {
            // Drop one line.
            let text = String::from_utf8_lossy(&out).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() > 1 {
                let k = r.random_range(0..lines.len());
                out = lines
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != k)
                    .map(|(_, l)| *l)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes();
            }
        }
    }
    out
}

/// Runs `f` and fails the test with `what` if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("a reader panicked on {what}"),
    }
}

/// A saved untrained DW-4 model of field family `family`.
fn family_model_bytes(family: &str) -> Vec<u8> {
    let system = eqflow::system::System::preset("dw4").unwrap();
    let flow = system.untrained_flow_of(family, 4).unwrap();
    let path = scratch(&format!("{family}-seed.json"));
    model::save(&flow, Some(system), None, &path).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn model_files_load_or_fail_and_loaded_models_keep_sampling_and_density_consistent() {
    let seeds: Vec<Vec<u8>> = vec![
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json")).unwrap(),
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/models/lj13.json")).unwrap(),
        family_model_bytes("envpair"),
        family_model_bytes("coordkernel"),
        family_model_bytes("dense"),
    ];
    let mut r = rng(0xf022);
    let path = scratch("mutated-model.json");
    let (mut loaded, mut sampled) = (0, 0);
    for it in 0..iterations() {
        let seed = &seeds[it % seeds.len()];
        let mut bytes = mutate(&mut r, seed);
        if r.random_bool(0.3) {
            bytes = mutate(&mut r, &bytes);
        }
        std::fs::write(&path, &bytes).unwrap();
        let what = format!("model mutation {it}");
        let Ok((flow, _)) = no_panic(&what, || model::load(&path)) else {
            continue;
        };
        loaded += 1;
        // DW-4 and LJ-13 sizes only (a mutated particle count is refused or small).
        if flow.layout().len() > 39 {
            continue;
        }
        let Ok((x, log_q)) = no_panic(&what, || flow.sample(it as u64, 2)) else {
            continue;
        };
        sampled += 1;
        assert!(
            log_q.iter().all(|v| v.is_finite()),
            "{what}: OK with log q {log_q:?}"
        );
        if let Ok(evaluated) = no_panic(&what, || flow.log_density(&x)) {
            for (a, b) in log_q.iter().zip(&evaluated) {
                assert!(
                    (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                    "{what}: sampled log q {a} but evaluated {b}, both OK"
                );
            }
        }
    }
    println!(
        "{} mutated model files: {loaded} loaded, {sampled} sampled",
        iterations()
    );
}

#[test]
fn npy_and_xyz_readers_return_data_or_errors() {
    let len = 8;
    let mut r = rng(0xf023);
    let x: Vec<f64> = (0..5 * len).map(|_| r.random_range(-3.0..3.0)).collect();
    let npy_path = scratch("seed.npy");
    let layout = Layout::new(4, 2).unwrap();
    npy::write_configurations(
        &npy_path,
        &x,
        layout,
        eqflow::io::Dtype::F64,
        npy::ConfigShape::Flat,
    )
    .unwrap();
    let npy_seed = std::fs::read(&npy_path).unwrap();
    let xyz_path = scratch("seed.xyz");
    // With a species column, so its parsing and cross-frame checks are fuzzed too.
    let species = eqflow::species::Species::new(2, vec![0, 1, 1, 0]).unwrap();
    xyz::write_xyz_with_species(&xyz_path, &x, layout, Some(&species), &[]).unwrap();
    let xyz_seed = std::fs::read(&xyz_path).unwrap();
    let mutated = scratch("mutated.bin");
    for it in 0..iterations() {
        let bytes = mutate(&mut r, &npy_seed);
        std::fs::write(&mutated, &bytes).unwrap();
        let what = format!("npy mutation {it}");
        no_panic(&what, || {
            let _ = npy::read_array(&mutated);
            if let Ok(v) = npy::read_configurations(&mutated, Layout::new(4, 2).unwrap()) {
                assert!(
                    v.iter().all(|v| v.is_finite()),
                    "{what}: non-finite data accepted"
                );
            }
        });
        let bytes = mutate(&mut r, &xyz_seed);
        std::fs::write(&mutated, &bytes).unwrap();
        let what = format!("xyz mutation {it}");
        no_panic(&what, || {
            if let Ok(t) = xyz::read_xyz(&mutated, 2) {
                let n = t.layout.n_particles;
                assert!(
                    t.species.as_ref().is_none_or(|s| s.len() == n),
                    "{what}: species indices for {n} particles"
                );
            }
            let _ = xyz::read_xyz(&mutated, 3);
        });
    }
}
