//! The `eqflow` command line against hostile input (issue 14): never a panic, never a wrong
//! number reported with success, never an input overwritten, and nothing expensive started
//! that is bound to fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MODEL_DW4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json");

fn eqflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eqflow"))
        .args(args)
        .output()
        .expect("eqflow runs")
}

/// Runs eqflow and fails the test if it is still running after `seconds`: what is refused
/// must be refused before the work starts.
fn eqflow_within(seconds: u64, args: &[&str]) -> Output {
    eqflow_within_env(seconds, &[], args)
}

/// [`eqflow_within`] with the variables `env` set (and `RAYON_NUM_THREADS` only if given).
fn eqflow_within_env(seconds: u64, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eqflow"));
    command
        .args(args)
        .env_remove("RAYON_NUM_THREADS")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("eqflow runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(seconds) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{env:?} {args:?} still runs after {seconds} s: not refused up front");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a failure with a message holding every one of `needles`, and no panic or NaN.
fn assert_refused(out: &Output, args: &[&str], needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "{args:?} succeeded: {}", stdout(out));
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: exit {:?}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(!stdout(out).contains("NaN"), "{args:?}: {}", stdout(out));
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err:?}");
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "eqflow failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
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

/// `n` DW-4 configurations from a short MCMC run.
fn dw4_data(dir: &Path, n: &str) -> PathBuf {
    let data = dir.join("dw4.npy");
    json(&eqflow(&[
        "mcmc",
        "--system",
        "dw4",
        "-n",
        n,
        "--chains",
        "16",
        "--burnin",
        "2000",
        "--thin",
        "50",
        "--out",
        s(&data),
        "--seed",
        "2",
        "--json",
        "-q",
    ]));
    data
}

/// Writes `text` to the file `name` in `dir`; its path.
fn written(dir: &Path, name: impl AsRef<Path>, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// DW-4 configurations (4 particles in 2-D, 8 values each) written as `.npy`.
fn write_dw4(path: &Path, x: &[f64]) {
    eqflow::io::write_configurations(
        path,
        x,
        eqflow::geometry::Layout::new(4, 2).unwrap(),
        eqflow::io::Dtype::F64,
        eqflow::io::ConfigShape::Flat,
    )
    .unwrap();
}

/// One DW-4 configuration written as `.npy`.
fn one_configuration(path: &Path) {
    write_dw4(path, &[0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0]);
}

#[test]
fn zero_counts_and_bad_floats_are_refused_naming_the_flag() {
    let dir = folder("hostile_zero");
    let out = dir.join("x.npy");
    let data = dir.join("data.npy");
    one_configuration(&data);
    let train = |flag: &'static str, value: &'static str| {
        vec![
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--out",
            s(&out),
            flag,
            value,
        ]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["sample", "--model", MODEL_DW4, "-n", "0", "--out", s(&out)],
            "--n-samples",
        ),
        (
            vec![
                "eval",
                "--model",
                MODEL_DW4,
                "--data",
                s(&data),
                "--system",
                "dw4",
                "--n-samples",
                "0",
            ],
            "--n-samples",
        ),
        (
            vec!["mcmc", "--system", "dw4", "-n", "0", "--out", s(&out)],
            "--n-samples",
        ),
        (
            vec!["mcmc", "--system", "dw4", "--chains", "0", "--out", s(&out)],
            "--chains",
        ),
        (
            vec!["mcmc", "--system", "dw4", "--thin", "0", "--out", s(&out)],
            "--thin",
        ),
        (train("--batch-size", "0"), "--batch-size"),
        (train("--n-train", "0"), "--n-train"),
        (train("--rk4-steps", "0"), "--rk4-steps"),
        (train("--rk4-steps", "100001"), "--rk4-steps"),
        (train("--epochs", "0"), "--epochs"),
        (train("--validate-every", "0"), "--validate-every"),
        (train("--lr", "0"), "--lr"),
        (train("--lr", "nan"), "--lr"),
        (train("--lr", "inf"), "--lr"),
        (train("--lr", "1e300"), "--lr"),
        (train("--lipschitz-target", "1"), "--lipschitz-target"),
        (train("--lipschitz-target", "0"), "--lipschitz-target"),
        (train("--lipschitz-target", "NaN"), "--lipschitz-target"),
        (train("--lipschitz-penalty", "inf"), "--lipschitz-penalty"),
    ];
    for (args, flag) in cases {
        let r = eqflow_within(10, &args);
        assert_refused(&r, &args, &[flag]);
    }
    assert!(!out.exists());
}

#[test]
fn negative_numbers_are_values_with_a_message_about_them() {
    let dir = folder("hostile_negative");
    let out = dir.join("x.npy");
    let data = dir.join("data.npy");
    one_configuration(&data);
    let train = |flag: &'static str, value: &'static str| {
        vec![
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--out",
            s(&out),
            flag,
            value,
        ]
    };
    let cases = [
        (train("--lr", "-1"), "--lr", "-1"),
        (train("--lr", "-inf"), "--lr", "-inf"),
        (
            train("--lipschitz-penalty", "-0.5"),
            "--lipschitz-penalty",
            "-0.5",
        ),
        (
            train("--lipschitz-target", "-0.5"),
            "--lipschitz-target",
            "-0.5",
        ),
        (train("--epochs", "-3"), "--epochs", "-3"),
        (train("--seed", "-1"), "--seed", "-1"),
        (
            vec!["mcmc", "--system", "dw4", "-n", "-5", "--out", s(&out)],
            "--n-samples",
            "-5",
        ),
        (
            vec![
                "mcmc",
                "--system",
                "dw4",
                "--burnin",
                "-1",
                "--out",
                s(&out),
            ],
            "--burnin",
            "-1",
        ),
        (
            vec![
                "sample",
                "--model",
                MODEL_DW4,
                "--seed",
                "-2",
                "--out",
                s(&out),
            ],
            "--seed",
            "-2",
        ),
    ];
    for (args, flag, value) in cases {
        let r = eqflow_within(10, &args);
        assert_refused(&r, &args, &[flag, &format!("'{value}'")]);
        assert!(
            !stderr(&r).contains("unexpected argument"),
            "{}",
            stderr(&r)
        );
    }
}

