//! The flat parameter vector and its typed views.
//!
//! One `Vec<f64>` holds every trainable number so that the optimiser, the reverse pass, model
//! files and the C ABI share a single layout, in this order:
//!
//! | block | length | meaning |
//! |---|---|---|
//! | `w` | K·R | mixing weights `W[k][r]`, row-major (`w[k*R + r]`) |
//! | `b` | R | time-only bias `b_r` |
//! | `s` | K | distance offsets `s_k` (enter as `s_k²`) |
//! | `log_inv_gamma_dist` | K | `−log γ_k` of the distance basis |
//! | `log_inv_gamma_time` | R | `−log γ_r` of the time basis |
//!
//! With K = 50, R = 10 that is 620 numbers, independent of N and D.

use std::ops::Range;

/// Where each parameter block lives in the flat vector, for K distance and R time kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamLayout {
    pub n_dist: usize,
    pub n_time: usize,
}

impl ParamLayout {
    #[must_use]
    pub fn new(n_dist: usize, n_time: usize) -> Self {
        ParamLayout { n_dist, n_time }
    }

    /// Total number of parameters, K·R + 2R + 2K.
    #[must_use]
    pub fn len(&self) -> usize {
        self.log_inv_gamma_time().end
    }

    /// Never true for a valid kernel configuration.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[must_use]
    pub fn w(&self) -> Range<usize> {
        0..self.n_dist * self.n_time
    }

    #[must_use]
    pub fn b(&self) -> Range<usize> {
        let start = self.w().end;
        start..start + self.n_time
    }

    #[must_use]
    pub fn s(&self) -> Range<usize> {
        let start = self.b().end;
        start..start + self.n_dist
    }

    #[must_use]
    pub fn log_inv_gamma_dist(&self) -> Range<usize> {
        let start = self.s().end;
        start..start + self.n_dist
    }

    #[must_use]
    pub fn log_inv_gamma_time(&self) -> Range<usize> {
        let start = self.log_inv_gamma_dist().end;
        start..start + self.n_time
    }

    /// The blocks with their names, in storage order (for model files and gradient checks).
    #[must_use]
    pub fn blocks(&self) -> [(&'static str, Range<usize>); 5] {
        [
            ("w", self.w()),
            ("b", self.b()),
            ("s", self.s()),
            ("log_inv_gamma_dist", self.log_inv_gamma_dist()),
            ("log_inv_gamma_time", self.log_inv_gamma_time()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_sizes_give_620_parameters_in_contiguous_blocks() {
        let layout = ParamLayout::new(50, 10);
        assert_eq!(layout.len(), 620);
        let blocks = layout.blocks();
        assert_eq!(blocks[0].1.start, 0);
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].1.end, pair[1].1.start);
        }
        assert_eq!(blocks[4].1.end, 620);
    }
}
