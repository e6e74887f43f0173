//! The algorithms, one rule each.

mod adadelta;
mod adagrad;
mod adam;
mod adamax;
mod adopt;
mod asgd;
mod lion;
mod nadam;
mod ops;
mod radam;
mod rmsprop;
mod rprop;
mod sgd;
#[cfg(test)]
mod testing;

pub use adadelta::{Adadelta, AdadeltaScalars};
pub use adagrad::{Adagrad, AdagradScalars};
pub use adam::{Adam, AdamScalars};
pub use adamax::{Adamax, AdamaxScalars};
pub use adopt::{Adopt, AdoptScalars};
pub use asgd::{Asgd, AsgdScalars};
pub use lion::{Lion, LionScalars};
pub use nadam::{NAdam, NAdamScalars};
pub use radam::{RAdam, RAdamScalars};
pub use rmsprop::{RMSprop, RMSpropScalars};
pub use rprop::{Rprop, RpropScalars};
pub use sgd::{Sgd, SgdScalars};