#[test]
fn outputs_are_checked_before_any_work_and_never_overwrite_an_input() {
    let dir = folder("hostile_outputs");
    let data = dw4_data(&dir, "64");
    let before = std::fs::read(&data).unwrap();
    // The data as the output, however spelt: refused, the data untouched.
    let link = dir.join("link.npy");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let dotted = format!("{}/./dw4.npy", s(&dir));
    let mut spellings = vec![s(&data), dotted.as_str()];
    if link.exists() {
        spellings.push(s(&link));
    }
    for out in spellings {
        let args = [
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--out",
            out,
            "--n-train",
            "32",
            "--epochs",
            "1000",
        ];
        let r = eqflow_within(10, &args);
        assert_refused(
            &r,
            &args,
            &["--out", "same file as --data", "never overwrites"],
        );
        assert_eq!(std::fs::read(&data).unwrap(), before);
    }
    // The system file as the output of mcmc.
    let system = written(
        &dir,
        "dw4_file.json",
        r#"{"n_particles": 4, "dim": 2, "kt": 1, "energy": {"kind": "double_well",
            "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#,
    );
    let system_text = std::fs::read(&system).unwrap();
    let args = [
        "mcmc",
        "--system",
        s(&system),
        "-n",
        "16",
        "--out",
        s(&system),
    ];
    assert_refused(&eqflow_within(10, &args), &args, &["same file as --system"]);
    assert_eq!(std::fs::read(&system).unwrap(), system_text);
    // Outputs that cannot be written are refused before a long run: without the check, this
    // burn-in would run for minutes before the write failed.
    let missing = dir.join("no_such_folder").join("x.npy");
    let folder_out = dir.clone();
    for (out, needle) in [
        (s(&missing), "does not exist"),
        (s(&folder_out), "is a folder"),
        ("/dev/null", "special file"),
    ] {
        let args = [
            "mcmc",
            "--system",
            "dw4",
            "-n",
            "64",
            "--burnin",
            "1000000000",
            "--out",
            out,
        ];
        assert_refused(&eqflow_within(10, &args), &args, &["--out", needle]);
    }
    // sample: a log q file that cannot be written stops the run before sampling, and no output
    // of it is left behind.
    std::fs::create_dir(dir.join("s_log_q.npy")).unwrap();
    let samples = dir.join("s.npy");
    let args = [
        "sample",
        "--model",
        MODEL_DW4,
        "-n",
        "1000000",
        "--out",
        s(&samples),
        "-q",
    ];
    assert_refused(
        &eqflow_within(10, &args),
        &args,
        &["s_log_q.npy", "is a folder"],
    );
    assert!(!samples.exists() && !dir.join("s_log_w.npy").exists());
    // Nothing but the files made here remains (no temporaries).
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec!["dw4.npy", "dw4_file.json", "s_log_q.npy"];
    if link.exists() {
        expected.push("link.npy");
    }
    expected.sort_unstable();
    assert_eq!(names, expected);
}

#[test]
fn a_system_of_other_particles_than_the_model_is_refused_before_sampling() {
    let dir = folder("hostile_mismatch");
    let data = dir.join("one.npy");
    one_configuration(&data);
    let out = dir.join("s.npy");
    // A million LJ-13-sized samples would take minutes; the mismatch is found first.
    for args in [
        vec![
            "sample",
            "--model",
            MODEL_DW4,
            "--system",
            "lj13",
            "-n",
            "1000000",
            "--out",
            s(&out),
            "-q",
        ],
        vec![
            "eval",
            "--model",
            MODEL_DW4,
            "--data",
            s(&data),
            "--system",
            "lj13",
            "--n-samples",
            "1000000",
            "-q",
        ],
    ] {
        let r = eqflow_within(10, &args);
        assert_refused(
            &r,
            &args,
            &[
                "--system lj13 has 13 particles in 3 dimensions",
                MODEL_DW4,
                "4 particles in 2",
            ],
        );
    }
    assert!(!out.exists());
}

#[test]
fn one_sample_gives_no_standard_error_and_no_result_is_nan() {
    let dir = folder("hostile_one");
    let data = dir.join("one.npy");
    one_configuration(&data);
    let args = ["eval", "--model", MODEL_DW4, "--data", s(&data), "-q"];
    let text = eqflow(&args);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(text.contains("± n/a"), "{text}");
    assert!(
        !text.contains("NaN") && !text.contains("± 0.0000"),
        "{text}"
    );
    let e = json(&eqflow(&[&args[..], &["--json"]].concat()));
    assert!(e["nll"].as_f64().unwrap().is_finite(), "{e}");
    assert!(e["nll_se"].is_null(), "{e}");
    // One MCMC sample: its mean energy has no error bar either.
    let out = dir.join("m.npy");
    let args = [
        "mcmc",
        "--system",
        "dw4",
        "-n",
        "1",
        "--burnin",
        "100",
        "--out",
        s(&out),
        "-q",
    ];
    let r = eqflow(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("± n/a"), "{}", stdout(&r));
    let m = json(&eqflow(&[&args[..], &["--json"]].concat()));
    assert!(m["mean_energy_se_iid"].is_null(), "{m}");
    // Empty data of either format are errors, not a NaN NLL.
    let xyz = written(&dir, "empty.xyz", "");
    let npy = dir.join("empty.npy");
    eqflow::io::write_array(&npy, &[0, 8], &[], eqflow::io::Dtype::F64).unwrap();
    for empty in [&xyz, &npy] {
        let args = [
            "eval",
            "--model",
            MODEL_DW4,
            "--data",
            s(empty),
            "--system",
            "dw4",
        ];
        assert_refused(&eqflow(&args), &args, &[s(empty)]);
    }
}

