//! Every function of the C API (`include/eqflow.h`) is bound by the C++ wrapper
//! (`include/eqflow.hpp`) and by the Fortran module (`include/eqflow.f90`), or is named in
//! that language's allow-list below with the reason it is not; and every name the wrappers
//! bind exists in the header. A function added to `src/ffi/` (and so to the regenerated
//! header) fails this test until both wrappers bind it.
//!
//! What counts as bound:
//! - C++: the function is called somewhere in the code of `eqflow.hpp` (comments ignored);
//! - Fortran: an interface `function|subroutine <name>(...) bind(C, name="<name>")` with the
//!   C name (the module's convention: raw interfaces carry the C names), declared `public`.
//!
//! The integer constants (`#define EQF_* <integer>`) are checked likewise: C++ sees the
//! header's macros, the Fortran module must declare each as a `parameter` of the same value.
//!
//! The scanners are plain text scans of files we write ourselves; the tests at the end run
//! them on small synthetic inputs, so that a scanner that silently finds nothing cannot make
//! the real checks pass.

mod common;

use common::strip_c_comments;
use std::collections::BTreeSet;
use std::path::Path;

/// Header functions the C++ wrapper deliberately does not call, each with its reason.
/// Entries must name a header function that the wrapper really does not call (checked).
const CXX_NOT_BOUND: &[(&str, &str)] = &[
    // Empty: every C function has a C++ form (eqf_last_error_message is called by
    // eqflow::Error's construction in detail::check; the callbacks take any callable).
];

/// Header functions the Fortran module deliberately does not bind, each with its reason.
/// Entries must name a header function that the module really does not bind (checked).
const FORTRAN_NOT_BOUND: &[(&str, &str)] = &[
    // Empty: every C function has a bind(C) interface. The log callback is bound too
    // (eqf_log_fn as a bind(C) abstract interface, the message as a c_ptr read with
    // eqflow_string), with the thread-safety caveat documented in the module.
];

/// Header constants the Fortran module deliberately does not declare, each with its reason.
const FORTRAN_CONSTANTS_NOT_DECLARED: &[(&str, &str)] = &[
    // Empty: every EQF_* constant is a Fortran parameter (the limits as integer(c_int64_t)).
];

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `eqf_*` identifier in C code that is followed (after optional white space) by `(`,
/// with `preceded_by` the code before it, so callers can tell declarations of function-pointer
/// typedefs (`(*eqf_log_fn)(`) from functions.
fn c_identifiers_before_paren(code: &str) -> Vec<(String, &str)> {
    let mut found = Vec::new();
    for (start, _) in code.match_indices("eqf_") {
        if code[..start].ends_with(is_identifier_char) {
            continue;
        }
        let rest = &code[start..];
        let end = rest
            .find(|c: char| !is_identifier_char(c))
            .unwrap_or(rest.len());
        if rest[end..].trim_start().starts_with('(') {
            found.push((rest[..end].to_owned(), &code[..start]));
        }
    }
    found
}

/// The functions the header declares (not the function-pointer typedefs).
fn header_functions(header: &str) -> BTreeSet<String> {
    let code = strip_c_comments(header);
    c_identifiers_before_paren(&code)
        .into_iter()
        .filter(|(_, before)| !before.trim_end().ends_with("(*"))
        .map(|(name, _)| name)
        .collect()
}

