//! Files: model files (JSON).

pub mod model;
