//! The strong-Wolfe line search of torch's L-BFGS (`_strong_wolfe`, `_cubic_interpolate` in
//! `torch/optim/lbfgs.py`, after torch7's `lswolfe.lua` and minFunc; Nocedal & Wright,
//! "Numerical Optimization", Algorithms 3.5 and 3.6), with torch's Python-number arithmetic.

use super::lbfgs::{contiguous_clone, Evaluation, Problem};
use super::num::{py_max, py_min, Cmp, Num};
use crate::error::{Error, Result};
use tch::Tensor;

/// The line search's result: loss, flat gradient and step length at the accepted point, and
/// the closure evaluations spent.
pub(super) struct LineSearch {
    pub f: f64,
    pub g: Tensor,
    pub t: Num,
    pub evals: i64,
}

/// torch's `_cubic_interpolate`: the minimizer of the cubic through two points with their
/// derivatives, clamped to `bounds` (default: the two points).
fn cubic_interpolate(
    x1: &Num,
    f1: f64,
    g1: &Num,
    x2: &Num,
    f2: f64,
    g2: &Num,
    bounds: Option<(&Num, &Num)>,
) -> Result<Num> {
    let (xmin, xmax) = match bounds {
        Some((a, b)) => (a.clone(), b.clone()),
        None if x1.cmp(Cmp::Le, x2)? => (x1.clone(), x2.clone()),
        None => (x2.clone(), x1.clone()),
    };
    let (f1n, f2n) = (Num::Float(f1), Num::Float(f2));
    // d1 = g1 + g2 − 3(f1 − f2)/(x1 − x2)
    let d1 = g1
        .add(g2)?
        .sub(&Num::Int(3).mul(&f1n.sub(&f2n)?)?.div(&x1.sub(x2)?)?)?;
    let d2_square = d1.square()?.sub(&g1.mul(g2)?)?;
    if d2_square.cmp(Cmp::Ge, &Num::Int(0))? {
        let d2 = d2_square.sqrt()?;
        let two_d2 = Num::Int(2).mul(&d2)?;
        let min_pos = if x1.cmp(Cmp::Le, x2)? {
            let frac = g2.add(&d2)?.sub(&d1)?.div(&g2.sub(g1)?.add(&two_d2)?)?;
            x2.sub(&x2.sub(x1)?.mul(&frac)?)?
        } else {
            let frac = g1.add(&d2)?.sub(&d1)?.div(&g1.sub(g2)?.add(&two_d2)?)?;
            x1.sub(&x1.sub(x2)?.mul(&frac)?)?
        };
        py_min(&py_max(&min_pos, &xmin)?, &xmax)
    } else {
        xmin.add(&xmax)?.div(&Num::Float(2.0))
    }
}

/// `f_new > f + c1·t·gtd` (the Armijo condition fails).
fn armijo_fails(f_new: f64, f: f64, c1: f64, t: &Num, gtd: &Num) -> Result<bool> {
    let rhs = Num::Float(f).add(&Num::Float(c1).mul(t)?.mul(gtd)?)?;
    Num::Float(f_new).cmp(Cmp::Gt, &rhs)
}

/// `abs(gtd_new) <= -c2·gtd` (the curvature condition holds).
fn curvature_holds(gtd_new: &Num, c2: f64, gtd: &Num) -> Result<bool> {
    gtd_new.abs()?.cmp(Cmp::Le, &Num::Float(-c2).mul(gtd)?)
}

