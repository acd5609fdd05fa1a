//! Model files through the C ABI: `eqf_flow_load` and `eqf_flow_save`.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};

use super::flow::eqf_flow;
use super::log;
use super::{catch, check_not_null, handle, write_handle};
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::integrate::DensityMode;
use crate::io::model;

/// Reads a NUL-terminated path.
///
/// # Safety
/// `path` must be NULL or point to a NUL-terminated string valid for the call.
unsafe fn path_arg(path: *const c_char) -> Result<PathBuf> {
    check_not_null(path, "path")?;
    // SAFETY: non-NULL (checked above) and NUL-terminated (this module's functions' contract).
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes.is_empty() {
        return Err(Error::invalid("path is empty"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| Error::invalid("path is not valid UTF-8"))
    }
}

/// Loads a flow from a model file written by `eqf_flow_save` or the `eqflow` command line.
///
/// The file is validated completely (format name and version, sizes, finiteness, kernel and
/// integrator settings) before anything is returned; a corrupt or truncated file gives a status
/// and a message naming what is wrong. Finite values outside the ranges in which the solvers'
/// guarantees hold are refused with EQF_ERR_INVALID_ARGUMENT naming the field: `prior_sigma` in
/// [1e-6, 1e6], kernel centres and parameters of magnitude at most 1e6, log inverse bandwidths
/// of magnitude at most 10, and a field weak enough for the step (see docs/embedding.md). Only
/// regular files are read (a FIFO, device or folder is EQF_ERR_IO, without blocking), and only
/// up to 1 GiB (no model is that large; a larger file is EQF_ERR_RESOURCE, refused unread).
///
/// @param path  NUL-terminated file path
/// @param out   on success receives the new flow, to be released with `eqf_flow_free`;
///              untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_IO (cannot read); EQF_ERR_FORMAT (not UTF-8,
///         or not a valid model file); EQF_ERR_INVALID_ARGUMENT, EQF_ERR_DIMENSION_MISMATCH or
///         EQF_ERR_NON_FINITE (invalid contents); EQF_ERR_RESOURCE (a file over 1 GiB, or
///         memory for reading or parsing it that the system refuses)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_load(path: *const c_char, out: *mut *mut eqf_flow) -> i32 {
    catch(|| {
        check_not_null(out, "out")?;
        // SAFETY: `path` is NULL (rejected) or NUL-terminated (this function's contract).
        let path = unsafe { path_arg(path) }?;
        let (flow, _) = model::load(&path)?;
        log_if_uncertified(&flow, &path);
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract); it is written only now that the flow was loaded successfully.
        unsafe { write_handle(out, eqf_flow::from_flow(flow)) };
        Ok(())
    })
}

/// Tells the host's log callback, at `EQF_LOG_WARNING`, that the flow loaded from `path` has
/// an RK4 map not certified one-to-one: in strict mode (the default) its exact-discrete calls
/// will be refused, so the host learns why at load; with strict mode off it will report
/// densities that rest on an unproved single preimage. Costs nothing without a callback.
fn log_if_uncertified(flow: &Flow, path: &Path) {
    if !log::logging() || flow.integrator().mode() != DensityMode::ExactDiscrete {
        return;
    }
    // The step-count search only for a grid that is not certified.
    let Some(cert) = flow.certificate().filter(|c| !c.is_certified()) else {
        return;
    };
    let needed = flow.certified_step_count();
    let Some(warning) = cert.uncertified_warning(needed, flow.step_search_limit()) else {
        return;
    };
    let remedy = if flow.requires_certificate() {
        "strict mode: sampling, densities and moves will fail with EQF_ERR_UNCERTIFIED; give it \
         the certified step count with eqf_flow_with_integrator, or opt out with \
         eqf_flow_with_require_certificate"
    } else {
        "strict mode off; eqf_flow_certify_configurations checks configurations"
    };
    log::log(log::EQF_LOG_WARNING, || {
        format!("model file {}: {warning} ({remedy})", path.display())
    });
}

/// Saves a flow to a model file (JSON; the parameters are written so that loading them back is
/// bit-exact). The file is written to a temporary name and renamed into place, so a failed
/// save never leaves a truncated model behind. Only a regular file (or a new name) is replaced:
/// a symbolic link is followed to the regular file it names, and a folder, a FIFO, a socket, a
/// device (`/dev/null`) or a link to one of them or to nothing is refused with EQF_ERR_IO.
/// An existing file is replaced only if the process could write it (a read-only file is
/// refused, as `fopen(path, "w")` would be), and the new file keeps its permissions (a 0600
/// model stays private).
///
/// @param flow  the flow
/// @param path  NUL-terminated file path
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_IO (cannot write); EQF_ERR_INVALID_ARGUMENT
///         (a flow `eqf_flow_load` would refuse, such as one trained past the limits it checks:
///         nothing is written)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_save(flow: *const eqf_flow, path: *const c_char) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle (this function's contract).
        let flow = unsafe { handle(flow, "flow") }?;
        // SAFETY: `path` is NULL (rejected) or NUL-terminated (this function's contract).
        let path = unsafe { path_arg(path) }?;
        model::save(&flow.flow(), None, None, &path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::log::tests::{INSTALLS, RECEIVED, record};
    use crate::ffi::log::{EQF_LOG_WARNING, eqf_set_log_callback};
    use std::ffi::{CString, c_void};
    use std::sync::PoisonError;

    /// Loading a model whose RK4 map is not certified warns the host's log callback, naming
    /// the file and the certified step count; a certified model does not.
    #[test]
    fn loading_an_uncertified_model_warns_the_log_callback() {
        let _guard = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = env!("CARGO_MANIFEST_DIR");
        let uncertified = format!("{dir}/tests/data/dw4_v1_unpenalised.json");
        let certified = format!("{dir}/models/dw4.json");
        // SAFETY: `record` is thread-safe; the user pointer is never dereferenced.
        unsafe { eqf_set_log_callback(Some(record), 0x10ad as *mut c_void) };
        for path in [&uncertified, &certified] {
            let c_path = CString::new(path.as_str()).unwrap();
            let mut flow = std::ptr::null_mut();
            // SAFETY: a valid path and a valid out pointer.
            assert_eq!(unsafe { eqf_flow_load(c_path.as_ptr(), &raw mut flow) }, 0);
            // SAFETY: `flow` was returned by eqf_flow_load.
            assert_eq!(unsafe { crate::ffi::flow::eqf_flow_free(flow) }, 0);
        }
        // SAFETY: removing the callback is always allowed.
        unsafe { eqf_set_log_callback(None, std::ptr::null_mut()) };
        let received = RECEIVED.lock().unwrap();
        let warned = |path: &str| {
            received.iter().any(|(user, level, text)| {
                *user == 0x10ad
                    && *level == EQF_LOG_WARNING
                    && text.contains(path)
                    && text.contains("not certified")
            })
        };
        assert!(warned(&uncertified), "{received:?}");
        let message = received
            .iter()
            .find(|(_, _, text)| text.contains(&uncertified))
            .unwrap();
        assert!(message.2.contains("certified from 81 steps"), "{message:?}");
        assert!(!warned(&certified), "{received:?}");
    }
}
