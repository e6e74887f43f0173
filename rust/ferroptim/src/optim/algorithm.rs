//! The [`Algorithm`] trait: what the stateful optimizer needs from a rule beyond its update.

use crate::error::{Error, Result};
use crate::rule::Rule;
use std::collections::BTreeMap;
use std::fmt::Debug;
use tch::{Device, Kind, Tensor};

/// The value of one hyperparameter of a parameter group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hyper {
    /// A real number (`lr`, `beta1`, `weight_decay`, …).
    Float(f64),
    /// A flag (`amsgrad`, `maximize`, …).
    Bool(bool),
    /// An optional real number; `None` switches the feature off (ADOPT's `clip_exponent`).
    OptionalFloat(Option<f64>),
    /// An integer (Schedule-Free's `k` and `warmup_steps`, Muon's `ns_steps`, …), a Python
    /// `int` in torch's `param_groups`.
    Int(i64),
    /// One of a fixed set of names, or `None` (Muon's `adjust_lr_fn`, LBFGS's
    /// `line_search_fn`), a Python `str` or `None` in torch's `param_groups`.
    Name(Option<&'static str>),
}

impl std::fmt::Display for Hyper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hyper::Float(v) => write!(f, "{v}"),
            Hyper::Bool(b) => write!(f, "{b}"),
            Hyper::OptionalFloat(Some(v)) => write!(f, "{v}"),
            Hyper::OptionalFloat(None) | Hyper::Name(None) => f.write_str("None"),
            Hyper::Int(v) => write!(f, "{v}"),
            Hyper::Name(Some(name)) => write!(f, "{name:?}"),
        }
    }
}

/// The per-parameter state of an optimizer under torch.optim's names (`exp_avg`, `step`, …),
/// as `optimizer.state[p]` holds it in Python.
pub type ParamState = BTreeMap<String, Tensor>;

/// The configuration of a parameter group of [`crate::Optim`], whatever the algorithm: its
/// hyperparameters by name (as torch's `param_groups` and checkpoints hold them) and
/// torch.optim's validation. Elementwise algorithms implement it with [`Algorithm`] through
/// the [`algorithm!`](crate::algorithm) macro; the configurations of
/// [`crate::tensor_rules`] (Adafactor, Muon, SparseAdam) implement it in this crate.
pub trait Hyperparameters: Clone + Debug + Send + 'static {
    /// The Python class this configuration corresponds to (e.g. `"AdamW"` for [`crate::Adam`]
    /// with decoupled weight decay); informational, written into checkpoints.
    fn class_name(&self) -> &'static str;

    /// The hyperparameters' names: the struct's field names, in declaration order.
    fn hyperparameter_names(&self) -> &'static [&'static str];

    /// The value of hyperparameter `name`, or `None` if the algorithm has no such field.
    fn get(&self, name: &str) -> Option<Hyper>;

    /// Sets hyperparameter `name` without validating the new configuration (the optimizer
    /// calls [`Hyperparameters::validate`] before it stores a changed configuration).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no such hyperparameter or `value` has the wrong
    /// variant (e.g. a flag for `lr`).
    fn set(&mut self, name: &str, value: Hyper) -> Result<()>;

    /// The learning rate (`lr`), as LR schedulers read it.
    fn lr(&self) -> f64;

    /// Sets the learning rate without validating it.
    fn set_lr(&mut self, lr: f64);

    /// torch.optim's checks of the constructor's arguments (its `ValueError` cases).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first invalid hyperparameter and its value.
    fn validate(&self) -> Result<()>;

    /// torch.optim's constructor checks of one parameter of a group (Muon: 2-D only,
    /// SparseAdam: dense only); the default accepts every tensor.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`params`) naming the parameter.
    fn check_param(&self, _index: usize, _param: &Tensor) -> Result<()> {
        Ok(())
    }

    /// Per-parameter state entries that torch keeps as Python numbers rather than tensors
    /// (SparseAdam's `step`, an `int`): the optimizer keeps them as 0-d CPU tensors (int64
    /// for integers) and checkpoints write them as JSON numbers (see
    /// [module documentation](crate::optim#checkpoints)). The default: none.
    fn number_state(&self) -> &'static [&'static str] {
        &[]
    }
}