/// torch's `_strong_wolfe` (c1 = 1e-4, c2 = 0.9, tolerance_change = 1e-9).
#[allow(clippy::too_many_arguments)]
pub(super) fn strong_wolfe<F: FnMut() -> Result<Evaluation>>(
    pb: &mut Problem<'_, F>,
    x: &[Tensor],
    mut t: Num,
    d: &Tensor,
    f: f64,
    g: &Tensor,
    gtd: &Tensor,
    max_ls: i64,
) -> Result<LineSearch> {
    let (c1, c2, tolerance_change) = (1e-4, 0.9, 1e-9);
    let gtd = Num::Tensor(gtd.shallow_clone());
    let d_norm = Num::Tensor(d.f_abs()?.f_max()?);
    let g = contiguous_clone(g)?;
    let (mut f_new, mut g_new) = pb.directional(x, &t, d)?;
    let mut evals = 1i64;
    let mut gtd_new = Num::Tensor(g_new.f_dot(d)?);
    let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) =
        (Num::Int(0), f, g.shallow_clone(), gtd.clone());
    let mut done = false;
    let mut ls_iter = 0i64;
    // Brackets: step lengths, losses, gradients, directional derivatives.
    let mut bracket: Vec<Num> = Vec::new();
    let mut bracket_f: Vec<f64> = Vec::new();
    let mut bracket_g: Vec<Tensor> = Vec::new();
    let mut bracket_gtd: Vec<Num> = Vec::new();
    let mut bracketed = false;
    while ls_iter < max_ls {
        if armijo_fails(f_new, f, c1, &t, &gtd)? || (ls_iter > 1 && f_new >= f_prev) {
            bracket = vec![t_prev.clone(), t.clone()];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev.shallow_clone(), contiguous_clone(&g_new)?];
            bracket_gtd = vec![gtd_prev.clone(), gtd_new.clone()];
            bracketed = true;
            break;
        }
        if curvature_holds(&gtd_new, c2, &gtd)? {
            bracket = vec![t.clone()];
            bracket_f = vec![f_new];
            bracket_g = vec![g_new.shallow_clone()];
            done = true;
            bracketed = true;
            break;
        }
        if gtd_new.cmp(Cmp::Ge, &Num::Int(0))? {
            bracket = vec![t_prev.clone(), t.clone()];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev.shallow_clone(), contiguous_clone(&g_new)?];
            bracket_gtd = vec![gtd_prev.clone(), gtd_new.clone()];
            bracketed = true;
            break;
        }
        // Extrapolate.
        let min_step = t.add(&Num::Float(0.01).mul(&t.sub(&t_prev)?)?)?;
        let max_step = t.mul(&Num::Int(10))?;
        let tmp = t.clone();
        t = cubic_interpolate(
            &t_prev,
            f_prev,
            &gtd_prev,
            &t,
            f_new,
            &gtd_new,
            Some((&min_step, &max_step)),
        )?;
        t_prev = tmp;
        f_prev = f_new;
        g_prev = contiguous_clone(&g_new)?;
        gtd_prev = gtd_new.clone();
        let (fl, gr) = pb.directional(x, &t, d)?;
        f_new = fl;
        g_new = gr;
        evals += 1;
        gtd_new = Num::Tensor(g_new.f_dot(d)?);
        ls_iter += 1;
    }
    if ls_iter == max_ls {
        bracket = vec![Num::Int(0), t.clone()];
        bracket_f = vec![f, f_new];
        bracket_g = vec![g.shallow_clone(), g_new.shallow_clone()];
        bracketed = true;
    }
    if !bracketed {
        // torch fails here too (its bracket is unbound when max_eval is exhausted).
        return Err(Error::InvalidArgument {
            name: "max_eval",
            value: format!("{max_ls} line-search evaluations left (must be at least 0)"),
        });
    }
    // Zoom.
    let mut insuf_progress = false;
    let last = bracket_f.len() - 1;
    let (mut low, mut high) = if bracket_f[0] <= bracket_f[last] {
        (0, 1)
    } else {
        (1, 0)
    };
    while !done && ls_iter < max_ls {
        let width = bracket[1].sub(&bracket[0])?.abs()?.mul(&d_norm)?;
        if width.cmp(Cmp::Lt, &Num::Float(tolerance_change))? {
            break;
        }
        t = cubic_interpolate(
            &bracket[0],
            bracket_f[0],
            &bracket_gtd[0],
            &bracket[1],
            bracket_f[1],
            &bracket_gtd[1],
            None,
        )?;
        let hi = py_max(&bracket[0], &bracket[1])?;
        let lo = py_min(&bracket[0], &bracket[1])?;
        let eps = Num::Float(0.1).mul(&hi.sub(&lo)?)?;
        if py_min(&hi.sub(&t)?, &t.sub(&lo)?)?.cmp(Cmp::Lt, &eps)? {
            if insuf_progress || t.cmp(Cmp::Ge, &hi)? || t.cmp(Cmp::Le, &lo)? {
                t = if t.sub(&hi)?.abs()?.cmp(Cmp::Lt, &t.sub(&lo)?.abs()?)? {
                    hi.sub(&eps)?
                } else {
                    lo.add(&eps)?
                };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }
        let (fl, gr) = pb.directional(x, &t, d)?;
        f_new = fl;
        g_new = gr;
        evals += 1;
        gtd_new = Num::Tensor(g_new.f_dot(d)?);
        ls_iter += 1;
        if armijo_fails(f_new, f, c1, &t, &gtd)? || f_new >= bracket_f[low] {
            bracket[high] = t.clone();
            bracket_f[high] = f_new;
            bracket_g[high] = contiguous_clone(&g_new)?;
            bracket_gtd[high] = gtd_new.clone();
            (low, high) = if bracket_f[0] <= bracket_f[1] {
                (0, 1)
            } else {
                (1, 0)
            };
        } else {
            if curvature_holds(&gtd_new, c2, &gtd)? {
                done = true;
            } else if gtd_new
                .mul(&bracket[high].sub(&bracket[low])?)?
                .cmp(Cmp::Ge, &Num::Int(0))?
            {
                bracket[high] = bracket[low].clone();
                bracket_f[high] = bracket_f[low];
                bracket_g[high] = bracket_g[low].shallow_clone();
                bracket_gtd[high] = bracket_gtd[low].clone();
            }
            bracket[low] = t.clone();
            bracket_f[low] = f_new;
            bracket_g[low] = contiguous_clone(&g_new)?;
            bracket_gtd[low] = gtd_new.clone();
        }
    }
    Ok(LineSearch {
        f: bracket_f[low],
        g: bracket_g[low].shallow_clone(),
        t: bracket[low].clone(),
        evals,
    })
}
