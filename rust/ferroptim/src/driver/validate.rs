//! Checks run on every input before the driver mutates anything.

use super::ParamTensors;
use crate::element::is_supported;
use crate::error::{Error, Result};
use crate::rule::Rule;
use tch::{Device, Tensor};

/// Names a tensor of a parameter set in error messages: `exp_avg of params[3] in group 1`.
pub(crate) fn label(what: &str, group: usize, index: usize) -> String {
    if what.is_empty() {
        format!("params[{index}] in group {group}")
    } else {
        format!("{what} of params[{index}] in group {group}")
    }
}

/// Validates one parameter's tensors against the rule: presence, layout, shape, device, dtype.
pub(crate) fn check_param<R: Rule>(
    rule: &R,
    pt: &ParamTensors,
    group: usize,
    index: usize,
) -> Result<()> {
    let names = rule.state_names();
    if pt.state.len() != names.len() {
        return Err(Error::StateMismatch {
            what: label("", group, index),
            expected: format!("{} state tensors {names:?}", names.len()),
            got: format!("{} state tensors", pt.state.len()),
        });
    }
    let shape = pt.param.size();
    let device = pt.param.device();
    check_tensor(&pt.param, &label("", group, index), &shape, device)?;
    check_tensor(&pt.grad, &label("grad", group, index), &shape, device)?;
    for (t, name) in pt.state.iter().zip(names) {
        check_tensor(t, &label(name, group, index), &shape, device)?;
    }
    match (&pt.step, rule.uses_step()) {
        (Some(step), true) => {
            let what = label("step", group, index);
            if !step.defined() || step.numel() != 1 || step.is_sparse() {
                return Err(Error::StateMismatch {
                    what,
                    expected: "a one-element dense tensor".into(),
                    got: if step.defined() {
                        format!("shape {:?}", step.size())
                    } else {
                        "an undefined tensor".into()
                    },
                });
            }
        }
        (None, true) => {
            return Err(Error::StateMismatch {
                what: label("step", group, index),
                expected: "a step tensor".into(),
                got: "none".into(),
            })
        }
        _ => {}
    }
    Ok(())
}

fn check_tensor(t: &Tensor, what: &str, shape: &[i64], device: Device) -> Result<()> {
    if !t.defined() {
        return Err(Error::StateMismatch {
            what: what.into(),
            expected: "a defined tensor".into(),
            got: "an undefined tensor".into(),
        });
    }
    if t.is_sparse() || t.is_mkldnn() {
        return Err(Error::Sparse { what: what.into() });
    }
    let kind = t.kind();
    if !is_supported(kind) {
        return Err(Error::UnsupportedDtype {
            what: what.into(),
            kind,
        });
    }
    let got = t.size();
    if got != shape {
        return Err(Error::ShapeMismatch {
            what: what.into(),
            expected: shape.to_vec(),
            got,
        });
    }
    let got = t.device();
    if got != device {
        return Err(Error::DeviceMismatch {
            what: what.into(),
            expected: device,
            got,
        });
    }
    Ok(())
}

/// A CPU tensor's byte range, for the overlap check.
pub(crate) struct Extent {
    start: usize,
    end: usize,
    writable: bool,
    what: String,
}

impl Extent {
    /// The bytes `t` can address (a superset for strided tensors); `None` if it has no elements
    /// or is not on the CPU.
    pub(crate) fn of(t: &Tensor, writable: bool, what: String) -> Option<Extent> {
        if t.device() != Device::Cpu || t.numel() == 0 {
            return None;
        }
        let elem = t.kind().elt_size_in_bytes();
        let span: i64 = t
            .size()
            .iter()
            .zip(t.stride())
            .map(|(n, s)| (n - 1) * s.abs())
            .sum();
        let start = t.data_ptr() as usize;
        Some(Extent {
            start,
            end: start + (span as usize + 1) * elem,
            writable,
            what,
        })
    }
}

/// Fails if any written tensor shares memory with any other tensor.
pub(crate) fn check_overlaps(mut extents: Vec<Extent>) -> Result<()> {
    extents.sort_by_key(|e| e.start);
    let mut widest_any: Option<&Extent> = None;
    let mut widest_written: Option<&Extent> = None;
    for e in &extents {
        for prev in [widest_written, widest_any.filter(|_| e.writable)]
            .into_iter()
            .flatten()
        {
            if e.start < prev.end {
                return Err(Error::Overlap {
                    first: prev.what.clone(),
                    second: e.what.clone(),
                });
            }
        }
        if widest_any.is_none_or(|w| e.end > w.end) {
            widest_any = Some(e);
        }
        if e.writable && widest_written.is_none_or(|w| e.end > w.end) {
            widest_written = Some(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: usize, end: usize, writable: bool) -> Extent {
        Extent {
            start,
            end,
            writable,
            what: format!("[{start}, {end})"),
        }
    }

    #[test]
    fn read_only_tensors_may_share_memory() {
        assert!(check_overlaps(vec![ext(0, 10, false), ext(5, 15, false)]).is_ok());
        assert!(check_overlaps(vec![ext(0, 10, true), ext(10, 20, true)]).is_ok());
    }

    #[test]
    fn a_written_tensor_may_not_overlap_anything() {
        assert!(check_overlaps(vec![ext(0, 10, false), ext(5, 15, true)]).is_err());
        assert!(check_overlaps(vec![ext(0, 100, true), ext(20, 30, false)]).is_err());
        // hidden behind a wide read-only extent that ends first
        assert!(
            check_overlaps(vec![ext(0, 50, true), ext(1, 2, false), ext(40, 45, false)]).is_err()
        );
    }
}
