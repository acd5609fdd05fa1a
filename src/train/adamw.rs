//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019), optionally with the
//! AMSGrad maximum (Reddi, Kale & Kumar, ICLR 2018), in the form PyTorch's `torch.optim.AdamW`
//! implements, which the paper's training code used. With step counter `t` (from 1), gradient `g`:
//!
//! ```text
//! θ ← θ − lr·λ_wd·θ                                   (decoupled decay, before the Adam step)
//! m ← β₁ m + (1 − β₁) g            v ← β₂ v + (1 − β₂) g²
//! v̂ ← max(v̂, v) if amsgrad, else v̂ = v
//! θ ← θ − (lr / (1 − β₁ᵗ)) · m / (sqrt(v̂) / sqrt(1 − β₂ᵗ) + ε)
//! ```
//!
//! Minimises: the update moves θ *against* the gradient.

use crate::error::{Error, Result, check_finite};

/// Hyper-parameters of [`AdamW`]. `Default` is the paper's DW-4 protocol: lr 5e-3,
/// β = (0.9, 0.999), ε = 1e-8, weight decay 1e-12, AMSGrad on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (> 0), in parameter units per step for a unit-normalised gradient.
    pub lr: f64,
    /// Decay of the first-moment average, in [0, 1).
    pub beta1: f64,
    /// Decay of the second-moment average, in [0, 1).
    pub beta2: f64,
    /// Added to the denominator (> 0).
    pub eps: f64,
    /// Decoupled weight decay coefficient (≥ 0); each step multiplies θ by `1 − lr·weight_decay`.
    pub weight_decay: f64,
    /// Use the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 5e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-12,
            amsgrad: true,
        }
    }
}

