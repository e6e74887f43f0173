//! Checks run on every input before the driver mutates anything.

use super::Entry;
use super::{fast, version};
use crate::element::is_supported;
use crate::error::{Error, Result};
use crate::rule::{Rule, MAX_SCALAR_STATE, MAX_STATE};
use tch::{Device, Kind, Tensor};

/// Which tensor of which parameter; formatted only when an error names it, so the checks of
/// a valid step allocate nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who {
    /// `""` for the parameter itself, else `grad`, `step` or a state name.
    pub what: &'static str,
    pub group: usize,
    pub index: usize,
}

impl Who {
    /// `exp_avg of params[3] in group 1`.
    pub(crate) fn label(self) -> String {
        let Who { what, group, index } = self;
        if what.is_empty() {
            format!("params[{index}] in group {group}")
        } else {
            format!("{what} of params[{index}] in group {group}")
        }
    }
}

/// What the driver needs to know about a validated tensor, read from libtorch once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub kind: Kind,
    pub device: Device,
    pub contiguous: bool,
    /// Address of the first element.
    pub ptr: usize,
    pub numel: usize,
    /// Bytes from the first to one past the last addressable element (0 if empty).
    pub span: usize,
}

impl Meta {
    /// Fills unused slots.
    const UNUSED: Meta = Meta {
        kind: Kind::Float,
        device: Device::Cpu,
        contiguous: true,
        ptr: 0,
        numel: 0,
        span: 0,
    };
}

/// The metadata of a parameter's tensors, in the driver's order.
#[derive(Debug)]
pub(crate) struct ParamMeta {
    pub param: Meta,
    pub grad: Meta,
    /// The state tensors' metadata: the first `n_state` entries (no allocation per parameter).
    state: [Meta; MAX_STATE],
    n_state: usize,
    /// The scalar state's metadata (see [`Rule::scalar_state_names`]), for those that are
    /// dense one-element tensors of a float dtype; `None` entries are read and written
    /// through tch.
    pub scalar_state: [Option<Meta>; MAX_SCALAR_STATE],
}

impl ParamMeta {
    /// A slot for [`fast_check`] or [`check_slow`] to fill.
    pub(crate) const EMPTY: ParamMeta = ParamMeta {
        param: Meta::UNUSED,
        grad: Meta::UNUSED,
        state: [Meta::UNUSED; MAX_STATE],
        n_state: 0,
        scalar_state: [None; MAX_SCALAR_STATE],
    };

    /// The metadata of staged copies (at most [`MAX_STATE`] state tensors, as validated), with
    /// no scalar state metadata.
    pub(crate) fn staged(param: Meta, grad: Meta, states: impl Iterator<Item = Meta>) -> Self {
        let mut state = [Meta::UNUSED; MAX_STATE];
        let mut n_state = 0;
        for (slot, m) in state.iter_mut().zip(states) {
            *slot = m;
            n_state += 1;
        }
        ParamMeta {
            param,
            grad,
            state,
            n_state,
            scalar_state: [None; MAX_SCALAR_STATE],
        }
    }

    /// The state tensors' metadata, in the rule's order.
    pub(crate) fn state(&self) -> &[Meta] {
        &self.state[..self.n_state]
    }

    /// True when the fused kernel can update the parameter in place: every tensor is a
    /// contiguous CPU tensor of the parameter's dtype.
    pub(crate) fn is_direct(&self) -> bool {
        let kind = self.param.kind;
        std::iter::once(&self.grad)
            .chain(self.state())
            .chain(std::iter::once(&self.param))
            .all(|m| m.device == Device::Cpu && m.kind == kind && m.contiguous)
    }
}

