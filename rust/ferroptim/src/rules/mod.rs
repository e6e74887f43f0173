//! The algorithms, one rule each.

mod adam;
mod sgd;

pub use adam::Adam;
pub use sgd::Sgd;
