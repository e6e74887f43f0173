//! L-BFGS with optional strong-Wolfe line search.
//!
//! Nocedal, "Updating Quasi-Newton Matrices with Limited Storage" (Math. Comp. 1980) and
//! Nocedal & Wright, "Numerical Optimization" (2006), Algorithms 7.4 (two-loop recursion) and
//! 3.5/3.6 (strong-Wolfe line search), as `torch.optim.LBFGS` (torch 2.11, after minFunc and
//! torch7's `optim`) implements them: every tensor operation and every Python-number
//! operation (ints, floats and 0-d tensors, see [`Num`]) in torch's order, so the iterates,
//! the history and the number of closure evaluations are torch's.
//!
//! The closure re-evaluates the objective at the current parameters and returns the loss and
//! the parameters' gradients (`None` for a parameter without one).

use super::add_alpha_;
use super::line_search::strong_wolfe;
use super::num::{py_min, Cmp, Num};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// L-BFGS hyperparameters, named as in `torch.optim.LBFGS`.
#[derive(Debug, Clone)]
pub struct Lbfgs {
    /// Learning rate: the step length (default 1; torch's default is the int 1).
    pub lr: Num,
    /// Iterations per `step` (default 20).
    pub max_iter: i64,
    /// Closure evaluations per `step` (default `max_iter * 5 / 4`).
    pub max_eval: i64,
    /// Stop when the largest gradient entry is at most this (default 1e-7).
    pub tolerance_grad: f64,
    /// Stop when the step, or the loss change, is below this (default 1e-9).
    pub tolerance_change: f64,
    /// Correction pairs kept (default 100).
    pub history_size: usize,
    /// Strong-Wolfe line search (`line_search_fn="strong_wolfe"`) or a fixed step (default).
    pub strong_wolfe: bool,
}

/// torch's `state[params[0]]`: each field is the entry of the same name (`H_diag` →
/// `h_diag`); `None` where the entry does not exist (yet).
#[derive(Debug, Default)]
pub struct LbfgsState {
    /// `func_evals`: closure evaluations so far.
    pub func_evals: i64,
    /// `n_iter`: iterations so far.
    pub n_iter: i64,
    /// `d`: the last search direction.
    pub d: Option<Tensor>,
    /// `t`: the last step length.
    pub t: Option<Num>,
    /// `old_dirs`: gradient differences y.
    pub old_dirs: Option<Vec<Tensor>>,
    /// `old_stps`: steps s.
    pub old_stps: Option<Vec<Tensor>>,
    /// `ro`: 1/(yᵀs) per pair.
    pub ro: Option<Vec<Num>>,
    /// `H_diag`: scale of the initial inverse Hessian.
    pub h_diag: Option<Num>,
    /// `prev_flat_grad`: the previous flat gradient.
    pub prev_flat_grad: Option<Tensor>,
    /// `prev_loss`: the previous loss.
    pub prev_loss: Option<f64>,
    /// `al`: the two-loop recursion's α per slot (`history_size` slots).
    pub al: Option<Vec<Option<Num>>>,
    /// Whether this step reached the end of its iterations (torch then stores `d` … `prev_loss`;
    /// it returns early, storing only the counters, when the first gradient is already small).
    pub stored: bool,
}

/// What the closure returns: the loss as a float and each parameter's gradient.
pub type Evaluation = (f64, Vec<Option<Tensor>>);

pub(super) struct Problem<'a, F> {
    params: &'a [Tensor],
    closure: F,
    numel: i64,
}