/// An elementwise [`Rule`] that the stateful optimizer ([`crate::Optim`]) can drive with the
/// fused driver: its [`Hyperparameters`] and how a parameter's state is created.
///
/// The rule struct itself is the configuration of one parameter group (`Default` = torch's
/// defaults). Implement it with the [`algorithm!`](crate::algorithm) macro; see the
/// [module documentation](crate::optim) for a complete user-defined algorithm.
pub trait Algorithm: Rule + Hyperparameters + Default {
    /// The state of `param` as torch.optim creates it on the parameter's first step: every
    /// name of [`Rule::state_names`] as `zeros_like(param)` and every name of
    /// [`Rule::scalar_state_names`] as a float32 0-d CPU tensor holding 0. Rules whose state
    /// starts elsewhere (Adagrad's `sum`, Rprop's `step_size`, NAdam's `mu_product`, ASGD's
    /// `eta` and `mu`) override this.
    ///
    /// # Errors
    /// [`Error::Torch`] if libtorch cannot allocate the tensors.
    fn init_state(&self, param: &Tensor) -> Result<ParamState> {
        zeros_state(self, param)
    }

    /// The rule that updates `param` when it differs from the group's configuration: `None`
    /// (the default) for every parameter of most algorithms. [`crate::Lars`] returns its
    /// configuration without the trust ratio for tensors of at most one dimension, as the
    /// Python class splits its groups.
    fn rule_for(&self, _param: &Tensor) -> Option<Self> {
        None
    }

    /// Called for every group before a step: checks that the group can take one, and returns
    /// the group's configuration after it, for algorithms whose groups carry state that
    /// advances with each step ([`crate::ScheduleFreeAdamWConfig`]'s `k`, `weight_sum`, …);
    /// the optimizer stores it only once the step has succeeded. The default, `Ok(None)`,
    /// leaves the configuration as it is.
    ///
    /// # Errors
    /// Whatever makes the step impossible (Schedule-Free AdamW: eval mode,
    /// [`Error::StateMismatch`]); then nothing changes.
    fn advance(&self, _group: usize) -> Result<Option<Self>> {
        Ok(None)
    }
}

/// The default of [`Algorithm::init_state`]: every state tensor `zeros_like(param)`, every
/// scalar state tensor a float32 0-d CPU tensor holding 0.
///
/// # Errors
/// [`Error::Torch`] if libtorch cannot allocate the tensors.
pub fn zeros_state<R: Rule + ?Sized>(rule: &R, param: &Tensor) -> Result<ParamState> {
    let mut state = ParamState::new();
    for name in rule.state_names() {
        state.insert((*name).to_string(), param.f_zeros_like()?);
    }
    for name in rule.scalar_state_names() {
        state.insert((*name).to_string(), scalar_tensor(0.0, Device::Cpu)?);
    }
    Ok(state)
}

/// A 0-d float32 scalar state tensor holding `value`, as torch.optim creates `step` (on the CPU
/// unless the algorithm places it on the parameter's device).
///
/// # Errors
/// [`Error::Torch`] if libtorch cannot allocate it.
pub fn scalar_tensor(value: f64, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_full([], value, (Kind::Float, device))?)
}

/// torch.optim-style range checks, for [`Hyperparameters::validate`] implementations. Each returns
/// [`Error::InvalidArgument`] naming the argument and the value; NaN fails every check.
pub mod check {
    use super::{Error, Result};

    /// `value >= low`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] otherwise.
    pub fn at_least(name: &'static str, value: f64, low: f64) -> Result<()> {
        if value >= low {
            Ok(())
        } else {
            Err(invalid(name, value))
        }
    }

    /// `value > low`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] otherwise.
    pub fn above(name: &'static str, value: f64, low: f64) -> Result<()> {
        if value > low {
            Ok(())
        } else {
            Err(invalid(name, value))
        }
    }

    /// `value <= high`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] otherwise.
    pub fn at_most(name: &'static str, value: f64, high: f64) -> Result<()> {
        if value <= high {
            Ok(())
        } else {
            Err(invalid(name, value))
        }
    }

    /// `0 <= value < 1` (`closed`: `0 <= value <= 1`), as torch checks `betas` (`rho`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] otherwise.
    pub fn unit(name: &'static str, value: f64, closed: bool) -> Result<()> {
        let below_one = if closed { value <= 1.0 } else { value < 1.0 };
        if value >= 0.0 && below_one {
            Ok(())
        } else {
            Err(invalid(name, value))
        }
    }

