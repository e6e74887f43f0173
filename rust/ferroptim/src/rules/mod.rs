//! The algorithms, one rule each.

mod adadelta;
mod adagrad;
mod adam;
mod adamax;
mod adan;
mod ademamix;
mod adopt;
mod asgd;
mod lamb;
mod lars;
mod lion;
mod nadam;
mod ops;
pub(crate) use ops::sign;
mod radam;
mod rmsprop;
mod rprop;
mod schedule_free;
mod sgd;
#[cfg(test)]
mod testing;

pub use adadelta::{Adadelta, AdadeltaScalars};
pub use adagrad::{Adagrad, AdagradScalars};
pub use adam::{Adam, AdamScalars};
pub use adamax::{Adamax, AdamaxScalars};
pub use adan::{Adan, AdanScalars};
pub use ademamix::{AdEMAMix, AdEMAMixScalars};
pub use adopt::{Adopt, AdoptScalars};
pub use asgd::{Asgd, AsgdScalars};
pub use lamb::{Lamb, LambScalars, LAMB_MAX_WEIGHT_NORM};
pub use lars::{Lars, LarsScalars};
pub use lion::{Lion, LionScalars};
pub use nadam::{NAdam, NAdamScalars};
pub use radam::{RAdam, RAdamScalars};
pub use rmsprop::{RMSprop, RMSpropScalars};
pub use rprop::{Rprop, RpropScalars};
pub use schedule_free::{ScheduleFreeAdamW, ScheduleFreeAdamWScalars};
pub use sgd::{Sgd, SgdScalars};