#[test]
fn eval_says_when_it_ignores_the_fresh_sample_flags() {
    let dir = folder("hostile_eval_flags");
    let data = dir.join("one.npy");
    one_configuration(&data);
    let base = [
        "eval",
        "--model",
        MODEL_DW4,
        "--data",
        s(&data),
        "--json",
        "-q",
    ];
    let plain = eqflow(&base);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(!stderr(&plain).contains("ignored"), "{}", stderr(&plain));
    for extra in [
        &["--n-samples", "7"][..],
        &["--seed", "3"],
        &["--seed", "0"],
    ] {
        let out = eqflow(&[&base[..], extra].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("need --system: ignored"),
            "{extra:?}: {}",
            stderr(&out)
        );
        // The NLL is the data's, whatever the ignored flags say.
        assert_eq!(json(&out)["nll"], json(&plain)["nll"], "{extra:?}");
    }
    // With a system they are used: no warning, and the ESS is over that many samples.
    let args = [&base[..], &["--system", "dw4", "--n-samples", "50"]].concat();
    let out = eqflow(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    let e = json(&out);
    let (ess, fraction) = (
        e["ess"].as_f64().unwrap(),
        e["ess_fraction"].as_f64().unwrap(),
    );
    assert!((ess / 50.0 - fraction).abs() < 1e-12, "{e}");
}

#[test]
fn names_with_nan_in_them_are_not_results_that_are_not_numbers() {
    // Before: any "NaN" in the report's text, a path's included, failed a finished run as an
    // internal error (exit 1) after its outputs were written.
    let dir = folder("hostile_nan_names").join("NaN");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("BaNaNa.npy");
    let args = [
        "mcmc",
        "--system",
        "dw4",
        "-n",
        "20",
        "--burnin",
        "20",
        "--out",
        s(&data),
        "-q",
    ];
    let out = eqflow(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("BaNaNa.npy"), "{}", stdout(&out));
    let samples = dir.join("NaN_samples.npy");
    let args = [
        "sample",
        "--model",
        MODEL_DW4,
        "-n",
        "20",
        "--out",
        s(&samples),
        "--system",
        "dw4",
        "-q",
    ];
    let out = eqflow(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = ["eval", "--model", MODEL_DW4, "--data", s(&data), "-q"];
    let out = eqflow(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn model_file_errors_name_the_file() {
    let dir = folder("hostile_models");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(MODEL_DW4).unwrap()).unwrap();
    let mut huge = model.clone();
    huge["params"][0] = serde_json::json!(1e300);
    let mut no_format = model.clone();
    no_format.as_object_mut().unwrap().remove("format");
    let cases = [
        ("garbage.json", "not json at all".to_string()),
        ("no_format.json", no_format.to_string()),
        ("huge.json", huge.to_string()),
    ];
    let data = dir.join("one.npy");
    one_configuration(&data);
    for (name, text) in cases {
        let path = written(&dir, name, &text);
        for args in [
            vec![
                "sample",
                "--model",
                s(&path),
                "-n",
                "4",
                "--out",
                s(&dir.join("x.npy")),
            ],
            vec!["eval", "--model", s(&path), "--data", s(&data)],
        ] {
            assert_refused(
                &eqflow(&args),
                &args,
                &[&format!("model file {}", s(&path))],
            );
        }
    }
}

#[test]
fn errors_caused_by_a_valid_system_file_name_it() {
    // Before: "preset length scale 1e40 must be in (0, 1e5]" and "mcmc: chain 0 starts at
    // U = inf", with no word of the file whose values caused them.
    let dir = folder("hostile_system_context");
    let data = dw4_data(&dir, "32");
    let huge = written(
        &dir,
        "huge_rm.json",
        r#"{"n_particles": 4, "dim": 2, "kt": 1, "energy": {"kind": "lennard_jones",
            "epsilon": 1, "r_m": 1e40, "oscillator_k": 1}}"#,
    );
    let model = dir.join("m.json");
    let args = [
        "train",
        "--system",
        s(&huge),
        "--data",
        s(&data),
        "--out",
        s(&model),
        "--epochs",
        "1",
        "--n-train",
        "24",
        "--n-val",
        "8",
    ];
    assert_refused(
        &eqflow(&args),
        &args,
        &[&format!("--system {}", s(&huge)), "1e40"],
    );
    let spread = written(
        &dir,
        "spread.json",
        r#"{"n_particles": 4, "dim": 2, "kt": 1, "species": [0, 0, 1, 1],
            "energy": {"kind": "lennard_jones", "epsilon": [[1, 1], [1, 1]],
            "r_m": [[1e-30, 1e30], [1e30, 1]], "oscillator_k": 1}}"#,
    );
    let out = dir.join("x.npy");
    let args = ["mcmc", "--system", s(&spread), "-n", "4", "--out", s(&out)];
    let r = eqflow(&args);
    if !r.status.success() {
        assert_refused(&r, &args, &[&format!("--system {}", s(&spread))]);
    }
}

