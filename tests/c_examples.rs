//! Builds every program in `c_examples/` as C99 and as C++17, links each once against the shared
//! library (`libeqflow.so`, found through an rpath) and once against the static library
//! (`libeqflow.a`), runs it and requires exit status 0. C++ programs (`.cpp`, using the RAII
//! wrapper `include/eqflow.hpp`) are built as C++17 only; Fortran programs (`.f90`, using the
//! module in `include/eqflow.f90`) with gfortran when it is installed, and skipped (with a
//! message) otherwise. When valgrind is installed, every program also runs once under
//! `valgrind --leak-check=full` with small iteration counts, and must be clean. `cpp_model` and
//! `fortran_model` get the shipped `models/dw4.json` as `--model PATH`.
//!
//! The libraries are the ones this `cargo test` run built: cargo compiles the crate's lib
//! target with all its crate types (rlib, cdylib, staticlib) in `target/<profile>/deps/`, the
//! directory of this test executable, but does not copy the cdylib and staticlib up to
//! `target/<profile>/` (only `cargo build` does that, and those copies may be stale or from
//! another profile). If they are missing, they are built with `cargo build --lib` in the same
//! profile. Build products go to `CARGO_TARGET_TMPDIR`, never into the source tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

// `-pthread` for threads.c (harmless elsewhere).
const C_FLAGS: &[&str] = &[
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-pthread",
];
const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-x",
    "c++",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pthread",
];
const CXX_SOURCE_FLAGS: &[&str] = &[
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-pthread",
];
const FORTRAN_FLAGS: &[&str] = &["-std=f2018", "-fcheck=all", "-Wall", "-Werror"];
/// What a Rust staticlib needs from the system besides libc.
const STATIC_SYSTEM_LIBS: &[&str] = &["-lpthread", "-ldl", "-lm"];

/// The programs in `c_examples/` (file names); `every_example_is_tested` keeps this list
/// complete.
const EXAMPLES: &[&str] = &[
    "cpp_model.cpp",
    "cpp_move.cpp",
    "dw4_basic.c",
    "errors.c",
    "flow_options.c",
    "fortran_dw4.f90",
    "fortran_model.f90",
    "fortran_own_system.f90",
    "mc_dw4.c",
    "threads.c",
    "train_dw4.c",
];

/// The shipped trained DW-4 model, which `cpp_model` and `fortran_model` load.
const DW4_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json");

#[derive(Clone, Copy, Debug)]
enum Language {
    /// A `.c` program as C99.
    C,
    /// A `.c` program as C++17.
    Cxx,
    /// A `.cpp` program (C++17).
    CxxSource,
    /// A `.f90` program, compiled together with `include/eqflow.f90`.
    Fortran,
}