impl AdamWConfig {
    /// Checks every field is finite and in range.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let ok = |name: &str, v: f64, valid: bool| {
            if v.is_finite() && valid {
                Ok(())
            } else {
                Err(Error::invalid(format!("AdamW {name} out of range: {v:e}")))
            }
        };
        ok("lr", self.lr, self.lr > 0.0)?;
        ok("beta1", self.beta1, (0.0..1.0).contains(&self.beta1))?;
        ok("beta2", self.beta2, (0.0..1.0).contains(&self.beta2))?;
        ok("eps", self.eps, self.eps > 0.0)?;
        ok("weight_decay", self.weight_decay, self.weight_decay >= 0.0)?;
        // Decoupled decay scales the parameters by 1 − lr·wd per step: at 1 or more it would
        // zero or flip them, whichever of the two factors is the large one.
        if self.lr * self.weight_decay >= 1.0 {
            return Err(Error::invalid(format!(
                "AdamW lr × weight_decay = {:e} must be below 1 (lr {:e}, weight_decay {:e})",
                self.lr * self.weight_decay,
                self.lr,
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// The optimiser state for a fixed number of parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    config: AdamWConfig,
    m: Vec<f64>,
    v: Vec<f64>,
    v_max: Vec<f64>,
    n_steps: u64,
}

impl AdamW {
    /// Fresh state (zero moments) for `n_params` parameters.
    ///
    /// # Errors
    ///
    /// As [`AdamWConfig::validate`].
    pub fn new(config: AdamWConfig, n_params: usize) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            m: vec![0.0; n_params],
            v: vec![0.0; n_params],
            v_max: if config.amsgrad {
                vec![0.0; n_params]
            } else {
                Vec::new()
            },
            n_steps: 0,
        })
    }

    /// The hyper-parameters.
    #[must_use]
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Sets the learning rate of the next steps (a schedule's value).
    ///
    /// # Errors
    ///
    /// As [`AdamWConfig::validate`] for the new rate; the state is unchanged then.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let config = AdamWConfig { lr, ..self.config };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Steps taken so far.
    #[must_use]
    pub fn n_steps(&self) -> u64 {
        self.n_steps
    }

    /// One update of `params` in place with the gradient `gradient` of the loss.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] for wrong lengths, [`Error::NonFinite`] for a non-finite
    /// gradient, or a finite one whose update is not finite: a component whose square
    /// overflows the second moment (|g| above about 1e154, which made every update 0 while the
    /// step reported success), or a moment or parameter that overflows. The parameters and the
    /// state are unchanged then.
    pub fn step(&mut self, params: &mut [f64], gradient: &[f64]) -> Result<()> {
        if params.len() != self.m.len() {
            return Err(Error::size("AdamW parameters", self.m.len(), params.len()));
        }
        if gradient.len() != self.m.len() {
            return Err(Error::size("AdamW gradient", self.m.len(), gradient.len()));
        }
        check_finite(gradient, "gradient")?;
        let t = self.n_steps + 1;
        // Every update is computed and checked before any is applied.
        for (i, (&p, &g)) in params.iter().zip(gradient).enumerate() {
            let u = self.update(i, p, g, t);
            if !(u.m.is_finite() && u.v.is_finite() && u.param.is_finite()) {
                let cause = if !u.v.is_finite() {
                    format!("its square overflows AdamW's second moment ({:e})", u.v)
                } else {
                    format!(
                        "its update overflows (first moment {:e}, parameter {:e})",
                        u.m, u.param
                    )
                };
                return Err(Error::non_finite(format!(
                    "gradient component {i} is {g:e}: {cause}, so the optimiser cannot \
                     take the step; the loss's scale is too large"
                )));
            }
        }
        for (i, (p, &g)) in params.iter_mut().zip(gradient).enumerate() {
            let u = self.update(i, *p, g, t);
            self.m[i] = u.m;
            self.v[i] = u.v;
            if self.config.amsgrad {
                self.v_max[i] = u.v_hat;
            }
            *p = u.param;
        }
        self.n_steps = t;
        Ok(())
    }

    /// The new moments and parameter `i` at step `t` (1-based) from the parameter `p` and the
    /// gradient component `g`, without changing anything.
    fn update(&self, i: usize, p: f64, g: f64, t: u64) -> Update {
        let c = self.config;
        let t = t as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = c.lr / bias1;
        let decay = 1.0 - c.lr * c.weight_decay;
        let m = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
        let v = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
        let v_hat = if c.amsgrad { self.v_max[i].max(v) } else { v };
        let denom = v_hat.sqrt() / bias2_sqrt + c.eps;
        Update {
            m,
            v,
            v_hat,
            param: p * decay - step_size * m / denom,
        }
    }
}

/// One component's step, see [`AdamW::update`].
struct Update {
    m: f64,
    v: f64,
    v_hat: f64,
    param: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finite gradient whose square overflows the second moment made the update 0 and the
    /// step succeed; it is refused, with the parameters and the state unchanged.
    #[test]
    fn a_gradient_the_update_cannot_hold_is_refused_and_changes_nothing() {
        let mut adam = AdamW::new(AdamWConfig::default(), 2).unwrap();
        let mut params = [1.0, 2.0];
        adam.step(&mut params, &[0.5, -0.25]).unwrap();
        let (state, kept) = (adam.clone(), params);
        let e = adam.step(&mut params, &[0.1, 1e200]).unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("gradient component 1 is 1e200") && e.contains("square overflows"),
            "{e}"
        );
        assert_eq!((&adam, params), (&state, kept), "nothing changed");
        // Below the overflow a large gradient still steps.
        adam.step(&mut params, &[1e150, 0.0]).unwrap();
        assert!(params[0] < kept[0]);
    }

    /// Three steps on two parameters, worked by hand from the update rule in the module docs.
    /// A learning rate so large that lr·wd reaches 1 is named as such (it used to blame
    /// weight_decay alone), and values print in exponent form.
    #[test]
    fn the_decay_product_is_named_when_it_is_the_problem() {
        let config = AdamWConfig {
            lr: 1e300,
            ..AdamWConfig::default()
        };
        let e = config.validate().unwrap_err().to_string();
        assert!(
            e.contains("lr × weight_decay") && e.contains("1e300"),
            "{e}"
        );
        let negative = AdamWConfig {
            weight_decay: -1e-300,
            ..AdamWConfig::default()
        };
        let e = negative.validate().unwrap_err().to_string();
        assert!(e.contains("weight_decay out of range: -1e-300"), "{e}");
    }

    #[test]
    fn three_steps_match_a_hand_computation() {
        let config = AdamWConfig {
            lr: 0.1,
            beta1: 0.5,
            beta2: 0.75,
            eps: 1e-3,
            weight_decay: 0.2,
            amsgrad: false,
        };
        let mut opt = AdamW::new(config, 2).unwrap();
        let mut p = [1.0, -2.0];
        // Step 1, g = (1, −4): decay factor 1 − 0.02 = 0.98 → (0.98, −1.96);
        // m = (0.5, −2), v = (0.25, 4); m̂ = m/0.5 = (1, −4), sqrt(v)/sqrt(0.25) = (1, 4);
        // update = 0.1·m̂/(·+1e-3) = (0.1/1.001, −0.4/4.001).
        opt.step(&mut p, &[1.0, -4.0]).unwrap();
        let e1 = [0.98 - 0.1 / 1.001, -1.96 + 0.4 / 4.001];
        assert!((p[0] - e1[0]).abs() < 1e-15 && (p[1] - e1[1]).abs() < 1e-15);
        // Step 2, g = (−1, 3): m = 0.5·m + 0.5·g = (−0.25, 0.5); v = 0.75·v + 0.25·g² =
        // (0.4375, 5.25); bias1 = 0.75, sqrt(bias2) = sqrt(1 − 0.5625) = sqrt(0.4375).
        opt.step(&mut p, &[-1.0, 3.0]).unwrap();
        let b2 = 0.4375f64.sqrt();
        let e2 = [
            e1[0] * 0.98 - (0.1 / 0.75) * -0.25 / (0.4375f64.sqrt() / b2 + 1e-3),
            e1[1] * 0.98 - (0.1 / 0.75) * 0.5 / (5.25f64.sqrt() / b2 + 1e-3),
        ];
        assert!((p[0] - e2[0]).abs() < 1e-14, "{} {}", p[0], e2[0]);
        assert!((p[1] - e2[1]).abs() < 1e-14, "{} {}", p[1], e2[1]);
        // Step 3, g = (0, 0): m = (−0.125, 0.25), v = (0.328125, 3.9375); bias1 = 0.875,
        // bias2 = 1 − 0.421875 = 0.578125.
        opt.step(&mut p, &[0.0, 0.0]).unwrap();
        let b3 = 0.578125f64.sqrt();
        let e3 = [
            e2[0] * 0.98 - (0.1 / 0.875) * -0.125 / (0.328125f64.sqrt() / b3 + 1e-3),
            e2[1] * 0.98 - (0.1 / 0.875) * 0.25 / (3.9375f64.sqrt() / b3 + 1e-3),
        ];
        assert!((p[0] - e3[0]).abs() < 1e-14 && (p[1] - e3[1]).abs() < 1e-14);
        assert_eq!(opt.n_steps(), 3);
    }

    #[test]
    fn amsgrad_uses_the_running_maximum_of_the_second_moment() {
        let config = AdamWConfig {
            lr: 0.1,
            beta1: 0.0,
            beta2: 0.5,
            eps: 1e-12,
            weight_decay: 0.0,
            amsgrad: true,
        };
        let mut opt = AdamW::new(config, 1).unwrap();
        let mut p = [0.0];
        // Step 1, g = 4: m = 4, v = 8, v̂ = 8, bias2 = 0.5 → denom = sqrt(8)/sqrt(0.5) = 4.
        opt.step(&mut p, &[4.0]).unwrap();
        assert!((p[0] + 0.1 * 4.0 / (4.0 + 1e-12)).abs() < 1e-15);
        let p1 = p[0];
        // Step 2, g = 1: m = 1, v = 4.5 but v̂ stays 8; bias2 = 0.75.
        opt.step(&mut p, &[1.0]).unwrap();
        let expected = p1 - 0.1 * 1.0 / (8f64.sqrt() / 0.75f64.sqrt() + 1e-12);
        assert!((p[0] - expected).abs() < 1e-15);
        // Without AMSGrad the same step uses v = 4.5 and moves further.
        let mut plain = AdamW::new(
            AdamWConfig {
                amsgrad: false,
                ..config
            },
            1,
        )
        .unwrap();
        let mut q = [0.0];
        plain.step(&mut q, &[4.0]).unwrap();
        plain.step(&mut q, &[1.0]).unwrap();
        assert!(q[0] < p[0]);
    }

    #[test]
    fn invalid_configs_and_inputs_are_rejected_without_change() {
        let bad = [
            AdamWConfig {
                lr: 0.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta1: 1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta2: f64::NAN,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                eps: 0.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                weight_decay: -1.0,
                ..AdamWConfig::default()
            },
        ];
        for c in bad {
            assert!(AdamW::new(c, 3).is_err(), "{c:?}");
        }
        let mut opt = AdamW::new(AdamWConfig::default(), 2).unwrap();
        let mut p = [1.0, 2.0];
        assert!(opt.step(&mut p, &[1.0, f64::NAN]).is_err());
        assert!(opt.step(&mut p, &[1.0]).is_err());
        assert_eq!(p, [1.0, 2.0]);
        assert_eq!(opt.n_steps(), 0);
    }
}