impl<F: FnMut() -> Result<Evaluation>> Problem<'_, F> {
    pub(super) fn evaluate(&mut self) -> Result<(f64, Tensor)> {
        let (loss, grads) = (self.closure)()?;
        Ok((loss, self.flat_grad(grads)?))
    }

    /// torch's `_gather_flat_grad`.
    fn flat_grad(&self, grads: Vec<Option<Tensor>>) -> Result<Tensor> {
        if grads.len() != self.params.len() {
            return Err(Error::StateMismatch {
                what: "LBFGS closure".into(),
                expected: format!("{} gradients", self.params.len()),
                got: grads.len().to_string(),
            });
        }
        let mut views = Vec::with_capacity(grads.len());
        for (p, g) in self.params.iter().zip(grads) {
            views.push(match g {
                None => p.f_new_zeros([p.numel() as i64], (p.kind(), p.device()))?,
                Some(g) if g.is_sparse() => g.f_to_dense(None::<Kind>, false)?.f_view([-1])?,
                Some(g) => g.f_view([-1])?,
            });
        }
        Ok(Tensor::f_cat(&views, 0)?)
    }

    /// torch's `_add_grad`: `p += step_size · update[slice]` for each parameter.
    pub(super) fn add_grad(&self, step_size: &Num, update: &Tensor) -> Result<()> {
        let alpha = step_size.value()?;
        let mut offset = 0i64;
        for p in self.params {
            let n = p.numel() as i64;
            let part = update.f_narrow(0, offset, n)?.f_view_as(p)?;
            add_alpha_(p, &part, alpha)?;
            offset += n;
        }
        if offset != self.numel {
            return Err(Error::StateMismatch {
                what: "LBFGS direction".into(),
                expected: format!("{} elements", self.numel),
                got: offset.to_string(),
            });
        }
        Ok(())
    }

    fn clone_params(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.params.len());
        for p in self.params {
            let c = p.f_empty_like()?.f_contiguous()?;
            c.shallow_clone().f_copy_(p)?;
            out.push(c);
        }
        Ok(out)
    }

    fn set_params(&self, x: &[Tensor]) -> Result<()> {
        for (p, v) in self.params.iter().zip(x) {
            p.shallow_clone().f_copy_(v)?;
        }
        Ok(())
    }

    /// torch's `_directional_evaluate`: the loss and flat gradient at `x + t·d`; the
    /// parameters are restored to `x`.
    pub(super) fn directional(
        &mut self,
        x: &[Tensor],
        t: &Num,
        d: &Tensor,
    ) -> Result<(f64, Tensor)> {
        self.add_grad(t, d)?;
        let out = self.evaluate()?;
        self.set_params(x)?;
        Ok(out)
    }
}

fn max_abs_le(t: &Tensor, bound: f64) -> Result<bool> {
    let m = Num::Tensor(t.f_abs()?.f_max()?);
    m.cmp(Cmp::Le, &Num::Float(bound))
}

pub(super) fn contiguous_clone(t: &Tensor) -> Result<Tensor> {
    let c = t.f_empty_like()?.f_contiguous()?;
    c.shallow_clone().f_copy_(t)?;
    Ok(c)
}