impl Language {
    fn extension(self) -> &'static str {
        match self {
            Language::C | Language::Cxx => "c",
            Language::CxxSource => "cpp",
            Language::Fortran => "f90",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Shared,
    Static,
}

struct Libraries {
    shared: PathBuf,
    static_: PathBuf,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command, returning its output or a description of why it could not start.
fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn describe(command: &Command, output: &Output) -> String {
    format!(
        "command: {command:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `target/<profile>/deps`, the directory of this test executable.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .expect("test executable has a directory")
        .to_owned()
}

fn find_libraries() -> Libraries {
    let deps = deps_dir();
    let shared = deps.join("libeqflow.so");
    let static_ = deps.join("libeqflow.a");
    let forced = std::env::var_os("EQFLOW_C_EXAMPLES_CARGO_BUILD").is_some();
    if !forced && shared.is_file() && static_.is_file() {
        return Libraries { shared, static_ };
    }
    build_libraries(&deps)
}

/// Fallback: `cargo build --lib` in the profile of this test run, reading the artifact paths
/// from cargo's JSON messages.
fn build_libraries(deps: &Path) -> Libraries {
    let profile_dir = deps.parent().expect("deps has a parent");
    let target_dir = profile_dir
        .parent()
        .expect("profile directory has a parent");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        // `cargo test` builds with the `test` profile, whose directory is `debug`.
        Some("debug") => "test".to_owned(),
        Some(name) => name.to_owned(),
        None => panic!("unexpected target layout: {}", deps.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--lib", "--message-format=json-render-diagnostics"])
        .args(["--profile", &profile])
        .arg("--manifest-path")
        .arg(manifest_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "building the libraries failed\n{}",
        describe(&command, &output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut shared = None;
    let mut static_ = None;
    for line in stdout.lines().filter(|line| {
        line.contains("\"reason\":\"compiler-artifact\"") && line.contains("\"name\":\"eqflow\"")
    }) {
        // The file names are plain paths in a JSON string array; no escaping on our targets.
        for path in line.split('"').filter(|part| part.starts_with('/')) {
            if path.ends_with("/libeqflow.so") {
                shared = Some(PathBuf::from(path));
            } else if path.ends_with("/libeqflow.a") {
                static_ = Some(PathBuf::from(path));
            }
        }
    }
    match (shared, static_) {
        (Some(shared), Some(static_)) => Libraries { shared, static_ },
        _ => panic!(
            "cargo did not report libeqflow.so and libeqflow.a\n{}",
            describe(&command, &output)
        ),
    }
}

fn libraries() -> &'static Libraries {
    static LIBRARIES: OnceLock<Libraries> = OnceLock::new();
    LIBRARIES.get_or_init(find_libraries)
}

fn has_program(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Compiles and links one example; panics with the full output on any failure. Returns the
/// path of the program.
fn build(example: &str, language: Language, link: Link) -> PathBuf {
    build_with(example, language, link, &[])
}

/// [`build`] with extra compiler flags (such as sanitizers) before the example's own.
fn build_with(example: &str, language: Language, link: Link, extra: &[&str]) -> PathBuf {
    let libraries = libraries();
    let source = manifest_dir()
        .join("c_examples")
        .join(format!("{example}.{}", language.extension()));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_examples");
    std::fs::create_dir_all(&out_dir).expect("create the build directory");
    // Tests run in parallel and several build the same example: one file per build.
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let build_id = BUILDS.fetch_add(1, Ordering::Relaxed);
    let binary = out_dir.join(format!("{example}-{language:?}-{link:?}-{build_id}").to_lowercase());

    let (compiler, flags) = match language {
        Language::C => ("cc", C_FLAGS),
        Language::Cxx => ("c++", CXX_FLAGS),
        Language::CxxSource => ("c++", CXX_SOURCE_FLAGS),
        Language::Fortran => ("gfortran", FORTRAN_FLAGS),
    };
    let mut command = Command::new(compiler);
    command.args(extra).args(flags);
    if let Language::Fortran = language {
        // The module is shipped as source: compile it with the program, its .mod file into a
        // directory of this build only (tests run in parallel).
        let module_dir = binary.with_extension("mod.d");
        std::fs::create_dir_all(&module_dir).expect("create the module directory");
        command
            .arg("-J")
            .arg(&module_dir)
            .arg(manifest_dir().join("include").join("eqflow.f90"));
    } else {
        command
            .arg(format!(
                "-DEQF_EXPECTED_VERSION=\"{}\"",
                env!("CARGO_PKG_VERSION")
            ))
            .arg("-I")
            .arg(manifest_dir().join("include"));
    }
    command
        .arg(&source)
        // Back to guessing the language from the extension, so libraries are not read as C++.
        .args(["-x", "none"])
        .arg("-o")
        .arg(&binary);
    match link {
        Link::Shared => {
            // `-L dir -leqflow` picks libeqflow.so over libeqflow.a; the rpath finds it at run
            // time without LD_LIBRARY_PATH.
            let dir = libraries.shared.parent().expect("library directory");
            command
                .arg("-L")
                .arg(dir)
                .arg("-leqflow")
                .arg(format!("-Wl,-rpath,{}", dir.display()));
        }
        Link::Static => {
            command.arg(&libraries.static_).args(STATIC_SYSTEM_LIBS);
        }
    }
    command.arg("-lm");
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "compiling {example} ({language:?}, {link:?}) failed\n{}",
        describe(&command, &output)
    );

    // The shared build must load exactly the library under test, the static one none. Cargo
    // runs tests with LD_LIBRARY_PATH pointing at target/<profile>, where a stale libeqflow.so
    // from an earlier `cargo build` may sit, and LD_LIBRARY_PATH outranks the RUNPATH that the
    // linker records: run the programs as a user would, without it.
    if let Ok(output) = Command::new("ldd")
        .arg(&binary)
        .env_remove("LD_LIBRARY_PATH")
        .output()
    {
        let listing = String::from_utf8_lossy(&output.stdout);
        match link {
            Link::Shared => assert!(
                listing.contains(&format!("=> {}", libraries.shared.display())),
                "{} does not load {}:\n{listing}",
                binary.display(),
                libraries.shared.display()
            ),
            Link::Static => assert!(
                !listing.contains("libeqflow"),
                "{} links libeqflow dynamically:\n{listing}",
                binary.display()
            ),
        }
    }
    binary
}

/// Runs a built program (under `valgrind` if given) and requires exit status 0; returns stdout.
fn run_program(binary: &Path, args: &[&str], valgrind: Option<&[String]>) -> String {
    let mut command = match valgrind {
        Some(valgrind_args) => {
            let mut command = Command::new("valgrind");
            command.args(valgrind_args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.args(args).env_remove("LD_LIBRARY_PATH");
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "{} failed\n{}",
        binary.display(),
        describe(&command, &output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{command:?}:\n{stdout}");
    stdout
}

/// Compiles, links and runs one example; panics with the full output on any failure.
fn build_and_run(example: &str, language: Language, link: Link) -> String {
    run_program(&build(example, language, link), &[], None)
}

/// Builds and runs a Fortran example, or says why it was skipped.
fn fortran(example: &str, link: Link) -> Option<String> {
    if !has_program("gfortran") {
        println!("skipped {example} ({link:?}): gfortran is not installed");
        return None;
    }
    Some(build_and_run(example, Language::Fortran, link))
}

#[test]
fn every_example_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(manifest_dir().join("c_examples"))
        .expect("read c_examples/")
        .filter_map(|entry| {
            let path = entry.expect("directory entry").path();
            let extension = path.extension()?.to_str()?;
            ["c", "cpp", "f90"]
                .contains(&extension)
                .then(|| path.file_name()?.to_str().map(str::to_owned))?
        })
        .collect();
    found.sort();
    assert_eq!(found, EXAMPLES, "update EXAMPLES in tests/c_examples.rs");
}

#[test]
fn dw4_basic_c_shared() {
    let stdout = build_and_run("dw4_basic", Language::C, Link::Shared);
    assert!(stdout.contains("ESS / n"), "{stdout}");
}

#[test]
fn dw4_basic_c_static() {
    build_and_run("dw4_basic", Language::C, Link::Static);
}

#[test]
fn dw4_basic_cxx_shared() {
    build_and_run("dw4_basic", Language::Cxx, Link::Shared);
}

#[test]
fn dw4_basic_cxx_static() {
    build_and_run("dw4_basic", Language::Cxx, Link::Static);
}

#[test]
fn errors_c_shared() {
    let stdout = build_and_run("errors", Language::C, Link::Shared);
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn errors_c_static() {
    build_and_run("errors", Language::C, Link::Static);
}

#[test]
fn errors_cxx_shared() {
    build_and_run("errors", Language::Cxx, Link::Shared);
}

#[test]
fn errors_cxx_static() {
    build_and_run("errors", Language::Cxx, Link::Static);
}

#[test]
fn flow_options_c_shared() {
    let stdout = build_and_run("flow_options", Language::C, Link::Shared);
    assert!(stdout.contains("flow_options: 0 failed"), "{stdout}");
    assert!(stdout.contains("fitted distance range"), "{stdout}");
}

#[test]
fn flow_options_c_static() {
    build_and_run("flow_options", Language::C, Link::Static);
}

#[test]
fn flow_options_cxx_shared() {
    build_and_run("flow_options", Language::Cxx, Link::Shared);
}

#[test]
fn flow_options_cxx_static() {
    build_and_run("flow_options", Language::Cxx, Link::Static);
}

#[test]
fn mc_dw4_c_shared() {
    let stdout = build_and_run("mc_dw4", Language::C, Link::Shared);
    assert!(stdout.contains("flow moves:"), "{stdout}");
    assert!(stdout.contains("short pairs"), "{stdout}");
}

#[test]
fn mc_dw4_c_static() {
    build_and_run("mc_dw4", Language::C, Link::Static);
}

#[test]
fn mc_dw4_cxx_shared() {
    build_and_run("mc_dw4", Language::Cxx, Link::Shared);
}

#[test]
fn mc_dw4_cxx_static() {
    build_and_run("mc_dw4", Language::Cxx, Link::Static);
}

#[test]
fn mc_dw4_with_the_shipped_model_makes_frequent_global_moves() {
    let binary = build("mc_dw4", Language::C, Link::Shared);
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json");
    let output = Command::new(&binary)
        .args(["--model", model, "--cycles", "2000"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run mc_dw4");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "flow moves:  A / P accepted (R), …": the trained flow is accepted far more often than
    // the untrained one (which is accepted ~0.3% of the time).
    let line = stdout
        .lines()
        .find(|l| l.starts_with("flow moves:"))
        .expect("flow move line");
    let rate: f64 = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .expect("acceptance rate");
    assert!(rate > 0.02, "{line}");
    // A missing model is a clear error.
    let output = Command::new(&binary)
        .args(["--model", "/nonexistent/model.json", "--cycles", "1"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run mc_dw4");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read model file"));
}

#[test]
fn threads_c_shared() {
    let stdout = build_and_run("threads", Language::C, Link::Shared);
    assert!(
        stdout.contains("identical to the sequential run"),
        "{stdout}"
    );
}

#[test]
fn threads_c_static() {
    build_and_run("threads", Language::C, Link::Static);
}

#[test]
fn threads_cxx_shared() {
    build_and_run("threads", Language::Cxx, Link::Shared);
}

#[test]
fn threads_cxx_static() {
    build_and_run("threads", Language::Cxx, Link::Static);
}

#[test]
fn train_dw4_c_shared() {
    let stdout = build_and_run("train_dw4", Language::C, Link::Shared);
    assert!(stdout.contains("train_dw4: ok"), "{stdout}");
    // The progress callback printed every epoch of both phases on the program's stdout.
    assert!(stdout.contains("ML     epoch  8/8"), "{stdout}");
    assert!(stdout.contains("train KL"), "{stdout}");
}

#[test]
fn train_dw4_c_static() {
    build_and_run("train_dw4", Language::C, Link::Static);
}

#[test]
fn train_dw4_cxx_shared() {
    build_and_run("train_dw4", Language::Cxx, Link::Shared);
}

#[test]
fn train_dw4_cxx_static() {
    build_and_run("train_dw4", Language::Cxx, Link::Static);
}

#[test]
fn cpp_move_shared() {
    let stdout = build_and_run("cpp_move", Language::CxxSource, Link::Shared);
    assert!(stdout.contains("cpp_move: 0 failed"), "{stdout}");
}

#[test]
fn cpp_move_static() {
    build_and_run("cpp_move", Language::CxxSource, Link::Static);
}

/// Builds and runs `cpp_model` or `fortran_model` on the shipped DW-4 model, with a copy of the
/// model saved under `CARGO_TARGET_TMPDIR` (one file per run: tests run in parallel) and
/// reloaded by the program. The programs fail by themselves on any failed check.
fn run_model_example(example: &str, language: Language, link: Link) -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let binary = build(example, language, link);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_examples");
    let save = dir.join(format!(
        "{example}-{link:?}-{}.json",
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let save = save.to_str().expect("UTF-8 path");
    let stdout = run_program(&binary, &["--model", DW4_MODEL, "--save", save], None);
    let saved = std::fs::read_to_string(save).expect("the program saved the model");
    assert!(saved.contains("\"eqflow-model\""), "{saved}");
    std::fs::remove_file(save).expect("remove the saved model");
    stdout
}

#[test]
fn cpp_model_shared() {
    let stdout = run_model_example("cpp_model", Language::CxxSource, Link::Shared);
    assert!(stdout.contains("cpp_model: 0 failed"), "{stdout}");
    // The shipped model is trained with the certificate penalty (models/make.sh), so its
    // 20-step grid is certified; the program checks that the step count it reports is the
    // smallest certified one.
    assert!(stdout.contains("step certificate: certified"), "{stdout}");
}

#[test]
fn cpp_model_static() {
    run_model_example("cpp_model", Language::CxxSource, Link::Static);
}

#[test]
fn fortran_model_shared() {
    if !has_program("gfortran") {
        println!("skipped fortran_model: gfortran is not installed");
        return;
    }
    let stdout = run_model_example("fortran_model", Language::Fortran, Link::Shared);
    assert!(stdout.contains("fortran_model: ok"), "{stdout}");
    let version = format!("eqflow {} from Fortran", env!("CARGO_PKG_VERSION"));
    assert!(stdout.contains(&version), "{stdout}");
}

#[test]
fn fortran_model_static() {
    if !has_program("gfortran") {
        println!("skipped fortran_model: gfortran is not installed");
        return;
    }
    run_model_example("fortran_model", Language::Fortran, Link::Static);
}

/// Without a model the model examples are a usage error, not a silent success.
#[test]
fn model_examples_require_a_model() {
    let binary = build("cpp_model", Language::CxxSource, Link::Shared);
    let output = Command::new(&binary)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run cpp_model");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn fortran_dw4_shared() {
    if let Some(stdout) = fortran("fortran_dw4", Link::Shared) {
        assert!(stdout.contains("fortran_dw4: ok"), "{stdout}");
    }
}

#[test]
fn fortran_dw4_static() {
    fortran("fortran_dw4", Link::Static);
}

#[test]
fn fortran_own_system_shared() {
    if let Some(stdout) = fortran("fortran_own_system", Link::Shared) {
        assert!(stdout.contains("fortran_own_system: ok"), "{stdout}");
    }
}

/// Static linking, in the quick form (the full run above already checks the results).
#[test]
fn fortran_own_system_static() {
    if !has_program("gfortran") {
        println!("skipped fortran_own_system (Static): gfortran is not installed");
        return;
    }
    let binary = build("fortran_own_system", Language::Fortran, Link::Static);
    let stdout = run_program(&binary, &["--quick"], None);
    assert!(stdout.contains("fortran_own_system: ok"), "{stdout}");
}

/// Every example under memcheck (shared library, small iteration counts): no invalid reads or
/// writes, no use of uninitialised values, no leaks. tests/valgrind.supp suppresses glibc's
/// per-thread TLS blocks of threads alive at exit and crossbeam-epoch's per-thread registration
/// of rayon's workers, which memcheck calls "possibly lost" (the latter intermittently).
#[test]
fn examples_are_clean_under_valgrind() {
    if !has_program("valgrind") {
        println!("skipped: valgrind is not installed");
        return;
    }
    let valgrind_args: Vec<String> = vec![
        "--error-exitcode=1".into(),
        "--leak-check=full".into(),
        "--quiet".into(),
        format!(
            "--suppressions={}",
            manifest_dir().join("tests").join("valgrind.supp").display()
        ),
    ];
    let programs = quick_programs();
    // Two at a time: the machine may have few cores, and valgrind serialises each program.
    std::thread::scope(|scope| {
        for pair in programs.chunks(2) {
            let handles: Vec<_> = pair
                .iter()
                .map(|&(example, language, args)| {
                    let valgrind_args = &valgrind_args;
                    scope.spawn(move || {
                        let binary = build(example, language, Link::Shared);
                        run_program(&binary, args, Some(valgrind_args))
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("a program failed under valgrind");
            }
        }
    });
}

/// Every example built with AddressSanitizer and UndefinedBehaviorSanitizer (the host's side
/// instrumented, every allocation of the library intercepted; LeakSanitizer checks at exit),
/// in the quick forms valgrind runs: no invalid access, no undefined behaviour, no leak.
#[test]
fn examples_are_clean_under_sanitizers() {
    const SANITIZE: &[&str] = &[
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ];
    let probe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sanitizer_probe");
    let works = Command::new("cc")
        .args(SANITIZE)
        .args(["-x", "c", "-", "-o"])
        .arg(&probe)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"int main(void) { return 0; }\n")?;
            child.wait()
        })
        .is_ok_and(|status| status.success());
    if !works {
        println!("skipped: the C compiler cannot build with -fsanitize=address,undefined");
        return;
    }
    for (example, language, args) in quick_programs() {
        let binary = build_with(example, language, Link::Shared, SANITIZE);
        let stdout = run_program(&binary, args, None);
        assert!(!stdout.contains("runtime error"), "{example}: {stdout}");
    }
}

/// The examples in small, quick forms (for the memory checkers), as (name, language, args).
fn quick_programs() -> Vec<(&'static str, Language, &'static [&'static str])> {
    let mut programs: Vec<(&str, Language, &[&str])> = vec![
        ("dw4_basic", Language::C, &["20"]),
        ("errors", Language::C, &[]),
        ("flow_options", Language::C, &[]),
        ("mc_dw4", Language::C, &["--cycles", "5"]),
        ("threads", Language::C, &["--steps", "2"]),
        ("train_dw4", Language::C, &["--quick"]),
        ("cpp_move", Language::CxxSource, &["5"]),
        (
            "cpp_model",
            Language::CxxSource,
            &["--model", DW4_MODEL, "--quick"],
        ),
    ];
    if has_program("gfortran") {
        programs.push(("fortran_dw4", Language::Fortran, &["5"]));
        programs.push((
            "fortran_model",
            Language::Fortran,
            &["--model", DW4_MODEL, "--quick"],
        ));
        programs.push(("fortran_own_system", Language::Fortran, &["--quick"]));
    } else {
        println!("Fortran examples skipped under the memory checkers: gfortran is not installed");
    }
    programs
}

/// Function names declared in the committed header (identifiers followed by `(`, excluding
/// function-pointer typedefs and comments).
fn header_functions() -> Vec<String> {
    let header = std::fs::read_to_string(manifest_dir().join("include").join("eqflow.h"))
        .expect("read include/eqflow.h");
    let mut names = Vec::new();
    for line in header.lines() {
        let code = line.trim_start();
        if code.starts_with('*') || code.starts_with("/*") || code.starts_with("//") {
            continue;
        }
        for (start, _) in code.match_indices("eqf_") {
            let rest = &code[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let preceded_by_pointer = code[..start].ends_with("(*");
            if rest[end..].starts_with('(') && !preceded_by_pointer {
                names.push(rest[..end].to_owned());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The shared library exports exactly the functions of the header: nothing of Rust's standard
/// library or of the dependencies leaks into the host's symbol namespace, and no declared
/// function is missing.
#[test]
fn shared_library_exports_exactly_the_header_functions() {
    let mut command = Command::new("nm");
    command
        .args(["-D", "--defined-only"])
        .arg(&libraries().shared);
    let Ok(output) = command.output() else {
        println!("skipped: nm is not installed");
        return;
    };
    assert!(output.status.success(), "{}", describe(&command, &output));
    let listing = String::from_utf8_lossy(&output.stdout);
    let mut exported: Vec<String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect();
    exported.sort();
    let foreign: Vec<&String> = exported.iter().filter(|s| !s.starts_with("eqf_")).collect();
    assert!(foreign.is_empty(), "non-eqf_ symbols exported: {foreign:?}");
    let declared = header_functions();
    assert!(declared.len() > 20, "header scan found only {declared:?}");
    assert_eq!(
        exported, declared,
        "exported functions differ from the header's"
    );
}

/// The compiler and linker flags of Debian's LAMMPS library (`pkg-config liblammps`), or `None`
/// when it is not installed.
fn lammps_flags() -> Option<Vec<String>> {
    let output = Command::new("pkg-config")
        .args(["--cflags", "--libs", "liblammps"])
        .output()
        .ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    })
}

/// Builds `c_examples/lammps/lj13_lammps.c` (C99, against LAMMPS and the shared eqflow
/// library), or returns `None` when LAMMPS is not installed.
fn build_lj13_lammps() -> Option<PathBuf> {
    let lammps = lammps_flags()?;
    let dir = libraries().shared.parent().expect("library directory");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_examples");
    std::fs::create_dir_all(&out_dir).expect("create the build directory");
    let binary = out_dir.join("lj13_lammps");
    let mut command = Command::new("cc");
    command
        .args(C_FLAGS)
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(
            manifest_dir()
                .join("c_examples")
                .join("lammps")
                .join("lj13_lammps.c"),
        )
        .arg("-o")
        .arg(&binary)
        .args(&lammps)
        .arg("-L")
        .arg(dir)
        .arg("-leqflow")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-lm");
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "compiling lj13_lammps failed\n{}",
        describe(&command, &output)
    );
    Some(binary)
}

/// The number in parentheses on the line starting with `prefix`.
fn number_in_parentheses(stdout: &str, prefix: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{stdout}"));
    line.split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number in parentheses: {line}"))
}

/// Flow moves inside LAMMPS (LJ-13, energies from LAMMPS, cross-checked by the program against
/// eqflow's own LJ-13 energy to 1e-9 relative): a short run. The program fails by itself on
/// any energy disagreement; here its report must be complete and the trained flow's moves must
/// sometimes be accepted.
#[test]
fn lj13_lammps_flow_moves_with_lammps_energies() {
    let Some(binary) = build_lj13_lammps() else {
        println!("skipped: LAMMPS not installed");
        return;
    };
    let model = manifest_dir().join("models").join("lj13.json");
    let model = model.to_str().expect("UTF-8 path");
    let stdout = run_program(
        &binary,
        &[
            "--segments",
            "40",
            "--steps",
            "200",
            "--moves",
            "5",
            "--model",
            model,
        ],
        None,
    );
    let rate = number_in_parentheses(&stdout, "flow moves:");
    assert!(rate > 0.0, "{stdout}");
    // "energy check: n LAMMPS energies vs eqflow, max relative difference X (tolerance 1e-09)"
    let difference: f64 = stdout
        .lines()
        .find(|l| l.starts_with("energy check:"))
        .and_then(|l| l.split("max relative difference ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no energy check line:\n{stdout}"));
    assert!(difference <= 1e-9, "{stdout}");
    assert!(stdout.contains("distinct minima, MD + flow:"), "{stdout}");
    assert!(
        stdout.contains("distinct minima, plain MD, same wall time:"),
        "{stdout}"
    );

    // Invalid arguments are refused before LAMMPS sees any command.
    let output = Command::new(&binary)
        .args(["--segments", "0"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run lj13_lammps");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--segments"));
}