/// The `eqf_*` functions the C++ wrapper calls.
fn cxx_calls(wrapper: &str) -> BTreeSet<String> {
    let code = strip_c_comments(wrapper);
    c_identifiers_before_paren(&code)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Fortran source as a list of statements: comments removed, `&` continuations joined.
fn fortran_statements(source: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in source.lines() {
        // `!` starts a comment except inside a string; our module's strings contain no `!`
        // except in comments, and none of its strings spans a continuation.
        let mut code = line;
        let mut in_string: Option<char> = None;
        for (i, c) in line.char_indices() {
            match (in_string, c) {
                (None, '"' | '\'') => in_string = Some(c),
                (Some(q), _) if c == q => in_string = None,
                (None, '!') => {
                    code = &line[..i];
                    break;
                }
                _ => {}
            }
        }
        let mut code = code.trim();
        if let Some(rest) = code.strip_prefix('&') {
            code = rest.trim_start();
        }
        if let Some(head) = code.strip_suffix('&') {
            current.push_str(head.trim_end());
            current.push(' ');
        } else {
            current.push_str(code);
            if !current.trim().is_empty() {
                statements.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    statements
}

/// The C names the Fortran module binds: `(C name, Fortran procedure name)` of every
/// `bind(C, name="...")` on a `function` or `subroutine` statement.
fn fortran_bindings(source: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for statement in fortran_statements(source) {
        let compact: String = statement.chars().filter(|c| !c.is_whitespace()).collect();
        let lower = compact.to_ascii_lowercase();
        let Some(at) = lower.find("bind(c,name=") else {
            continue;
        };
        let quoted = &compact[at + "bind(c,name=".len()..];
        let Some(quote) = quoted.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        let Some(end) = quoted[1..].find(quote) else {
            continue;
        };
        let c_name = quoted[1..1 + end].to_owned();
        // The procedure's own name: the identifier after `function` / `subroutine` (which may
        // follow a prefix such as `pure` or a type).
        let words = statement.to_ascii_lowercase();
        let procedure = ["function ", "subroutine "]
            .iter()
            .filter_map(|keyword| {
                let at = words.find(keyword)?;
                let rest = &statement[at + keyword.len()..];
                let rest = rest.trim_start();
                let end = rest
                    .find(|c: char| !is_identifier_char(c))
                    .unwrap_or(rest.len());
                Some(rest[..end].to_owned())
            })
            .next()
            .unwrap_or_default();
        found.push((c_name, procedure));
    }
    found
}

/// Names listed in the module's `public ::` statements, lower-cased (Fortran names are
/// case-insensitive).
fn fortran_public_names(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for statement in fortran_statements(source) {
        let lower = statement.to_ascii_lowercase();
        let Some(list) = lower.trim_start().strip_prefix("public") else {
            continue;
        };
        let Some(list) = list.trim_start().strip_prefix("::") else {
            continue;
        };
        names.extend(list.split(',').map(|name| name.trim().to_owned()));
    }
    names
}

/// Problems of one language's bindings against the header: unbound functions that are not
/// allow-listed, bound or allow-listed names that are not in the header, allow-list entries
/// that are bound after all or have no reason.
fn problems(
    language: &str,
    declared: &BTreeSet<String>,
    bound: &BTreeSet<String>,
    allowed: &[(&str, &str)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let allowed_names: BTreeSet<&str> = allowed.iter().map(|(name, _)| *name).collect();
    for name in declared {
        if !bound.contains(name) && !allowed_names.contains(name.as_str()) {
            problems.push(format!(
                "{language}: {name} is in eqflow.h but not bound (bind it, or add it to the \
                 {language} allow-list in tests/bindings.rs with the reason)"
            ));
        }
    }
    for name in bound {
        if !declared.contains(name) {
            problems.push(format!(
                "{language}: binds {name}, which eqflow.h does not declare (a typo?)"
            ));
        }
    }
    for (name, reason) in allowed {
        if !declared.contains(*name) {
            problems.push(format!(
                "{language}: allow-list names {name}, which eqflow.h does not declare"
            ));
        } else if bound.contains(*name) {
            problems.push(format!(
                "{language}: {name} is bound, remove it from the allow-list"
            ));
        }
        if reason.trim().is_empty() {
            problems.push(format!(
                "{language}: allow-list entry {name} gives no reason"
            ));
        }
    }
    problems
}

fn cxx_problems(header: &str, wrapper: &str, allowed: &[(&str, &str)]) -> Vec<String> {
    problems(
        "C++",
        &header_functions(header),
        &cxx_calls(wrapper),
        allowed,
    )
}

fn fortran_problems(header: &str, module: &str, allowed: &[(&str, &str)]) -> Vec<String> {
    let bindings = fortran_bindings(module);
    let public = fortran_public_names(module);
    let mut found = Vec::new();
    for (c_name, procedure) in &bindings {
        if !procedure.eq_ignore_ascii_case(c_name) {
            found.push(format!(
                "Fortran: {procedure} binds {c_name}: raw interfaces carry the C name"
            ));
        } else if !public.contains(&procedure.to_ascii_lowercase()) {
            found.push(format!("Fortran: the interface {procedure} is not public"));
        }
    }
    let bound = bindings.into_iter().map(|(c_name, _)| c_name).collect();
    found.extend(problems(
        "Fortran",
        &header_functions(header),
        &bound,
        allowed,
    ));
    found
}

/// The integer constants of the header: `#define EQF_NAME <integer>`.
fn header_constants(header: &str) -> Vec<(String, i64)> {
    strip_c_comments(header)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "#define").then_some(())?;
            let name = words.next()?;
            let value = words.next()?.parse().ok()?;
            name.starts_with("EQF_").then(|| (name.to_owned(), value))
        })
        .collect()
}

/// The `EQF_*` named constants of the Fortran module: `... parameter ... :: EQF_NAME = <integer>`
/// (an optional kind suffix such as `_c_int64_t` is ignored).
fn fortran_constants(source: &str) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for statement in fortran_statements(source) {
        let Some((attributes, declarations)) = statement.split_once("::") else {
            continue;
        };
        if !attributes.to_ascii_lowercase().contains("parameter") {
            continue;
        }
        for declaration in declarations.split(',') {
            let Some((name, value)) = declaration.split_once('=') else {
                continue;
            };
            let name = name.trim();
            let value = value.trim();
            let digits = value.split('_').next().unwrap_or(value);
            if let (true, Ok(value)) = (name.starts_with("EQF_"), digits.parse()) {
                found.push((name.to_owned(), value));
            }
        }
    }
    found
}

/// Problems of the Fortran constants against the header's: missing (not allow-listed),
/// different values, constants the header does not define, stale allow-list entries.
fn fortran_constant_problems(header: &str, module: &str, allowed: &[(&str, &str)]) -> Vec<String> {
    let declared = header_constants(header);
    let fortran = fortran_constants(module);
    let mut found = Vec::new();
    for (name, value) in &declared {
        let in_fortran = fortran.iter().find(|(f, _)| f == name);
        let allowed_here = allowed.iter().any(|(a, _)| a == name);
        match in_fortran {
            None if !allowed_here => found.push(format!(
                "Fortran: {name} = {value} is in eqflow.h but not a parameter of the module \
                 (declare it, or allow-list it in tests/bindings.rs with the reason)"
            )),
            Some((_, f)) if f != value => found.push(format!(
                "Fortran: {name} is {f} in the module but {value} in eqflow.h"
            )),
            Some(_) if allowed_here => found.push(format!(
                "Fortran: {name} is declared, remove it from the allow-list"
            )),
            _ => {}
        }
    }
    for (name, _) in &fortran {
        if !declared.iter().any(|(d, _)| d == name) {
            found.push(format!(
                "Fortran: declares {name}, which eqflow.h does not define (a typo?)"
            ));
        }
    }
    for (name, reason) in allowed {
        if !declared.iter().any(|(d, _)| d == name) {
            found.push(format!(
                "Fortran: allow-list names {name}, which eqflow.h does not define"
            ));
        }
        if reason.trim().is_empty() {
            found.push(format!("Fortran: allow-list entry {name} gives no reason"));
        }
    }
    found
}

#[test]
fn the_fortran_module_declares_every_constant() {
    let header = read("include/eqflow.h");
    assert!(
        header_constants(&header).len() > 20,
        "{:?}",
        header_constants(&header)
    );
    let problems = fortran_constant_problems(
        &header,
        &read("include/eqflow.f90"),
        FORTRAN_CONSTANTS_NOT_DECLARED,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn fortran_constants_are_compared_by_value() {
    let header = "/** #define EQF_IN_COMMENT 1 */\n#define EQF_A 0\n#define EQF_BIG 4294967296\n\
                  #define EQF_C 2\n#define EQFLOW_H\n";
    let module = "
    integer(c_int32_t), parameter, public :: EQF_A = 0 ! EQF_C = 2 in a comment
    integer(c_int64_t), parameter, public :: EQF_BIG = &
        4294967296_c_int64_t, EQF_TYPO = 3
    integer(c_int32_t) :: EQF_NOT_A_PARAMETER = 2
";
    assert_eq!(
        fortran_constants(module),
        [
            ("EQF_A".to_owned(), 0),
            ("EQF_BIG".to_owned(), 4_294_967_296),
            ("EQF_TYPO".to_owned(), 3)
        ]
    );
    let text = fortran_constant_problems(header, module, &[]).join("\n");
    assert!(
        text.contains("EQF_C = 2 is in eqflow.h but not a parameter"),
        "{text}"
    );
    assert!(text.contains("declares EQF_TYPO"), "{text}");
    assert!(!text.contains("EQF_IN_COMMENT"), "{text}");
    let wrong = module.replace("EQF_A = 0", "EQF_A = 1");
    let text = fortran_constant_problems(header, &wrong, &[("EQF_C", "for a test")]).join("\n");
    assert!(
        text.contains("EQF_A is 1 in the module but 0 in eqflow.h"),
        "{text}"
    );
    assert!(!text.contains("EQF_C"), "{text}");
}

#[test]
fn the_header_scan_finds_the_api() {
    let functions = header_functions(&read("include/eqflow.h"));
    assert!(functions.len() > 40, "header scan found only {functions:?}");
    for name in [
        "eqf_flow_new",
        "eqf_move_step",
        "eqf_version",
        "eqf_flow_certificate",
    ] {
        assert!(
            functions.contains(name),
            "{name} not found in {functions:?}"
        );
    }
    for typedef in ["eqf_energy_fn", "eqf_log_fn", "eqf_train_progress_fn"] {
        assert!(
            !functions.contains(typedef),
            "{typedef} is a typedef, not a function"
        );
    }
}

#[test]
fn the_cxx_wrapper_binds_every_function() {
    let problems = cxx_problems(
        &read("include/eqflow.h"),
        &read("include/eqflow.hpp"),
        CXX_NOT_BOUND,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_fortran_module_binds_every_function() {
    let problems = fortran_problems(
        &read("include/eqflow.h"),
        &read("include/eqflow.f90"),
        FORTRAN_NOT_BOUND,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// The scanners on synthetic inputs: a new header function without bindings, a typo in a
// binding, a stale allow-list entry and comments that mention names must all be caught.

const HEADER: &str = "
/** eqf_in_a_comment(void) is not a function. */
typedef int32_t (*eqf_cb_fn)(void *user);
int32_t eqf_a(int64_t n);
const char *eqf_b
    (void);
";

#[test]
fn a_new_header_function_without_bindings_is_reported() {
    let declared = header_functions(HEADER);
    assert_eq!(declared.into_iter().collect::<Vec<_>>(), ["eqf_a", "eqf_b"]);
    let cxx = "// eqf_b() in a comment does not count\ninline void f() { eqf_a(1); }";
    let problems = cxx_problems(HEADER, cxx, &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("eqf_b is in eqflow.h but not bound"));
    assert!(cxx_problems(HEADER, cxx, &[("eqf_b", "C-only, for a test")]).is_empty());
}

#[test]
fn typos_stale_entries_and_missing_reasons_are_reported() {
    let cxx = "void f() { eqf_a(1); eqf_b(); eqf_c(); }";
    let problems = cxx_problems(HEADER, cxx, &[("eqf_a", "bound anyway"), ("eqf_z", "")]);
    let text = problems.join("\n");
    assert!(
        text.contains("binds eqf_c, which eqflow.h does not declare"),
        "{text}"
    );
    assert!(text.contains("eqf_a is bound, remove it"), "{text}");
    assert!(text.contains("allow-list names eqf_z"), "{text}");
    assert!(text.contains("eqf_z gives no reason"), "{text}");
}

#[test]
fn fortran_bindings_are_read_across_continuations_and_checked() {
    let module = r#"
module m
    public :: eqf_a, &
        eqf_B
    interface
        ! function eqf_b() bind(C, name="eqf_b") in a comment does not count
        function eqf_a(n) bind(C, name="eqf_a") result(status)
        end function eqf_a
        function eqf_b() &
                bind(C, name="eqf_b") result(p)
        end function eqf_b
        function eqf_typo() bind(C, name="eqf_typo")
        end function eqf_typo
        function other() bind(C, name="eqf_a")
        end function other
    end interface
end module m
"#;
    let bindings = fortran_bindings(module);
    assert_eq!(bindings.len(), 4, "{bindings:?}");
    let text = fortran_problems(HEADER, module, &[]).join("\n");
    assert!(text.contains("binds eqf_typo, which eqflow.h"), "{text}");
    assert!(text.contains("eqf_typo is not public"), "{text}");
    assert!(
        text.contains("other binds eqf_a: raw interfaces carry the C name"),
        "{text}"
    );
    assert!(!text.contains("eqf_b is in eqflow.h"), "{text}");

    let without_b = module.replace("name=\"eqf_b\") result(p)", ") result(p)");
    let text = fortran_problems(HEADER, &without_b, &[]).join("\n");
    assert!(
        text.contains("eqf_b is in eqflow.h but not bound"),
        "{text}"
    );
}
