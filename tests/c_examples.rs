//! Builds every program in `c_examples/` as C99 and as C++17, links each once against the shared
//! library (`libeqflow.so`, found through an rpath) and once against the static library
//! (`libeqflow.a`), runs it and requires exit status 0.
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

const C_FLAGS: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const CXX_FLAGS: &[&str] = &["-std=c++17", "-x", "c++", "-Wall", "-Wextra", "-Werror"];
/// What a Rust staticlib needs from the system besides libc.
const STATIC_SYSTEM_LIBS: &[&str] = &["-lpthread", "-ldl", "-lm"];

/// The programs in `c_examples/`; `every_example_is_tested` keeps this list complete.
const EXAMPLES: &[&str] = &["dw4_basic", "errors"];

#[derive(Clone, Copy, Debug)]
enum Language {
    C,
    Cxx,
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

/// Compiles, links and runs one example; panics with the full output on any failure.
fn build_and_run(example: &str, language: Language, link: Link) -> String {
    let libraries = libraries();
    let source = manifest_dir()
        .join("c_examples")
        .join(format!("{example}.c"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_examples");
    std::fs::create_dir_all(&out_dir).expect("create the build directory");
    let binary = out_dir.join(format!("{example}-{language:?}-{link:?}").to_lowercase());

    let (compiler, flags) = match language {
        Language::C => ("cc", C_FLAGS),
        Language::Cxx => ("c++", CXX_FLAGS),
    };
    let mut command = Command::new(compiler);
    command
        .args(flags)
        .arg(format!(
            "-DEQF_EXPECTED_VERSION=\"{}\"",
            env!("CARGO_PKG_VERSION")
        ))
        .arg("-I")
        .arg(manifest_dir().join("include"))
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

    let mut command = Command::new(&binary);
    command.env_remove("LD_LIBRARY_PATH");
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "{example} ({language:?}, {link:?}) failed\n{}",
        describe(&command, &output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{example} ({language:?}, {link:?}):\n{stdout}");
    stdout
}

#[test]
fn every_example_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(manifest_dir().join("c_examples"))
        .expect("read c_examples/")
        .filter_map(|entry| {
            let path = entry.expect("directory entry").path();
            (path.extension()? == "c").then(|| path.file_stem()?.to_str().map(str::to_owned))?
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