/// Validates one parameter's tensors against the rule, the slow way (for parameters that
/// [`fast_check`] refused): presence, layout, shape, device, dtype, one tch call per property,
/// and the precise error. Writes their metadata to `out` (in place: `ParamMeta` is large).
pub(crate) fn check_slow<R: Rule>(
    rule: &R,
    pt: &impl Entry,
    group: usize,
    index: usize,
    grad_writable: bool,
    out: &mut ParamMeta,
) -> Result<()> {
    let at = |what| Who { what, group, index };
    let names = rule.state_names();
    if pt.state().len() != names.len() || names.len() > MAX_STATE {
        return Err(Error::StateMismatch {
            what: at("").label(),
            expected: format!("{} state tensors {names:?}", names.len()),
            got: format!("{} state tensors", pt.state().len()),
        });
    }
    let scalar_names = rule.scalar_state_names();
    if pt.scalar_state().len() != scalar_names.len() {
        return Err(Error::StateMismatch {
            what: at("").label(),
            expected: format!(
                "{} scalar state tensors {scalar_names:?}",
                scalar_names.len()
            ),
            got: format!("{} scalar state tensors", pt.scalar_state().len()),
        });
    }
    read_scalar_metas(pt, out);
    let (param, shape) = inspect(pt.param(), at(""), true)?;
    let like_param = |t: &Tensor, who: Who, writable: bool| -> Result<Meta> {
        let (meta, got) = inspect(t, who, writable)?;
        if got != shape {
            return Err(Error::ShapeMismatch {
                what: who.label(),
                expected: shape.clone(),
                got,
            });
        }
        if meta.device != param.device {
            return Err(Error::DeviceMismatch {
                what: who.label(),
                expected: param.device,
                got: meta.device,
            });
        }
        Ok(meta)
    };
    let grad = like_param(pt.grad(), at("grad"), grad_writable)?;
    let mut state = [Meta::UNUSED; MAX_STATE];
    for ((m, t), name) in state.iter_mut().zip(pt.state()).zip(names) {
        *m = like_param(t, at(name), true)?;
    }
    for (t, name) in pt.scalar_state().iter().zip(scalar_names) {
        check_scalar_state(t, at(name))?;
        check_writable(t, at(name))?;
    }
    (out.param, out.grad, out.state, out.n_state) = (param, grad, state, names.len());
    Ok(())
}

/// Writes all of a parameter's metadata through `fast::meta` to `out` and returns true, if
/// it has the rule's numbers of state and scalar state tensors, every tensor is a plain dense
/// tensor of a supported dtype, shaped and placed like the parameter, and every scalar state
/// tensor is a one-element tensor: then there is nothing to report. False: take the slow path
/// ([`check_slow`]), which overwrites what was written.
///
/// Only reads libtorch metadata (see `csrc/inspect.cpp`), so it may run on several threads
/// at once for distinct parameters, and it allocates nothing.
pub(crate) fn fast_check<R: Rule>(
    rule: &R,
    pt: &impl Entry,
    grad_writable: bool,
    out: &mut ParamMeta,
) -> bool {
    let n_state = pt.state().len();
    if n_state != rule.state_names().len()
        || n_state > MAX_STATE
        || pt.scalar_state().len() != rule.scalar_state_names().len()
    {
        return false;
    }
    read_scalar_metas(pt, out);
    if out
        .scalar_state
        .iter()
        .take(pt.scalar_state().len())
        .any(Option::is_none)
    {
        return false;
    }
    let (Some(param), Some(grad)) = (
        fast::meta(pt.param(), None, true),
        fast::meta(pt.grad(), Some(pt.param()), grad_writable),
    ) else {
        return false;
    };
    (out.param, out.grad, out.n_state) = (param, grad, n_state);
    for (m, t) in out.state.iter_mut().zip(pt.state()) {
        match fast::meta(t, Some(pt.param()), true) {
            Some(meta) => *m = meta,
            None => return false,
        }
    }
    true
}

/// Sets `out.scalar_state`: the metadata of the scalar state tensors that are dense
/// one-element tensors of a supported float dtype, `None` for the others.
fn read_scalar_metas(pt: &impl Entry, out: &mut ParamMeta) {
    out.scalar_state = [None; MAX_SCALAR_STATE];
    for (m, t) in out.scalar_state.iter_mut().zip(pt.scalar_state()) {
        *m = fast::meta(t, None, true).filter(|m| m.numel == 1);
    }
}

