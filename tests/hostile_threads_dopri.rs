//! The `eqflow` command line against a hostile thread count and a Dormand–Prince setting that
//! cannot finish: a fast, clear outcome, never a panic, an abort or a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MODEL_DW4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json");

/// Runs eqflow with `env` set and fails the test if it is still running after `seconds`.
fn eqflow_within(seconds: u64, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eqflow"));
    command
        .args(args)
        .env_remove("RAYON_NUM_THREADS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("eqflow runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(seconds) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{env:?} {args:?} still runs after {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh folder for one test.
fn folder(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_huge_rayon_num_threads_is_capped_and_changes_no_sample() {
    // Before: RAYON_NUM_THREADS=5000 aborted after ~26 s ("failed to allocate an alternative
    // stack", exit 101) and 20000 hung for more than a minute.
    let dir = folder("hostile-threads");
    let reference = dir.join("one.npy");
    let args = |out: &Path| -> Vec<String> {
        let args = [
            "sample", "--model", MODEL_DW4, "-n", "5", "--seed", "3", "-q", "--out",
        ];
        let mut args: Vec<String> = args.map(str::to_owned).to_vec();
        args.push(s(out).to_owned());
        args
    };
    let one_args = args(&reference);
    let one = eqflow_within(60, &[("RAYON_NUM_THREADS", "1")], &as_str(&one_args));
    assert!(one.status.success(), "{}", stderr(&one));
    for threads in ["5000", "20000"] {
        let out = dir.join(format!("t{threads}.npy"));
        let many_args = args(&out);
        let run = eqflow_within(30, &[("RAYON_NUM_THREADS", threads)], &as_str(&many_args));
        let err = stderr(&run);
        assert!(run.status.success(), "{threads}: {:?} {err}", run.status);
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(&format!("RAYON_NUM_THREADS={threads} is capped")),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&reference).unwrap(),
            "the samples depend on the thread count"
        );
    }
}

#[test]
fn a_dormand_prince_model_that_cannot_finish_is_refused_at_once() {
    // Before: a model file with rtol = atol = 5e-324 and max_steps = 1e12 loaded, and sampling
    // ran ~1 s per 100,000 zero-length steps, effectively forever.
    let dir = folder("hostile-dopri");
    let text = std::fs::read_to_string(MODEL_DW4).unwrap();
    let mut model: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (rtol, atol, max_steps, name) in [
        (5e-324, 5e-324, 1_000_000_000_000_u64, "rtol"),
        (1e-5, 1e-10, 1_000_000_000_000, "max_steps"),
    ] {
        model["integrator"] = serde_json::json!({
            "method": "dopri5", "rtol": rtol, "atol": atol, "max_steps": max_steps
        });
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, model.to_string()).unwrap();
        let out = dir.join("o.npy");
        let run = eqflow_within(
            30,
            &[],
            &[
                "sample",
                "--model",
                s(&path),
                "-n",
                "5",
                "--out",
                s(&out),
                "-q",
            ],
        );
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(name), "{name}: {err}");
        assert!(!out.exists(), "nothing written");
    }
}
