//! The 8-bit step's checks of one parameter from one metadata read per tensor
//! (`driver::fast`, `csrc/inspect.cpp`) instead of about 70 tch calls, two dispatched ops
//! (`item()` and `fill_()` of the step count) and a dozen formatted labels: the per-tensor
//! cost that dominated a step over many mid-sized tensors (`benches/RESULTS.md`, issue 16).
//!
//! It accepts only the common case, with exactly the checks of the tch path in `step.rs`:
//! plain dense contiguous CPU tensors, the gradient of the parameter's shape and dtype, codes
//! and absmax of the expected sizes, `float32` scalar state. Anything else returns `None` and
//! takes the tch path, which also words the error.

use super::num_blocks;
use super::step::QuantParam;
use crate::driver::{fast::meta_of_kind, Meta};
use crate::element::is_supported;
use crate::rule::{ScalarState, MAX_SCALAR_STATE, MAX_STATE};
use tch::{Device, Kind};

/// What the checks read: the addresses and byte spans of a parameter's tensors.
#[derive(Clone, Copy, Debug)]
pub(super) struct FastMeta {
    pub param: Meta,
    pub grad: Meta,
    /// Per state tensor: the codes and absmax (8-bit state) or the state tensor itself (in
    /// `codes`, with `absmax` unused).
    pub codes: [Option<Meta>; MAX_STATE],
    pub absmax: [Option<Meta>; MAX_STATE],
    /// Address of each `float32` scalar state element (read before and written after the
    /// step through it).
    pub scalar: [usize; MAX_SCALAR_STATE],
}

/// Checks `qp` (with `n_state` state tensors, which the caller has matched against the rule,
/// and `n_scalar` scalar state tensors) as the tch path does and reads its scalar state, or
/// `None`: not the common case, take the tch path. `unscale`: the gradient is written (the
/// step unscales it in place).
pub(super) fn check(
    qp: &QuantParam,
    n_state: usize,
    n_scalar: usize,
    block_size: usize,
    unscale: bool,
) -> Option<(FastMeta, Vec<ScalarState>)> {
    if n_state > MAX_STATE || n_scalar > MAX_SCALAR_STATE || qp.scalar_state.len() != n_scalar {
        return None;
    }
    let param = meta_any(&qp.param)?;
    if !param.contiguous || param.device != Device::Cpu {
        return None;
    }
    let grad = meta_of_kind(&qp.grad, Some(&qp.param), unscale, param.kind)?;
    if !grad.contiguous {
        return None;
    }
    let mut out = FastMeta {
        param,
        grad,
        codes: [None; MAX_STATE],
        absmax: [None; MAX_STATE],
        scalar: [0; MAX_SCALAR_STATE],
    };
    let plain = !qp.state.is_empty();
    if plain {
        // Unquantized state: bfloat16 parameters with stochastic rounding only.
        if param.kind != Kind::BFloat16 || qp.state.len() != n_state {
            return None;
        }
        for (slot, t) in out.codes.iter_mut().zip(&qp.state) {
            *slot = Some(contiguous_cpu(meta_of_kind(
                t,
                Some(&qp.param),
                true,
                param.kind,
            )?)?);
        }
    } else {
        if qp.codes.len() != n_state || qp.absmax.len() != n_state {
            return None;
        }
        let blocks = num_blocks(param.numel, block_size);
        for (k, (c, a)) in qp.codes.iter().zip(&qp.absmax).enumerate() {
            let c = contiguous_cpu(meta_of_kind(c, None, true, Kind::Uint8)?)?;
            let a = contiguous_cpu(meta_of_kind(a, None, true, Kind::Float)?)?;
            if c.numel != param.numel || a.numel != blocks {
                return None;
            }
            (out.codes[k], out.absmax[k]) = (Some(c), Some(a));
        }
    }
    let mut values = Vec::with_capacity(n_scalar);
    for (slot, t) in out.scalar.iter_mut().zip(&qp.scalar_state) {
        let m = contiguous_cpu(meta_of_kind(t, None, true, Kind::Float)?)?;
        if m.numel != 1 {
            return None;
        }
        // SAFETY: `m` describes a live dense one-element float32 CPU tensor (the caller holds
        // `qp`) whose element is at `m.ptr`, read here on the caller's thread before any
        // write of this step.
        let v = unsafe { *(m.ptr as *const f32) };
        values.push(ScalarState::new(f64::from(v), Kind::Float));
        *slot = m.ptr;
    }
    Some((out, values))
}

/// A parameter's metadata if its dtype is one the rules support.
fn meta_any(t: &tch::Tensor) -> Option<Meta> {
    let m = crate::driver::fast::meta(t, None, true)?;
    is_supported(m.kind).then_some(m)
}

fn contiguous_cpu(m: Meta) -> Option<Meta> {
    (m.contiguous && m.device == Device::Cpu).then_some(m)
}
