//! The continuous adjoint method (OTD, `train::adjoint`) against the two independent ways to
//! the same gradient: back-propagation through a fine RK4 grid (DTO, the trainer's tape) and
//! central differences of the Dormand–Prince NLL.

use eqflow::integrate::Dopri5Config;
use eqflow::io::model;
use eqflow::train::Losses;
use eqflow::train::adjoint::adjoint_ml_gradient_into;

fn tight() -> Dopri5Config {
    Dopri5Config {
        rtol: 1e-11,
        atol: 1e-12,
        max_steps: 100_000,
    }
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

#[test]
fn adjoint_gradient_agrees_with_backpropagation_through_a_fine_grid() {
    let (flow, _) = model::load("models/dw4.json".as_ref()).unwrap();
    let (x, _) = flow.sample(3, 4).unwrap();
    let p = flow.field().params().len();

    let mut otd = vec![0.0; p];
    let loss = adjoint_ml_gradient_into(&flow, &x, &tight(), &mut otd).unwrap();
    let mut dto = vec![0.0; p];
    let nll = Losses::new(&flow, 400)
        .unwrap()
        .ml_gradient_into(&x, &mut dto)
        .unwrap();
    assert!((loss.nll - nll).abs() < 1e-8, "{} vs {nll}", loss.nll);
    let err = rel_err(&otd, &dto);
    assert!(err < 1e-7, "relative gradient difference {err:e}");
    assert!(dto.iter().map(|g| g.abs()).sum::<f64>() > 1e-3, "vacuous");
    assert!(loss.n_eval_forward > 0 && loss.n_eval_adjoint > loss.n_eval_forward / 2);

    // A loose tolerance is cheaper and visibly less exact: the paper's point about OTD.
    let loose = Dopri5Config {
        rtol: 1e-3,
        atol: 1e-5,
        max_steps: 100_000,
    };
    let mut rough = vec![0.0; p];
    let cheap = adjoint_ml_gradient_into(&flow, &x, &loose, &mut rough).unwrap();
    assert!(cheap.n_eval_adjoint < loss.n_eval_adjoint);
    assert!(rel_err(&rough, &dto) > err);
}

#[test]
fn adjoint_gradient_agrees_with_central_differences() {
    let (mut flow, _) = model::load("models/dw4.json".as_ref()).unwrap();
    let (x, _) = flow.sample(5, 2).unwrap();
    let params = flow.field().params().to_vec();
    let mut grad = vec![0.0; params.len()];
    adjoint_ml_gradient_into(&flow, &x, &tight(), &mut grad).unwrap();
    let mut scratch = vec![0.0; params.len()];
    // Parameters spread over the blocks (W, b, s, the bandwidths).
    for i in [
        0,
        params.len() / 3,
        params.len() / 2,
        params.len() - 3,
        params.len() - 1,
    ] {
        let h = 1e-5;
        let mut at = |delta: f64| {
            let mut q = params.clone();
            q[i] += delta;
            flow.set_params(&q).unwrap();
            adjoint_ml_gradient_into(&flow, &x, &tight(), &mut scratch)
                .unwrap()
                .nll
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() < 1e-5 * (1.0 + fd.abs()),
            "parameter {i}: adjoint {} vs central difference {fd}",
            grad[i]
        );
    }
}

#[test]
fn adjoint_refuses_bad_input_and_leaves_the_gradient() {
    let (flow, _) = model::load("models/dw4.json".as_ref()).unwrap();
    let p = flow.field().params().len();
    let mut g = vec![7.0; p];
    let len = flow.layout().len();
    let mut x = vec![0.5; len];
    x[1] = 1.5;
    assert!(adjoint_ml_gradient_into(&flow, &x[1..], &tight(), &mut g).is_err());
    assert!(adjoint_ml_gradient_into(&flow, &[], &tight(), &mut g).is_err());
    assert!(adjoint_ml_gradient_into(&flow, &x, &tight(), &mut g[1..]).is_err());
    let mut nan = x.clone();
    nan[2] = f64::NAN;
    assert!(adjoint_ml_gradient_into(&flow, &nan, &tight(), &mut g).is_err());
    let bad = Dopri5Config {
        rtol: 0.0,
        ..tight()
    };
    assert!(adjoint_ml_gradient_into(&flow, &x, &bad, &mut g).is_err());
    let few = Dopri5Config {
        max_steps: 2,
        ..tight()
    };
    assert!(adjoint_ml_gradient_into(&flow, &x, &few, &mut g).is_err());
    assert!(g.iter().all(|&v| v == 7.0));
}