    /// The error for an invalid `name = value`.
    pub fn invalid(name: &'static str, value: impl std::fmt::Display) -> Error {
        Error::InvalidArgument {
            name,
            value: value.to_string(),
        }
    }
}

/// Implements [`Algorithm`](crate::optim::Algorithm) (and
/// [`Hyperparameters`](crate::optim::Hyperparameters)) for a rule struct from the list of its
/// hyperparameter fields (each `name: Float | Bool | OptionalFloat | Int`, the
/// [`Hyper`](crate::optim::Hyper) variant of its type) and a validation closure. The struct must
/// have an `f64` field `lr` and implement `Clone`, `Debug` and `Default`.
///
/// ```
/// # use ferroptim::{element::Float, optim::check, Rule, ScalarState};
/// /// SGD that steps by the sign of the gradient.
/// #[derive(Debug, Clone, Copy, Default)]
/// struct SignSgd {
///     /// Learning rate.
///     lr: f64,
/// }
/// impl Rule for SignSgd {
///     type Scalars = f64;
///     fn state_names(&self) -> &'static [&'static str] { &[] }
///     fn scalar_state_names(&self) -> &'static [&'static str] { &[] }
///     fn scalars(&self, _: &mut [ScalarState], _: bool) -> f64 { self.lr }
///     fn update<F: Float>(lr: &f64, p: F, g: F, _: &mut [F]) -> F {
///         let one = F::from_f64(1.0);
///         let s = if g > F::ZERO { one } else if g < F::ZERO { -one } else { g };
///         p - F::from_f64(*lr) * s
///     }
/// }
/// ferroptim::algorithm!(SignSgd, "SignSGD", { lr: Float }, |c| check::at_least("lr", c.lr, 0.0));
/// ```
///
/// An optional `init: path` names a `fn(&Self, &Tensor) -> Result<ParamState>` that replaces
/// the default [`Algorithm::init_state`](crate::optim::Algorithm::init_state); then, as
/// optional, `rule_for: path` a `fn(&Self, &Tensor) -> Option<Self>`
/// ([`Algorithm::rule_for`](crate::optim::Algorithm::rule_for)) and `advance: path` a
/// `fn(&Self, usize) -> Result<Option<Self>>`
/// ([`Algorithm::advance`](crate::optim::Algorithm::advance)).
#[macro_export]
macro_rules! algorithm {
    ($rule:ty, $class:expr, { $($field:ident : $kind:ident),* $(,)? },
     |$c:ident| $validate:expr $(, init: $init:path)? $(, rule_for: $rule_for:path)?
     $(, advance: $advance:path)? $(,)?) => {
        impl $crate::optim::Hyperparameters for $rule {
            fn class_name(&self) -> &'static str {
                let $c = self;
                let _ = $c;
                $class
            }

            fn hyperparameter_names(&self) -> &'static [&'static str] {
                &[$(stringify!($field)),*]
            }

            fn get(&self, name: &str) -> Option<$crate::optim::Hyper> {
                match name {
                    $(stringify!($field) => Some($crate::optim::Hyper::$kind(self.$field)),)*
                    _ => None,
                }
            }

            fn set(&mut self, name: &str, value: $crate::optim::Hyper) -> $crate::Result<()> {
                match (name, value) {
                    $((stringify!($field), $crate::optim::Hyper::$kind(v)) => self.$field = v,)*
                    _ => {
                        return Err($crate::optim::check::invalid(
                            "hyperparameter",
                            format!("{name} = {value}"),
                        ))
                    }
                }
                Ok(())
            }

            fn lr(&self) -> f64 {
                self.lr
            }

            fn set_lr(&mut self, lr: f64) {
                self.lr = lr;
            }

            fn validate(&self) -> $crate::Result<()> {
                let $c = self;
                $validate
            }
        }

        impl $crate::optim::Algorithm for $rule {
            $(
                fn init_state(&self, param: &$crate::tch::Tensor) -> $crate::Result<$crate::optim::ParamState> {
                    $init(self, param)
                }
            )?

            $(
                fn rule_for(&self, param: &$crate::tch::Tensor) -> Option<Self> {
                    $rule_for(self, param)
                }
            )?

            $(
                fn advance(&self, group: usize) -> $crate::Result<Option<Self>> {
                    $advance(self, group)
                }
            )?
        }
    };
}
