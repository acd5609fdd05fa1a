//! Generates the C header `eqflow.h` from `src/ffi/` with cbindgen.
//!
//! The header is always written to `$OUT_DIR/eqflow.h`. The committed copy `include/eqflow.h`
//! is rewritten only when `EQFLOW_UPDATE_HEADER=1`, so an ordinary build never modifies the
//! source tree; `tests/header.rs` fails when the committed copy is stale.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=EQFLOW_UPDATE_HEADER");
    println!("cargo:rerun-if-env-changed=EQFLOW_SONAME");

    // `make install` links the shared library with a soname (libeqflow.so.<ABI version>), so
    // that programs record the ABI they were built against. Plain cargo builds leave it out:
    // programs linked against target/*/libeqflow.so then find that very file at run time.
    if let Ok(soname) = env::var("EQFLOW_SONAME") {
        let elf = env::var("CARGO_CFG_TARGET_OBJECT_FORMAT").map_or_else(
            |_| env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os != "macos" && os != "windows"),
            |format| format == "elf",
        );
        if elf && !soname.is_empty() {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
        }
    }

    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .unwrap_or_else(|error| panic!("cannot read cbindgen.toml: {error}"));
    // Only src/ffi is parsed (cbindgen follows its `mod` declarations): the header is the C
    // API and nothing else, and generation does not slow down as the crate grows.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src").join("ffi").join("mod.rs"))
        .generate()
        .unwrap_or_else(|error| panic!("cbindgen failed on src/ffi: {error}"));

    bindings.write_to_file(out_dir.join("eqflow.h"));
    if env::var("EQFLOW_UPDATE_HEADER").as_deref() == Ok("1") {
        bindings.write_to_file(root.join("include").join("eqflow.h"));
    }
}