/// One `torch.optim.LBFGS.step(closure)`: up to `max_iter` iterations over `params` (updated
/// in place), `state` read and updated as torch's `state[params[0]]`.
///
/// # Errors
/// Errors from the closure are returned as they are; libtorch errors as [`Error::Torch`];
/// a closure returning the wrong number of gradients as [`Error::StateMismatch`]. As in
/// torch, parameters and state may have changed when an error occurs (the closure runs
/// between updates).
pub fn step<F>(h: &Lbfgs, params: &[Tensor], state: &mut LbfgsState, closure: F) -> Result<()>
where
    F: FnMut() -> Result<Evaluation>,
{
    let numel = params.iter().map(|p| p.numel() as i64).sum();
    let mut pb = Problem {
        params,
        closure,
        numel,
    };
    state.stored = false;
    let (mut loss, mut flat_grad) = pb.evaluate()?;
    let mut current_evals = 1i64;
    state.func_evals += 1;
    let mut opt_cond = max_abs_le(&flat_grad, h.tolerance_grad)?;
    if opt_cond {
        return Ok(());
    }
    let mut d = state.d.take();
    let mut t = state.t.take();
    let mut old_dirs = state.old_dirs.take().unwrap_or_default();
    let mut old_stps = state.old_stps.take().unwrap_or_default();
    let mut ro = state.ro.take().unwrap_or_default();
    let mut h_diag = state.h_diag.take();
    let mut prev_flat_grad = state.prev_flat_grad.take();
    let mut prev_loss = state.prev_loss.take();
    let mut n_iter = 0i64;
    while n_iter < h.max_iter {
        n_iter += 1;
        state.n_iter += 1;
        // Descent direction.
        let dir = if state.n_iter == 1 {
            old_dirs.clear();
            old_stps.clear();
            ro.clear();
            h_diag = Some(Num::Int(1));
            flat_grad.f_neg()?
        } else {
            let (prev, last_d, last_t) = match (&prev_flat_grad, &d, &t) {
                (Some(p), Some(d), Some(t)) => (p, d, t),
                _ => return Err(missing_history()),
            };
            let y = flat_grad.f_sub(prev)?;
            let s = match Num::Tensor(last_d.shallow_clone()).mul(last_t)? {
                Num::Tensor(s) => s,
                _ => return Err(missing_history()),
            };
            let ys = y.f_dot(&s)?;
            if Num::Tensor(ys.shallow_clone()).cmp(Cmp::Gt, &Num::Float(1e-10))? {
                if old_dirs.len() == h.history_size && !old_dirs.is_empty() {
                    drop(old_dirs.remove(0));
                    drop(old_stps.remove(0));
                    drop(ro.remove(0));
                }
                let yy = y.f_dot(&y)?;
                old_dirs.push(y);
                old_stps.push(s);
                ro.push(Num::Float(1.0).div(&Num::Tensor(ys.shallow_clone()))?);
                h_diag = Some(Num::Tensor(ys.f_div(&yy)?));
            }
            let num_old = old_dirs.len();
            let al = state.al.get_or_insert_with(|| vec![None; h.history_size]);
            if al.len() < num_old {
                al.resize(num_old, None);
            }
            let q = flat_grad.f_neg()?;
            for i in (0..num_old).rev() {
                let a = Num::Tensor(old_stps[i].f_dot(&q)?).mul(&ro[i])?;
                add_alpha_(&q, &old_dirs[i], a.neg()?.value()?)?;
                al[i] = Some(a);
            }
            let scale = h_diag.clone().unwrap_or(Num::Int(1));
            let r = match Num::Tensor(q).mul(&scale)? {
                Num::Tensor(r) => r,
                _ => return Err(missing_history()),
            };
            for i in 0..num_old {
                let be = Num::Tensor(old_dirs[i].f_dot(&r)?).mul(&ro[i])?;
                let a = al[i].clone().ok_or_else(missing_history)?;
                add_alpha_(&r, &old_stps[i], a.sub(&be)?.value()?)?;
            }
            r
        };
        d = Some(dir.shallow_clone());
        match &prev_flat_grad {
            None => prev_flat_grad = Some(contiguous_clone(&flat_grad)?),
            Some(p) => {
                p.shallow_clone().f_copy_(&flat_grad)?;
            }
        }
        prev_loss = Some(loss);
        // Step length.
        let step_len = if state.n_iter == 1 {
            let inv = Num::Float(1.0).div(&Num::Tensor(flat_grad.f_abs()?.f_sum(None::<Kind>)?))?;
            py_min(&Num::Float(1.0), &inv)?.mul(&h.lr)?
        } else {
            h.lr.clone()
        };
        t = Some(step_len.clone());
        let gtd = flat_grad.f_dot(&dir)?;
        if Num::Tensor(gtd.shallow_clone()).cmp(Cmp::Gt, &Num::Float(-h.tolerance_change))? {
            break;
        }
        let mut ls_func_evals = 0i64;
        if h.strong_wolfe {
            let x_init = pb.clone_params()?;
            let ls = strong_wolfe(
                &mut pb,
                &x_init,
                step_len,
                &dir,
                loss,
                &flat_grad,
                &gtd,
                h.max_eval - current_evals,
            )?;
            loss = ls.f;
            flat_grad = ls.g;
            ls_func_evals = ls.evals;
            pb.add_grad(&ls.t, &dir)?;
            t = Some(ls.t);
            opt_cond = max_abs_le(&flat_grad, h.tolerance_grad)?;
        } else {
            pb.add_grad(&step_len, &dir)?;
            if n_iter != h.max_iter {
                let (l, g) = pb.evaluate()?;
                loss = l;
                flat_grad = g;
                opt_cond = max_abs_le(&flat_grad, h.tolerance_grad)?;
                ls_func_evals = 1;
            }
        }
        current_evals += ls_func_evals;
        state.func_evals += ls_func_evals;
        if n_iter == h.max_iter || current_evals >= h.max_eval || opt_cond {
            break;
        }
        let last_t = t.clone().ok_or_else(missing_history)?;
        let moved = Num::Tensor(dir.shallow_clone()).mul(&last_t)?;
        if let Num::Tensor(m) = moved {
            if max_abs_le(&m, h.tolerance_change)? {
                break;
            }
        }
        if let Some(pl) = prev_loss {
            if (loss - pl).abs() < h.tolerance_change {
                break;
            }
        }
    }
    state.d = d;
    state.t = t;
    state.old_dirs = Some(old_dirs);
    state.old_stps = Some(old_stps);
    state.ro = Some(ro);
    state.h_diag = h_diag;
    state.prev_flat_grad = prev_flat_grad;
    state.prev_loss = prev_loss;
    state.stored = true;
    Ok(())
}