#[test]
fn bad_system_files_are_refused_naming_file_and_field_in_short_words() {
    let dir = folder("hostile_systems");
    let dw = |a: &str, b: &str, c: &str| {
        format!(
            r#"{{"n_particles": 4, "dim": 2, "kt": 1, "energy": {{"kind": "double_well",
                "a": {a}, "b": {b}, "c": {c}, "d0": 4}}}}"#
        )
    };
    let lj = |epsilon: &str, r_m: &str| {
        format!(
            r#"{{"n_particles": 6, "dim": 3, "kt": 1, "energy": {{"kind": "lennard_jones",
                "epsilon": {epsilon}, "r_m": {r_m}, "oscillator_k": 1}}}}"#
        )
    };
    let cases = [
        (
            "twice.json",
            r#"{"n_particles": 4, "dim": 2, "kt": 1, "kt": 100, "energy": {"kind":
                "double_well", "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#
                .to_string(),
            "field `kt` is given twice",
        ),
        (
            "twice_inside.json",
            r#"{"n_particles": 4, "dim": 2, "kt": 1, "energy": {"kind": "double_well",
                "a": 0, "b": -4, "b": 4, "c": 0.9, "d0": 4}}"#
                .to_string(),
            "field `energy.b` is given twice",
        ),
        (
            "unnamed.json",
            r#"{"name": "", "n_particles": 4, "dim": 2, "kt": 1, "energy": {"kind":
                "double_well", "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#
                .to_string(),
            "field `name`",
        ),
        ("falling.json", dw("0", "-4", "-0.9"), "field `energy.c`"),
        ("no_quartic.json", dw("0", "-4", "0"), "field `energy.b`"),
        ("flat.json", dw("0", "0", "0"), "field `energy.a`"),
        (
            "deep.json",
            lj("1e308", "1"),
            "field `energy.epsilon` = 1e308",
        ),
        (
            "negative_rm.json",
            lj("2", &format!("{:?}", -(0.1 + 0.2))),
            "got -0.3",
        ),
    ];
    let out = dir.join("x.npy");
    for (name, text, needle) in cases {
        let path = written(&dir, name, &text);
        let args = ["mcmc", "--system", s(&path), "-n", "16", "--out", s(&out)];
        let r = eqflow_within(10, &args);
        assert_refused(&r, &args, &[s(&path), needle]);
        let err = stderr(&r);
        assert!(
            err.len() < 600 && !err.contains("0000000"),
            "long numbers in {err}"
        );
    }
}

#[test]
fn absurd_counts_are_refused_up_front_with_their_limit() {
    let dir = folder("hostile_counts");
    let data = dir.join("one.npy");
    one_configuration(&data);
    let out = dir.join("x.npy");
    let train = |flag: &'static str, value: &'static str| {
        vec![
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--n-train",
            "1",
            flag,
            value,
        ]
    };
    let cases = [
        (
            vec![
                "mcmc",
                "--system",
                "dw4",
                "-n",
                "64",
                "--burnin",
                "1000000000000000000",
                "--out",
                s(&out),
            ],
            vec!["--burnin", "1000000000000"],
        ),
        (
            vec![
                "mcmc",
                "--system",
                "dw4",
                "-n",
                "100000",
                "--chains",
                "1",
                "--thin",
                "100000000000",
                "--out",
                s(&out),
            ],
            vec!["--thin", "10^12"],
        ),
        (
            train("--epochs", "1000000000000000000"),
            vec!["--epochs", "1000000"],
        ),
        (
            train("--kl-epochs", "10000000"),
            vec!["--kl-epochs", "1000000"],
        ),
        (
            train("--finetune-epochs", "10000000"),
            vec!["--finetune-epochs", "1000000"],
        ),
        (
            vec![
                "eval",
                "--model",
                MODEL_DW4,
                "--data",
                s(&data),
                "--system",
                "dw4",
                "--n-samples",
                "1000000000000000000",
            ],
            vec!["eval --n-samples", "resource limit"],
        ),
    ];
    for (args, needles) in cases {
        let r = eqflow_within(10, &args);
        assert_refused(&r, &args, &needles);
    }
    assert!(!out.exists());
}

