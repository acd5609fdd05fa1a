//! `make install PREFIX=…` into a temporary prefix, then C, C++ and Fortran programs built
//! against the installed library the way a simulation code would: through pkg-config.
//!
//! The Makefile builds the release profile into this build's target directory (the first run
//! compiles it, later runs are no-ops). Skipped, with a message, when make or pkg-config is
//! missing; the Fortran build is skipped when gfortran is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "command failed: {command:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn has_program(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// `target/`, two levels above this test executable (`target/<profile>/deps/…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.ancestors()
        .nth(3)
        .expect("the test executable lives in target/<profile>/deps")
        .to_owned()
}

/// `pkg-config <args> eqflow` against the installed prefix, split into arguments.
fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let output = run(Command::new("pkg-config")
        .args(args)
        .arg("eqflow")
        .env("PKG_CONFIG_PATH", prefix.join("lib").join("pkgconfig")));
    stdout(&output)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Runs a program as a user would (without cargo's LD_LIBRARY_PATH); returns stdout.
fn run_program(binary: &Path, args: &[&str]) -> String {
    stdout(&run(Command::new(binary)
        .args(args)
        .env_remove("LD_LIBRARY_PATH")))
}

fn ldd(binary: &Path) -> String {
    Command::new("ldd")
        .arg(binary)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .map(|output| stdout(&output))
        .unwrap_or_default()
}

#[test]
fn make_install_then_build_against_pkg_config() {
    if !has_program("make") || !has_program("pkg-config") {
        println!("skipped: make or pkg-config is not installed");
        return;
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("install");
    let _ = std::fs::remove_dir_all(&work);
    let prefix = work.join("prefix");
    std::fs::create_dir_all(&prefix).unwrap();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new("make")
        .arg("-C")
        .arg(manifest_dir())
        .arg("install")
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("CARGO={}", cargo.to_string_lossy()))
        .arg(format!("CARGO_TARGET_DIR={}", target_dir().display())));

    // The layout the Makefile promises.
    let lib = prefix.join("lib");
    let include = prefix.join("include");
    let version = env!("CARGO_PKG_VERSION");
    for file in [
        lib.join(format!("libeqflow.so.{version}")),
        lib.join("libeqflow.a"),
        lib.join("pkgconfig").join("eqflow.pc"),
        include.join("eqflow.h"),
        include.join("eqflow.hpp"),
        include.join("eqflow.f90"),
    ] {
        assert!(file.is_file(), "{} was not installed", file.display());
    }
    let link = |name: &str| std::fs::read_link(lib.join(name)).ok();
    let soname = link("libeqflow.so").expect("libeqflow.so is a symlink");
    let soname = soname.to_str().unwrap().to_owned();
    assert_eq!(
        link(&soname).map(|p| p.to_string_lossy().into_owned()),
        Some(format!("libeqflow.so.{version}"))
    );
    // The installed headers are the repository's.
    for header in ["eqflow.h", "eqflow.hpp", "eqflow.f90"] {
        assert_eq!(
            std::fs::read(include.join(header)).unwrap(),
            std::fs::read(manifest_dir().join("include").join(header)).unwrap(),
            "{header}"
        );
    }
    if let Ok(output) = Command::new("readelf")
        .args(["-d"])
        .arg(lib.join(format!("libeqflow.so.{version}")))
        .output()
    {
        let dynamic = String::from_utf8_lossy(&output.stdout);
        assert!(
            dynamic.contains(&format!("Library soname: [{soname}]")),
            "the library's soname is not {soname}:\n{dynamic}"
        );
    }
    assert_eq!(pkg_config(&prefix, &["--modversion"]), [version]);

    let cflags = pkg_config(&prefix, &["--cflags"]);
    let libs = pkg_config(&prefix, &["--libs"]);
    let rpath = format!("-Wl,-rpath,{}", lib.display());
    let example = |name: &str| manifest_dir().join("c_examples").join(name);

    // The soname carries the ABI version that the library reports.
    let abi_source = work.join("abi.c");
    std::fs::write(
        &abi_source,
        "#include <eqflow.h>\n#include <stdio.h>\n\
         int main(void) { printf(\"%d %s\\n\", (int)eqf_abi_version(), eqf_version()); return 0; }\n",
    )
    .unwrap();
    let abi = work.join("abi");
    run(Command::new("cc")
        .args(&cflags)
        .arg(&abi_source)
        .args(&libs)
        .arg(&rpath)
        .arg("-o")
        .arg(&abi));
    let reported = run_program(&abi, &[]);
    assert_eq!(
        reported,
        format!("{} {version}", &soname["libeqflow.so.".len()..])
    );

    // A C simulation program, shared and static.
    let mc = work.join("mc_dw4");
    run(Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror"])
        .args(&cflags)
        .arg(example("mc_dw4.c"))
        .args(&libs)
        .arg(&rpath)
        .arg("-lm")
        .arg("-o")
        .arg(&mc));
    let listing = ldd(&mc);
    assert!(
        listing.is_empty()
            || listing.contains(&format!("{} => {}", soname, lib.join(&soname).display())),
        "mc_dw4 does not load the installed {soname}:\n{listing}"
    );
    assert!(run_program(&mc, &["--cycles", "20"]).contains("flow moves:"));

    let static_libs: Vec<String> = pkg_config(&prefix, &["--static", "--libs"])
        .into_iter()
        .map(|arg| {
            if arg == "-leqflow" {
                "-Wl,-Bstatic,-leqflow,-Bdynamic".to_owned()
            } else {
                arg
            }
        })
        .collect();
    let mc_static = work.join("mc_dw4_static");
    run(Command::new("cc")
        .args(&cflags)
        .arg(example("mc_dw4.c"))
        .args(&static_libs)
        .arg("-lm")
        .arg("-o")
        .arg(&mc_static));
    assert!(!ldd(&mc_static).contains("libeqflow"));
    assert!(run_program(&mc_static, &["--cycles", "20"]).contains("flow moves:"));

    // C++ with the RAII wrapper.
    let cpp = work.join("cpp_move");
    run(Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .args(&cflags)
        .arg(example("cpp_move.cpp"))
        .args(&libs)
        .arg(&rpath)
        .arg("-o")
        .arg(&cpp));
    assert!(run_program(&cpp, &["10"]).contains("cpp_move: 0 failed"));

    // Fortran with the installed module source.
    if has_program("gfortran") {
        let fortran = work.join("fortran_dw4");
        run(Command::new("gfortran")
            .args(["-std=f2018", "-Wall", "-Werror"])
            .arg("-J")
            .arg(&work)
            .arg(include.join("eqflow.f90"))
            .arg(example("fortran_dw4.f90"))
            .args(&libs)
            .arg(&rpath)
            .arg("-o")
            .arg(&fortran));
        assert!(run_program(&fortran, &["20"]).contains("fortran_dw4: ok"));
    } else {
        println!("Fortran part skipped: gfortran is not installed");
    }

    run(Command::new("make")
        .arg("-C")
        .arg(manifest_dir())
        .arg("uninstall")
        .arg(format!("PREFIX={}", prefix.display())));
    assert!(!lib.join("libeqflow.a").exists() && !include.join("eqflow.h").exists());
}
