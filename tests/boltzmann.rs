//! The Boltzmann rules of `eqflow::boltzmann` through the public API: log weights that cannot be
//! represented are errors, not infinities.

use eqflow::Error;
use eqflow::boltzmann::{kish_ess, log_weights_into};

/// Issue 14: `−U/kT` of U = −1e308 at kT = 1e-10 is 1e318. It used to come back as a log weight
/// of +∞, which makes every self-normalised estimate NaN or all of its weight one sample's.
#[test]
fn a_log_weight_that_overflows_is_an_error() {
    let log_q = [0.5, -0.5, 0.0];
    let mut log_w = [0.0; 3];
    for u in [[0.0, 1.0, -1e308], [0.0, 1.0, 1e308]] {
        match log_weights_into(&u, &log_q, 1e-10, &mut log_w) {
            Err(Error::NonFinite { what }) => {
                assert!(what.contains("sample 2"), "{what}");
                assert!(what.contains("not representable"), "{what}");
            }
            other => panic!("U = {u:?}: {other:?}"),
        }
    }
    // The same energies at a kT where they are representable are fine, and U = +∞ stays a
    // weight of zero at any kT.
    log_weights_into(&[0.0, 1.0, -1e308], &log_q, 1.0, &mut log_w).unwrap();
    assert_eq!(log_w[2], 1e308);
    log_weights_into(&[0.0, 1.0, f64::INFINITY], &log_q, 1e-10, &mut log_w).unwrap();
    assert_eq!(log_w, [-0.5, 0.5 - 1e10, f64::NEG_INFINITY]);
    assert_eq!(kish_ess(&log_w), 1.0);
}