#[test]
fn log_z_estimates_that_disagree_are_flagged() {
    let dir = folder("hostile_log_z");
    let data = dw4_data(&dir, "200");
    // DW-4 at half the temperature: the data (sampled at kT = 1) are not its samples, so
    // bridge sampling, which takes them as such, parts from importance sampling.
    let cold = written(
        &dir,
        "cold.json",
        r#"{"n_particles": 4, "dim": 2, "kt": 0.5, "energy": {"kind": "double_well",
            "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#,
    );
    let eval = |system: &str| {
        eqflow(&[
            "eval",
            "--model",
            MODEL_DW4,
            "--data",
            s(&data),
            "--system",
            system,
            "--n-samples",
            "200",
            "--json",
            "-q",
        ])
    };
    let r = eval(s(&cold));
    let e = json(&r);
    assert_eq!(e["log_z_consistent"], false, "{e}");
    assert!(
        stderr(&r).contains("warning: the two estimates of log Z disagree"),
        "{}",
        stderr(&r)
    );
    let r = eval("dw4");
    let e = json(&r);
    assert_eq!(e["log_z_consistent"], true, "{e}");
    assert!(!stderr(&r).contains("warning"), "{}", stderr(&r));
    // Without a system there is nothing to compare.
    let e = json(&eqflow(&[
        "eval",
        "--model",
        MODEL_DW4,
        "--data",
        s(&data),
        "--json",
        "-q",
    ]));
    assert!(e["log_z_consistent"].is_null(), "{e}");
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let dir = folder("hostile_pipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eqflow"))
        .args([
            "mcmc",
            "--system",
            "dw4",
            "-n",
            "64",
            "--burnin",
            "20000",
            "--out",
            s(&dir.join("x.npy")),
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before eqflow prints: its write then fails (EPIPE).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn repro_numbers_are_refused_before_the_output_folder_exists() {
    let dir = folder("hostile_repro");
    let out = dir.join("never");
    let o = s(&out);
    let cases: [(Vec<&str>, Vec<&str>); 7] = [
        (
            vec!["repro", "dto-otd", "--out", o, "--weight-decay", "-1"],
            vec!["--weight-decay", "≥ 0"],
        ),
        (
            vec!["repro", "dto-otd", "--out", o, "--weight-decay", "nan"],
            vec!["--weight-decay", "finite"],
        ),
        (
            // Finite and ≥ 0, but learning rate × weight decay ≥ 1 flips every parameter's sign.
            vec!["repro", "dto-otd", "--out", o, "--weight-decay", "1e300"],
            vec!["weight_decay"],
        ),
        (
            vec!["repro", "dto-otd", "--out", o, "--iterations", "0"],
            vec!["--iterations", "at least 1"],
        ),
        (
            vec!["repro", "metastable", "--out", o, "--rounds", "100000"],
            vec!["--rounds", "10000"],
        ),
        (
            vec!["repro", "metastable", "--out", o, "--n-long", "-5"],
            vec!["--n-long"],
        ),
        (
            vec!["repro", "metastable", "--out", o, "--lj13-epochs", "0"],
            vec!["--lj13-epochs", "at least 1"],
        ),
    ];
    for (args, needles) in cases {
        let r = eqflow_within(10, &args);
        assert_refused(&r, &args, &needles);
        assert!(!out.exists(), "{args:?} created its output folder");
    }
    // An --out that names a file (or lies below one) is refused by every experiment before
    // its work: reweighting trained its flow first (3.7 s for the full run).
    let file = written(&dir, "a_file", "keep");
    let below = file.join("sub");
    for experiment in [
        "reweighting",
        "dto-otd",
        "metastable",
        "divergence",
        "baseline",
    ] {
        for target in [&file, &below] {
            let args = ["repro", experiment, "--out", s(target), "-q"];
            let r = eqflow_within(10, &args);
            assert_refused(&r, &args, &[s(&file)]);
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

/// Every output file of `demo` and `repro` is checked before the work: one that cannot be
/// written (here a folder in its place) or that is the run's own `--model` is refused before
/// any other output is replaced. Before, `demo` and `repro` failed only when they reached that
/// file, after overwriting the earlier ones, and `repro reweighting` overwrote its `--model`.
#[test]
fn demo_and_repro_check_every_output_file_before_any_work() {
    let dir = folder("hostile_repro_outputs");
    let demo = dir.join("demo");
    std::fs::create_dir_all(demo.join("dw4_energies.png")).unwrap();
    let kept = written(&demo, "dw4_mcmc.npy", "keep");
    let args = ["demo", "--out-dir", s(&demo), "-q"];
    let out = eqflow_within(10, &args);
    assert_refused(&out, &args, &["dw4_energies.png", "is a folder"]);
    assert!(!stderr(&out).contains("i/o error: i/o error"));
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "keep");
    // A symbolic link to nothing cannot be written through: refused before the work too.
    std::fs::remove_dir(demo.join("dw4_energies.png")).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere.json"), demo.join("dw4_model.json")).unwrap();
    let out = eqflow_within(10, &args);
    assert_refused(&out, &args, &["dw4_model.json", "target does not exist"]);
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "keep");
    // A file where the folder should be is named as such (it said "File exists").
    let args = ["demo", "--out-dir", s(&kept), "-q"];
    assert_refused(
        &eqflow_within(10, &args),
        &args,
        &["in the way, not a folder"],
    );

    for (experiment, in_the_way, earlier) in [
        ("reweighting", "reweighting.png", "reweighting_profile.csv"),
        ("dto-otd", "dto_otd.png", "dto_otd.csv"),
        ("divergence", "divergence.png", "divergence_error.csv"),
        ("metastable", "metastable.png", "metastable_dw4_minima.csv"),
        ("baseline", "baseline.png", "baseline_nll.csv"),
    ] {
        let out_dir = dir.join(experiment);
        std::fs::create_dir_all(out_dir.join(in_the_way)).unwrap();
        let kept = written(&out_dir, earlier, "keep");
        let args = ["repro", experiment, "--quick", "--out", s(&out_dir), "-q"];
        let out = eqflow_within(10, &args);
        assert_refused(&out, &args, &[in_the_way, "is a folder"]);
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "keep", "{args:?}");
    }

    // The reweighting experiment's --model is one of its outputs' paths.
    let out_dir = dir.join("own_model");
    std::fs::create_dir_all(&out_dir).unwrap();
    let model = out_dir.join("reweighting_summary.csv");
    std::fs::copy(MODEL_DW4, &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let args = [
        "repro",
        "reweighting",
        "--quick",
        "--out",
        s(&out_dir),
        "--model",
        s(&model),
        "-q",
    ];
    let out = eqflow_within(10, &args);
    assert_refused(&out, &args, &["is the same file as --model"]);
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

/// Text inputs that begin with a UTF-8 byte-order mark (Windows editors write one) read as
/// without it. Before, a JSON system or model file with one was refused as "expected value at
/// line 1 column 1", and an XYZ file's atom count as "\u{feff}4", while TOML accepted it.
#[test]
fn text_inputs_with_a_byte_order_mark_are_read() {
    let dir = folder("hostile_bom");
    let system = serde_json::to_string(&eqflow::system::System::preset("dw4").unwrap()).unwrap();
    let system = written(&dir, "dw4.json", &format!("\u{feff}{system}"));
    let model = std::fs::read_to_string(MODEL_DW4).unwrap();
    let model = written(&dir, "model.json", &format!("\u{feff}{model}"));
    let xyz = written(
        &dir,
        "x.xyz",
        "\u{feff}4\nProperties=species:S:1:pos:R:3\nX 0 0 0\nX 2 0 0\nX 0 2 0\nX 2 2 0\n",
    );
    let samples = dir.join("s.npy");
    json(&eqflow(&[
        "mcmc",
        "--system",
        s(&system),
        "-n",
        "4",
        "--out",
        s(&samples),
        "--json",
        "-q",
    ]));
    json(&eqflow(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&xyz),
        "--system",
        s(&system),
        "--n-samples",
        "10",
        "--json",
        "-q",
    ]));
}

/// Ctrl-C (or SIGTERM) during a write removes the write's temporary: no target is ever
/// half-written, but before, an 88 MB `.big.npy.eqflow-<pid>-0.tmp` stayed behind, under a
/// name no later run reuses.
#[test]
fn an_interrupted_write_leaves_no_temporary_behind() {
    let dir = folder("hostile_interrupt");
    let target = dir.join("big.npy");
    let temporaries = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.starts_with(".big.npy").then_some(name)
            })
            .collect::<Vec<_>>()
    };
    // Runs large enough that the write (and its fsync) lasts long enough to be interrupted; a
    // round that finished before its signal arrived checks nothing, and at least one must not.
    let mut interrupted = 0;
    for (n, signal) in [
        ("2000000", "-INT"),
        ("2000000", "-TERM"),
        ("8000000", "-INT"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eqflow"))
            .args([
                "mcmc", "--system", "dw4", "-n", n, "--burnin", "0", "--thin", "1",
            ])
            .args(["--seed", "1", "-q", "--out", s(&target)])
            .env("RAYON_NUM_THREADS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while temporaries().is_empty() && child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no write started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        if status.success() || !killed.success() {
            let _ = std::fs::remove_file(&target);
            continue;
        }
        interrupted += 1;
        assert_eq!(status.code(), Some(130), "{signal}: {status:?}");
        assert!(temporaries().is_empty(), "{signal}: {:?}", temporaries());
        assert!(!target.exists(), "{signal}: a half-written target");
    }
    assert!(interrupted > 0, "every run finished before its signal");
}

