//! The committed C header `include/eqflow.h` must equal the one build.rs generates from
//! `src/ffi/` (in `$OUT_DIR/eqflow.h`), and must declare only `eqf_*` / `EQF_*` names.

mod common;

use common::strip_c_comments;
use std::path::Path;

const REGENERATE: &str = "regenerate it with `EQFLOW_UPDATE_HEADER=1 cargo build` and commit \
                          include/eqflow.h";

fn committed() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/eqflow.h");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}; {REGENERATE}", path.display()))
}

fn generated() -> String {
    // Cargo sets OUT_DIR when compiling the integration tests of a package with a build script.
    let path = Path::new(env!("OUT_DIR")).join("eqflow.h");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

#[test]
fn committed_header_is_up_to_date() {
    let committed = committed();
    let generated = generated();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/eqflow.h is stale: it differs from the header generated from src/ffi \
             (first difference at line {}; committed {:?}, generated {:?}); {REGENERATE}",
            first_difference + 1,
            committed
                .lines()
                .nth(first_difference)
                .unwrap_or("<end of file>"),
            generated
                .lines()
                .nth(first_difference)
                .unwrap_or("<end of file>"),
        );
    }
}

/// Names the header declares: macros, typedefs and functions.
fn declared_names(header: &str) -> Vec<String> {
    let code = strip_c_comments(header);
    let mut names = Vec::new();
    let mut in_struct = false;
    for line in code.lines() {
        let line = line.trim();
        if in_struct {
            // `typedef struct { ... } name;`: the name follows the closing brace.
            if let Some(rest) = line.strip_prefix('}') {
                names.push(rest.trim().trim_end_matches(';').to_owned());
                in_struct = false;
            }
        } else if line == "typedef struct {" {
            in_struct = true;
        } else if let Some(rest) = line.strip_prefix("#define ") {
            names.push(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        } else if let Some(rest) = line.strip_prefix("typedef ") {
            // A function-pointer typedef, `typedef int32_t (*name)(args...`, may wrap its
            // arguments over several lines: its name is the one between `(*` and `)`.
            let name = match rest.split_once("(*") {
                Some((_, after)) => after.split(')').next(),
                None => rest.trim_end_matches(';').split_whitespace().last(),
            };
            names.push(name.unwrap_or_default().to_owned());
        }
    }
    // Functions: an identifier immediately followed by '(' at the start of a declaration.
    for (i, _) in code.match_indices('(') {
        let before = &code[..i];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let name = &before[start..];
        let line_start = before[..start].rfind('\n').map_or(0, |p| p + 1);
        let is_directive = before[line_start..start].trim_start().starts_with('#');
        if !name.is_empty() && !is_directive {
            names.push(name.to_owned());
        }
    }
    names
}

#[test]
fn header_declares_only_eqf_names() {
    let header = committed();
    let names = declared_names(&header);
    let expected_some = [
        "EQF_OK",
        "EQF_ERR_NULL_POINTER",
        "EQF_ERR_INTERNAL",
        "EQF_ERR_RESOURCE",
        "EQF_MAX_ELEMENTS",
        "EQF_MAX_WORKSPACE_BYTES",
        "EQF_MAX_PARTICLES",
        "eqf_abi_version",
        "eqf_version",
        "eqf_last_error_message",
        "eqf_energy_fn",
        "eqf_move_new",
        "eqf_move_propose",
        "eqf_move_accept",
        "eqf_move_step",
        "eqf_move_stats",
        "eqf_move_free",
        "eqf_train_epoch",
        "eqf_train_summary",
        "eqf_train_progress_fn",
        "eqf_energy_grad_fn",
        "eqf_flow_train",
    ];
    for name in expected_some {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not declared; found {names:?}"
        );
    }
    for name in &names {
        assert!(
            name.starts_with("eqf_") || name.starts_with("EQF_") || name == "EQFLOW_H",
            "the header declares {name:?}, which is not an eqf_* item"
        );
    }
}

#[test]
fn header_has_banner_guards_and_includes() {
    let header = committed();
    assert!(header.contains("Generated by cbindgen from src/ffi, do not edit"));
    assert!(header.contains("#ifndef EQFLOW_H\n#define EQFLOW_H"));
    assert!(header.contains("#include <stdint.h>"));
    assert!(header.contains("#include <stddef.h>"));
    assert!(header.contains("extern \"C\" {"));
    assert!(header.contains("size_t eqf_last_error_message(char *buf, size_t len);"));
}

#[test]
fn name_scanner_finds_functions_and_macros() {
    // The scanner must be able to fail: a stray non-eqf name is detected.
    let names = declared_names(
        "/* f( */\n#define EQF_A 1\ntypedef struct foo foo;\nint32_t bar(int x);\n// baz(\n",
    );
    assert_eq!(names, ["EQF_A", "foo", "bar"]);
    // Function-pointer typedefs, also when their arguments wrap onto further lines.
    let names = declared_names(
        "typedef int32_t (*cb_fn)(void *user,\n                        double *U);\n\
         typedef void (*eqf_log_fn)(void *user, int32_t level);\n",
    );
    assert_eq!(names, ["cb_fn", "eqf_log_fn"]);
}

/// The move's C signatures exactly as DESIGN.md §4 publishes them (external programs are
/// written against these argument types and orders).
#[test]
fn move_prototypes_match_the_published_contract() {
    let header = strip_c_comments(&committed());
    let normalised: String = header.split_whitespace().collect::<Vec<_>>().join(" ");
    let normalised = normalised.replace("( ", "(");
    for prototype in [
        "typedef int32_t (*eqf_energy_fn)(void *user, int64_t n_particles, int64_t dim, \
         const double *x, double *U);",
        "int32_t eqf_move_new(const eqf_flow *flow, double kT, uint64_t seed, eqf_move **out);",
        "int32_t eqf_move_propose(eqf_move *move, const double *x_current, double U_current, \
         double *x_proposed);",
        "int32_t eqf_move_accept(eqf_move *move, double U_proposed, int32_t *accepted);",
        "int32_t eqf_move_step(eqf_move *move, double *x, double *U, eqf_energy_fn energy, \
         void *user, int32_t *accepted);",
        "int32_t eqf_move_stats(const eqf_move *move, int64_t *n_proposed, int64_t *n_accepted);",
        "int32_t eqf_move_free(eqf_move *move);",
    ] {
        assert!(
            normalised.contains(prototype),
            "the header lacks `{prototype}`"
        );
    }
}