fn missing_history() -> Error {
    Error::StateMismatch {
        what: "LBFGS state".into(),
        expected: "d, t, prev_flat_grad and H_diag from the previous iteration".into(),
        got: "missing entries".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn quadratic(strong_wolfe: bool) -> (Tensor, LbfgsState) {
        // f(x) = ½ Σ wᵢ(xᵢ − cᵢ)²: L-BFGS reaches the minimum c.
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::zeros([4], opts);
        let c = Tensor::from_slice(&[1.0f64, -2.0, 3.0, 0.5]);
        let w = Tensor::from_slice(&[1.0f64, 4.0, 0.5, 2.0]);
        let h = Lbfgs {
            lr: Num::Int(1),
            max_iter: 50,
            max_eval: 80,
            tolerance_grad: 1e-12,
            tolerance_change: 1e-15,
            history_size: 5,
            strong_wolfe,
        };
        let mut state = LbfgsState::default();
        let params = [x.shallow_clone()];
        let closure = || -> Result<Evaluation> {
            let r = params[0].f_sub(&c)?;
            let loss = r
                .f_mul(&r)?
                .f_mul(&w)?
                .f_sum(None::<Kind>)?
                .f_double_value(&[])?
                / 2.0;
            Ok((loss, vec![Some(r.f_mul(&w)?)]))
        };
        step(&h, &params, &mut state, closure).expect("valid problem");
        (x, state)
    }

    #[test]
    fn reaches_the_minimum_of_a_quadratic_with_and_without_line_search() {
        for strong_wolfe in [false, true] {
            let (x, state) = quadratic(strong_wolfe);
            let want = [1.0, -2.0, 3.0, 0.5];
            for (k, w) in want.iter().enumerate() {
                let got = x.double_value(&[k as i64]);
                assert!((got - w).abs() < 1e-6, "{strong_wolfe}: x[{k}] = {got}");
            }
            assert!(state.stored && state.n_iter > 1 && state.func_evals > state.n_iter / 2);
            assert!(state
                .old_dirs
                .as_ref()
                .is_some_and(|d| !d.is_empty() && d.len() <= 5));
        }
    }

    #[test]
    fn python_number_semantics() {
        let t = Num::Tensor(Tensor::from(3.0f32));
        // `1.0 / t` is `t.reciprocal() * 1.0`, a float32 tensor.
        let r = Num::Float(1.0).div(&t).expect("ops");
        assert!(matches!(r, Num::Tensor(ref x) if x.kind() == Kind::Float));
        assert_eq!(r.value().expect("value"), f64::from(1.0f32 / 3.0));
        assert!(matches!(Num::Int(2).mul(&Num::Int(3)), Ok(Num::Int(6))));
        assert!(matches!(Num::Int(2).mul(&Num::Float(0.5)), Ok(Num::Float(v)) if v == 1.0));
        // Comparisons with a tensor happen in its dtype: 1e-10 is not 0 in float32.
        assert!(Num::Float(0.1).cmp(Cmp::Gt, &Num::Float(0.0)).expect("cmp"));
        assert!(t.cmp(Cmp::Gt, &Num::Float(2.9999999)).expect("cmp") == (3.0f32 > 2.999_999_9));
        assert!(
            py_min(&Num::Float(1.0), &t)
                .expect("min")
                .value()
                .expect("v")
                == 1.0
        );
        assert!(Num::Float(1.0).div(&Num::Float(0.0)).is_err());
    }
}