#[test]
fn configurations_go_to_npy_or_xyz_files_only() {
    let dir = folder("hostile_formats");
    for name in ["samples.txt", "samples.csv", "samples.NPZ"] {
        let out = dir.join(name);
        for args in [
            vec!["mcmc", "--system", "dw4", "-n", "8", "--out", s(&out)],
            vec!["sample", "--model", MODEL_DW4, "-n", "8", "--out", s(&out)],
        ] {
            let r = eqflow_within(10, &args);
            assert_refused(
                &r,
                &args,
                &["--out", "eqflow writes configurations as .npy"],
            );
            assert!(!out.exists(), "{args:?} wrote {name}");
        }
    }
    // Either case of the two formats, and a bare name (a .npy file), are written.
    for name in ["a.NPY", "b.Xyz", "bare"] {
        let out = dir.join(name);
        let args = ["mcmc", "--system", "dw4", "-n", "8", "--out", s(&out), "-q"];
        let r = eqflow_within(30, &args);
        assert!(r.status.success(), "{args:?}: {}", stderr(&r));
        assert!(out.exists(), "{name}");
    }
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A huge thread count and a Dormand–Prince setting that cannot finish: a fast, clear
/// outcome, never a panic, an abort or a hang.
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
    let one = eqflow_within_env(60, &[("RAYON_NUM_THREADS", "1")], &as_str(&one_args));
    assert!(one.status.success(), "{}", stderr(&one));
    for threads in ["5000", "20000"] {
        let out = dir.join(format!("t{threads}.npy"));
        let many_args = args(&out);
        let run = eqflow_within_env(30, &[("RAYON_NUM_THREADS", threads)], &as_str(&many_args));
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
    // A value rayon would ignore silently is named; 0 (rayon's "the default") is not.
    for (threads, named) in [("abc", true), ("-1", true), ("2.5", true), ("0", false)] {
        let out = dir.join("t_odd.npy");
        let run = eqflow_within_env(30, &[("RAYON_NUM_THREADS", threads)], &as_str(&args(&out)));
        let err = stderr(&run);
        assert!(run.status.success(), "{threads}: {err}");
        assert_eq!(
            err.contains("is not a number of threads"),
            named,
            "{threads}: {err}"
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&reference).unwrap()
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
        let path = written(&dir, format!("{name}.json"), &model.to_string());
        let out = dir.join("o.npy");
        let run = eqflow_within(
            30,
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

#[test]
fn a_path_that_is_not_utf8_is_refused_before_any_work() {
    // Before: `sample`, `mcmc`, `train` and `demo` did the work, wrote their files and then
    // panicked putting the path into the JSON report.
    use std::os::unix::ffi::OsStrExt;
    let dir = folder("hostile_non_utf8");
    let bad = dir.join(std::ffi::OsStr::from_bytes(b"bad\xff.npy"));
    let bad_dir = dir.join(std::ffi::OsStr::from_bytes(b"demo\xff"));
    let data = dw4_data(&dir, "64");
    let bad_args: [&[&std::ffi::OsStr]; 5] = [
        &[
            "sample".as_ref(),
            "--model".as_ref(),
            MODEL_DW4.as_ref(),
            "-n".as_ref(),
            "5".as_ref(),
            "--out".as_ref(),
            bad.as_os_str(),
        ],
        &[
            "mcmc".as_ref(),
            "--system".as_ref(),
            "dw4".as_ref(),
            "-n".as_ref(),
            "5".as_ref(),
            "--out".as_ref(),
            bad.as_os_str(),
        ],
        &[
            "train".as_ref(),
            "--system".as_ref(),
            "dw4".as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
            "--epochs".as_ref(),
            "1".as_ref(),
            "--out".as_ref(),
            bad.as_os_str(),
        ],
        &[
            "eval".as_ref(),
            "--model".as_ref(),
            MODEL_DW4.as_ref(),
            "--data".as_ref(),
            bad.as_os_str(),
        ],
        &["demo".as_ref(), "--out-dir".as_ref(), bad_dir.as_os_str()],
    ];
    for args in bad_args {
        let out = Command::new(env!("CARGO_BIN_EXE_eqflow"))
            .args(args)
            .arg("-q")
            .output()
            .expect("eqflow runs");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("invalid UTF-8"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "dw4.npy")
        .collect();
    assert!(
        left.is_empty(),
        "files written before the refusal: {left:?}"
    );
}

#[test]
fn a_system_file_must_be_a_regular_file_of_bounded_size() {
    // Before: `--system /dev/zero` grew memory without bound and a FIFO without a writer hung.
    let dir = folder("hostile_system_special");
    let fifo = dir.join("fifo.json");
    let made = Command::new("mkfifo").arg(&fifo).status();
    let mut paths = vec!["/dev/zero".to_string(), s(&dir).to_string()];
    if made.is_ok_and(|status| status.success()) {
        paths.push(s(&fifo).to_string());
    }
    let huge = dir.join("huge.json");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(eqflow::system::MAX_SYSTEM_FILE_BYTES + 1)
        .unwrap();
    for path in &paths {
        let out_file = dir.join("out.npy");
        let args = ["mcmc", "--system", path, "-n", "5", "--out", s(&out_file)];
        let out = eqflow_within(20, &args);
        assert_refused(&out, &args, &["system file", "not a regular file"]);
    }
    let out_file = dir.join("out.npy");
    let args = [
        "mcmc",
        "--system",
        s(&huge),
        "-n",
        "5",
        "--out",
        s(&out_file),
    ];
    let out = eqflow_within(20, &args);
    assert_refused(&out, &args, &["system file", "huge.json", "limit"]);
    assert!(!out_file.exists());
}

#[test]
fn reference_mcmc_steps_scale_with_the_system_length() {
    // Before: every chain started from the step 0.1 in any units, so an LJ-13 file with
    // r_m = 1e-10 accepted nothing and returned copies of its starting lattice.
    let dir = folder("hostile_mcmc_units");
    let system = written(
        &dir,
        "tiny.json",
        r#"{"n_particles": 13, "dim": 3, "kt": 1, "energy": {"kind": "lennard_jones",
            "epsilon": 2, "r_m": 1e-10, "oscillator_k": 1}}"#,
    );
    let out_file = dir.join("tiny.npy");
    let value = json(&eqflow(&[
        "mcmc",
        "--system",
        s(&system),
        "-n",
        "200",
        "--burnin",
        "2000",
        "--thin",
        "5",
        "--chains",
        "4",
        "--out",
        s(&out_file),
        "--json",
        "-q",
    ]));
    let acceptance = value["acceptance"].as_f64().unwrap();
    assert!((0.1..0.9).contains(&acceptance), "{value}");
}

#[test]
fn train_refuses_a_data_name_for_its_model_and_a_bad_schedule_it_would_not_use() {
    // Before: `--out model.npy` wrote JSON into a data-named file, and `--lambda-schedule
    // bogus` passed whenever --kl-epochs was 0.
    let dir = folder("hostile_train_args");
    let data = dw4_data(&dir, "64");
    for (extra, needles) in [
        (
            vec!["--out", "m.npy"],
            vec!["--out", "m.npy", "a model file is JSON"],
        ),
        (
            vec!["--out", "m.XYZ"],
            vec!["--out", "a model file is JSON"],
        ),
        (
            vec!["--out", "m.json", "--lambda-schedule", "bogus:xx"],
            vec!["--lambda-schedule"],
        ),
        (
            vec!["--out", "m.json", "--kl-weight-schedule", "nan"],
            vec!["--kl-weight-schedule"],
        ),
    ] {
        let out_path = dir.join(extra[1]);
        let mut args = vec![
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--epochs",
            "1",
            extra[0],
            s(&out_path),
        ];
        args.extend(&extra[2..]);
        let out = eqflow_within(20, &args);
        assert_refused(&out, &args, &needles);
        assert!(!out_path.exists(), "{args:?}");
    }
    // Valid flags the run will not use are named on stderr, not silently ignored.
    let model = dir.join("m.json");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--out",
            s(&model),
            "--n-train",
            "40",
            "--n-val",
            "20",
            "--epochs",
            "1",
            "-q",
        ];
        args.extend(extra);
        let out = eqflow(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stderr(&out)
    };
    let err = train(&["--lambda-schedule", "const:0.5"]);
    assert!(err.contains("--kl-epochs is 0: ignored"), "{err}");
    let err = train(&["--lipschitz-target", "0.8", "--lipschitz-penalty", "0"]);
    assert!(err.contains("the penalty is 0: ignored"), "{err}");
    let err = train(&[
        "--lambda-schedule",
        "const:0.5",
        "--kl-epochs",
        "1",
        "--lipschitz-target",
        "0.8",
    ]);
    assert!(!err.contains("ignored"), "{err}");
    // KL epochs whose λ never leaves 1 (pure ML) train no KL term: said, not silent.
    for (extra, silent) in [
        (vec!["--kl-epochs", "1"], false),
        (
            vec!["--kl-epochs", "2", "--lambda-schedule", "const:1"],
            false,
        ),
        (vec!["--kl-epochs", "2"], true),
    ] {
        let err = train(&extra);
        assert_eq!(!err.contains("no KL term"), silent, "{extra:?}: {err}");
    }
    // The deprecated flag's schedule (it takes 1 − λ) is named as the λ it gives.
    let err = train(&["--kl-epochs", "2", "--kl-weight-schedule", "const:0"]);
    assert!(
        err.contains("no KL term") && err.contains("λ schedule const:1"),
        "{err}"
    );
    // A validation set smaller than asked for, or none for --validate-every, is said.
    let validated = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--system",
            "dw4",
            "--data",
            s(&data),
            "--out",
            s(&model),
            "--n-train",
            "40",
            "--epochs",
            "1",
            "-q",
        ];
        args.extend(extra);
        let out = eqflow(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stderr(&out)
    };
    let err = validated(&["--n-val", "100"]);
    assert!(
        err.contains("--n-val 100") && err.contains("validating on 24"),
        "{err}"
    );
    let err = validated(&["--n-val", "0", "--validate-every", "5"]);
    assert!(err.contains("--validate-every is given"), "{err}");
    let err = validated(&["--n-val", "24", "--validate-every", "5"]);
    assert!(
        !err.contains("--n-val") && !err.contains("--validate-every"),
        "{err}"
    );
    // The default --n-val (1000) shrinks to what the file holds without a word.
    assert!(!validated(&[]).contains("--n-val"));
}

#[test]
fn sample_names_a_log_w_file_left_from_an_earlier_run() {
    // Before: a model without a system replaced x.npy and x_log_q.npy but silently left the
    // earlier run's x_log_w.npy beside them.
    let dir = folder("hostile_stale_log_w");
    let out_file = dir.join("x.npy");
    json(&eqflow(&[
        "sample",
        "--model",
        MODEL_DW4,
        "-n",
        "5",
        "--out",
        s(&out_file),
        "--json",
        "-q",
    ]));
    let log_w = dir.join("x_log_w.npy");
    assert!(log_w.exists());
    let mut model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(MODEL_DW4).unwrap()).unwrap();
    model.as_object_mut().unwrap().remove("system");
    let bare = written(&dir, "bare.json", &model.to_string());
    let out = eqflow(&[
        "sample",
        "--model",
        s(&bare),
        "-n",
        "3",
        "--out",
        s(&out_file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("x_log_w.npy") && err.contains("earlier run"),
        "{err}"
    );
}

#[test]
fn a_negative_kl_estimate_is_flagged() {
    // Before: data scaled by 1e10 gave "KL(data‖flow) -1.6e42" with exit 0 and no word.
    let dir = folder("hostile_negative_kl");
    let data = dir.join("far.npy");
    let mut rng = 1u64;
    let x: Vec<f64> = (0..10 * 8)
        .map(|_| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1e10
        })
        .collect();
    write_dw4(&data, &x);
    let out = eqflow(&[
        "eval",
        "--model",
        MODEL_DW4,
        "--data",
        s(&data),
        "--system",
        "dw4",
        "--n-samples",
        "100",
        "-q",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let text = stdout(&out);
    if text.contains("KL(data‖flow) -") {
        assert!(err.contains("which no flow can give"), "{text}\n{err}");
    }
    assert!(
        text.contains("KL(data‖flow) -"),
        "the case this test is about: {text}"
    );
    // The numbers of order 1e42 are printed as such, not as 43 digits and four zeros.
    for line in text.lines().chain(err.lines()) {
        assert!(
            !line
                .chars()
                .collect::<Vec<_>>()
                .windows(20)
                .any(|w| w.iter().all(char::is_ascii_digit)),
            "a number printed with 20 digits or more: {line}"
        );
    }
    let scientific =
        |token: &str| token.contains('e') && token.parse::<f64>().is_ok_and(|x| x.abs() >= 1e9);
    assert!(text.split_whitespace().any(scientific), "{text}");
}

#[test]
fn a_refused_repro_model_leaves_no_output_folder_and_is_named() {
    // Before: the folder was created first, and a model file out of range was refused without
    // its name.
    let dir = folder("hostile_repro_model");
    let out_dir = dir.join("never");
    let mut model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(MODEL_DW4).unwrap()).unwrap();
    model["prior_sigma"] = serde_json::json!(0.0);
    let bad = written(&dir, "sigma0.json", &model.to_string());
    for (model, needle) in [(MODEL_DW4, "DW-2 model"), (s(&bad), "sigma0.json")] {
        let args = [
            "repro",
            "reweighting",
            "--quick",
            "--out",
            s(&out_dir),
            "--model",
            model,
        ];
        let out = eqflow_within(30, &args);
        assert_refused(&out, &args, &[needle]);
        assert!(!out_dir.exists(), "{args:?}");
    }
}