/// Checks that a scalar state tensor (`step`, …) is defined, dense and has one element.
fn check_scalar_state(t: &Tensor, who: Who) -> Result<()> {
    let got = if !t.defined() {
        "an undefined tensor".to_string()
    } else if t.is_sparse() || t.numel() != 1 {
        format!("shape {:?}", t.size())
    } else if t.is_complex() {
        format!("dtype {:?}", t.kind())
    } else {
        return Ok(());
    };
    Err(Error::StateMismatch {
        what: who.label(),
        expected: "a one-element dense real tensor".into(),
        got,
    })
}

/// Checks that `t` may be updated in place here (see [`version::inplace_allowed`]).
fn check_writable(t: &Tensor, who: Who) -> Result<()> {
    if version::inplace_allowed(t) {
        Ok(())
    } else {
        Err(Error::InferenceTensor { what: who.label() })
    }
}

/// Checks that `t` is a defined, dense tensor of a supported dtype (and, if `writable`, one
/// that may be updated in place) and reads its metadata.
fn inspect(t: &Tensor, who: Who, writable: bool) -> Result<(Meta, Vec<i64>)> {
    if !t.defined() {
        return Err(Error::StateMismatch {
            what: who.label(),
            expected: "a defined tensor".into(),
            got: "an undefined tensor".into(),
        });
    }
    if t.is_sparse() || t.is_mkldnn() {
        return Err(Error::Sparse { what: who.label() });
    }
    if writable {
        check_writable(t, who)?;
    }
    let kind = t.kind();
    if !is_supported(kind) {
        return Err(Error::UnsupportedDtype {
            what: who.label(),
            kind,
        });
    }
    let shape = t.size();
    let strides = t.stride();
    let numel: i64 = shape.iter().product();
    let elem = kind.elt_size_in_bytes();
    let span = if numel == 0 {
        0
    } else {
        let last: i64 = shape
            .iter()
            .zip(&strides)
            .map(|(n, s)| (n - 1) * s.abs())
            .sum();
        (last as usize + 1) * elem
    };
    let meta = Meta {
        kind,
        device: t.device(),
        contiguous: is_contiguous(&shape, &strides),
        ptr: t.data_ptr() as usize,
        numel: numel as usize,
        span,
    };
    Ok((meta, shape))
}

/// Row-major contiguity as torch defines it (dimensions of size 1 may have any stride).
fn is_contiguous(shape: &[i64], strides: &[i64]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 {
            if s != expected {
                return false;
            }
            expected *= n;
        }
    }
    true
}

/// A CPU tensor's byte range, for the overlap check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    start: usize,
    end: usize,
    who: Who,
}

impl Extent {
    /// The bytes a tensor can address (a superset for strided tensors); `None` if it has no
    /// elements or is not on the CPU.
    pub(crate) fn of(m: &Meta, who: Who) -> Option<Extent> {
        if m.device != Device::Cpu || m.span == 0 {
            return None;
        }
        Some(Extent {
            start: m.ptr,
            end: m.ptr + m.span,
            who,
        })
    }
}

/// What the overlap check of the last step found, so that a step over the same tensors
/// (the usual case: parameters and state stay put, only gradients are new) does not sort
/// them again, and the step's scratch buffers, so that a step allocates nothing per
/// parameter. Create it with [`StepCache::default`] and pass the same one to every step of
/// the same parameters; a cache from other tensors is harmless (it just misses).
#[derive(Debug, Default)]
pub struct StepCache {
    /// The written extents of the last successful check, in the driver's order.
    keys: Vec<(usize, usize)>,
    /// The same extents sorted by address (pairwise disjoint).
    sorted: Vec<Extent>,
    /// Scratch: this step's written and read extents, and its parameters' metadata.
    pub(crate) written: Vec<Extent>,
    pub(crate) read: Vec<Extent>,
    pub(crate) metas: Vec<ParamMeta>,
    /// Scratch: which parameters the fast path of validation accepted.
    pub(crate) fast: Vec<bool>,
    /// Scratch: the addresses of the `at::Tensor`s whose version counters this step bumps.
    pub(crate) bumps: Vec<usize>,
}

