//! The tch path of the 8-bit step's checks of one parameter: every check, one tch call per
//! property, with errors naming the tensor (see `fast.rs` for the common case).

use super::num_blocks;
use super::step::QuantParam;
use crate::driver::version;
use crate::element::is_supported;
use crate::error::{Error, Result};
use crate::rule::ScalarState;
use tch::{Device, Kind, Tensor};

/// The checks of `Prepared::new` in `step.rs` for a parameter `fast::check` does not accept:
/// every check, with the error naming the tensor; returns the scalar state's values.
pub(super) fn slow_checks(
    qp: &QuantParam,
    names: &[&str],
    scalar_names: &[&str],
    block_size: usize,
    unscale: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<ScalarState>> {
    let p = &qp.param;
    dense(p, &at(""), true)?;
    if !is_supported(p.kind()) {
        return Err(Error::UnsupportedDtype {
            what: at(""),
            kind: p.kind(),
        });
    }
    if p.device() != Device::Cpu {
        return Err(Error::DeviceMismatch {
            what: at("") + " (8-bit state steps on the CPU)",
            expected: Device::Cpu,
            got: p.device(),
        });
    }
    let shape = p.size();
    let g = &qp.grad;
    dense(g, &at("grad"), unscale)?;
    if g.size() != shape {
        return Err(Error::ShapeMismatch {
            what: at("grad"),
            expected: shape,
            got: g.size(),
        });
    }
    if g.device() != p.device() {
        return Err(Error::DeviceMismatch {
            what: at("grad"),
            expected: p.device(),
            got: g.device(),
        });
    }
    if !is_supported(g.kind()) {
        return Err(Error::UnsupportedDtype {
            what: at("grad"),
            kind: g.kind(),
        });
    }
    let numel = p.numel();
    let blocks = num_blocks(numel, block_size);
    for ((c, a), name) in qp.codes.iter().zip(&qp.absmax).zip(names) {
        let cw = at(name);
        dense(c, &cw, true)?;
        dense(a, &(at(name) + "_absmax"), true)?;
        let ok_codes = c.kind() == Kind::Uint8
            && c.device() == Device::Cpu
            && c.is_contiguous()
            && c.numel() == numel;
        let ok_absmax = a.kind() == Kind::Float
            && a.device() == Device::Cpu
            && a.is_contiguous()
            && a.numel() == blocks;
        if !ok_codes || !ok_absmax {
            return Err(Error::StateMismatch {
                what: cw,
                expected: format!(
                    "contiguous CPU uint8 codes of {numel} elements and float32 absmax of \
                     {blocks} elements (block_size {block_size})"
                ),
                got: format!(
                    "{:?} codes of {} elements on {:?}, {:?} absmax of {} elements",
                    c.kind(),
                    c.numel(),
                    c.device(),
                    a.kind(),
                    a.numel()
                ),
            });
        }
    }
    for (t, name) in qp.state.iter().zip(names) {
        dense(t, &at(name), true)?;
        if p.kind() != Kind::BFloat16
            || t.kind() != p.kind()
            || t.device() != Device::Cpu
            || !t.is_contiguous()
            || t.size() != shape
        {
            return Err(Error::StateMismatch {
                what: at(name),
                expected: "bfloat16 parameter and state (unquantized state steps here only \
                           with bfloat16 stochastic rounding), contiguous, on the CPU, \
                           shaped like the parameter"
                    .into(),
                got: format!(
                    "{:?} parameter, {:?} state of shape {:?}",
                    p.kind(),
                    t.kind(),
                    t.size()
                ),
            });
        }
    }
    let mut scalar_values = Vec::with_capacity(scalar_names.len());
    for (t, name) in qp.scalar_state.iter().zip(scalar_names) {
        if !t.defined() || t.is_sparse() || t.numel() != 1 || t.is_complex() {
            return Err(Error::StateMismatch {
                what: at(name),
                expected: "a one-element dense real tensor".into(),
                got: if t.defined() {
                    format!("shape {:?}", t.size())
                } else {
                    "an undefined tensor".into()
                },
            });
        }
        if !version::inplace_allowed(t) {
            return Err(Error::InferenceTensor { what: at(name) });
        }
        scalar_values.push(ScalarState::new(t.f_double_value(&[])?, t.kind()));
    }
    Ok(scalar_values)
}

/// Checks that `t` is defined and dense, and, if `writable`, may be updated in place.
fn dense(t: &Tensor, what: &str, writable: bool) -> Result<()> {
    if !t.defined() {
        return Err(Error::StateMismatch {
            what: what.to_string(),
            expected: "a defined tensor".into(),
            got: "an undefined tensor".into(),
        });
    }
    if t.is_sparse() || t.is_mkldnn() {
        return Err(Error::Sparse {
            what: what.to_string(),
        });
    }
    if writable && !version::inplace_allowed(t) {
        return Err(Error::InferenceTensor {
            what: what.to_string(),
        });
    }
    Ok(())
}