impl StepCache {
    /// Fails unless the `written` extents are pairwise disjoint and no `read` extent overlaps
    /// a written one (read-only tensors may share memory with each other).
    pub(crate) fn check_overlaps(&mut self) -> Result<()> {
        let written = &self.written;
        let same = self.keys.len() == written.len()
            && self
                .keys
                .iter()
                .zip(written)
                .all(|(&(start, end), e)| start == e.start && end == e.end);
        if !same {
            self.keys.clear();
            self.sorted.clear();
            self.sorted.extend_from_slice(written);
            self.sorted.sort_unstable_by_key(|e| e.start);
            // Sorted by start, the extents are disjoint iff each one ends before the next
            // starts.
            if let Some(pair) = self.sorted.windows(2).find(|w| w[1].start < w[0].end) {
                return Err(Error::Overlap {
                    first: pair[0].who.label(),
                    second: pair[1].who.label(),
                });
            }
            self.keys.extend(written.iter().map(|e| (e.start, e.end)));
        }
        for r in &self.read {
            // Written extents are sorted and disjoint, so their ends increase too: of those
            // that start before `r` ends, only the last can reach into `r`.
            let i = self.sorted.partition_point(|w| w.start < r.end);
            if let Some(w) = i.checked_sub(1).map(|i| &self.sorted[i]) {
                if w.end > r.start {
                    return Err(Error::Overlap {
                        first: w.who.label(),
                        second: r.who.label(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: usize, end: usize) -> Extent {
        Extent {
            start,
            end,
            who: Who {
                what: "x",
                group: start,
                index: end,
            },
        }
    }

    /// `(start, end, written)` extents through a fresh cache.
    fn check(extents: &[(usize, usize, bool)]) -> Result<()> {
        let pick = |w: bool| -> Vec<Extent> {
            extents
                .iter()
                .filter(|e| e.2 == w)
                .map(|&(s, e, _)| ext(s, e))
                .collect()
        };
        overlaps(pick(true), pick(false), &mut StepCache::default())
    }

    fn overlaps(written: Vec<Extent>, read: Vec<Extent>, cache: &mut StepCache) -> Result<()> {
        cache.written = written;
        cache.read = read;
        cache.check_overlaps()
    }

    #[test]
    fn contiguity_follows_torch() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[1, 3], &[7, 1])); // size-1 dims: any stride
        assert!(is_contiguous(&[0, 3], &[1, 1]));
        assert!(is_contiguous(&[], &[]));
    }

    #[test]
    fn read_only_tensors_may_share_memory() {
        assert!(check(&[(0, 10, false), (5, 15, false)]).is_ok());
        assert!(check(&[(0, 10, true), (10, 20, true)]).is_ok());
    }

    #[test]
    fn a_written_tensor_may_not_overlap_anything() {
        assert!(check(&[(0, 10, false), (5, 15, true)]).is_err());
        assert!(check(&[(0, 100, true), (20, 30, false)]).is_err());
        assert!(check(&[(0, 100, true), (20, 30, true)]).is_err());
        // a read extent spanning a gap between written ones
        assert!(check(&[(0, 10, true), (20, 30, true), (5, 25, false)]).is_err());
        assert!(check(&[(0, 10, true), (20, 30, true), (10, 20, false)]).is_ok());
    }

    #[test]
    fn the_cache_skips_the_sort_but_still_checks_what_is_read() {
        let mut cache = StepCache::default();
        let written = || vec![ext(100, 200), ext(0, 50)];
        assert!(overlaps(written(), vec![ext(50, 100)], &mut cache).is_ok());
        assert_eq!(cache.keys, vec![(100, 200), (0, 50)]);
        assert!(overlaps(written(), vec![ext(40, 60)], &mut cache).is_err());
        // other written extents: checked afresh, and a failed check leaves no cache behind
        assert!(overlaps(vec![ext(0, 50), ext(49, 60)], vec![], &mut cache).is_err());
        assert!(cache.keys.is_empty());
    }
}
