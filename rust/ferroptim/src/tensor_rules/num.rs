//! Python numbers and 0-d tensors with Python's arithmetic, for the scalar bookkeeping of
//! torch's L-BFGS (`torch/optim/lbfgs.py`), where step lengths, curvatures and directional
//! derivatives are Python ints, floats or 0-d tensors depending on the path taken, and the
//! rounding of each operation depends on which (a float32 tensor computes in float32).

use super::{scalar, ScalarOp};
use crate::error::{Error, Result};
use tch::{TchError, Tensor};

/// A Python `int`, `float`, or 0-d tensor.
#[derive(Debug)]
pub enum Num {
    /// A Python int.
    Int(i64),
    /// A Python float.
    Float(f64),
    /// A 0-d tensor.
    Tensor(Tensor),
}

impl Clone for Num {
    fn clone(&self) -> Self {
        match self {
            Num::Int(v) => Num::Int(*v),
            Num::Float(v) => Num::Float(*v),
            Num::Tensor(t) => Num::Tensor(t.shallow_clone()),
        }
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmp {
    Gt,
    Lt,
    Ge,
    Le,
}

impl Cmp {
    fn flip(self) -> Cmp {
        match self {
            Cmp::Gt => Cmp::Lt,
            Cmp::Lt => Cmp::Gt,
            Cmp::Ge => Cmp::Le,
            Cmp::Le => Cmp::Ge,
        }
    }

    fn op(self) -> ScalarOp {
        match self {
            Cmp::Gt => ScalarOp::Gt,
            Cmp::Lt => ScalarOp::Lt,
            Cmp::Ge => ScalarOp::Ge,
            Cmp::Le => ScalarOp::Le,
        }
    }

    fn floats(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Gt => a > b,
            Cmp::Lt => a < b,
            Cmp::Ge => a >= b,
            Cmp::Le => a <= b,
        }
    }
}

fn truth(t: &Tensor) -> Result<bool> {
    Ok(t.f_int64_value(&[])? != 0)
}

fn zero_division() -> Error {
    Error::Torch(TchError::Torch("float division by zero".into()))
}

impl Num {
    /// The value of a Python number (a tensor's via `item()`).
    pub fn value(&self) -> Result<f64> {
        match self {
            Num::Int(v) => Ok(*v as f64),
            Num::Float(v) => Ok(*v),
            Num::Tensor(t) => Ok(t.f_double_value(&[])?),
        }
    }

    /// `self + o`.
    pub(crate) fn add(&self, o: &Num) -> Result<Num> {
        Ok(match (self, o) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a + b),
            (Num::Tensor(a), Num::Tensor(b)) => Num::Tensor(a.f_add(b)?),
            // `n + t` is `t.__radd__(n)`, i.e. `t.add(n)`.
            (Num::Tensor(a), n) | (n, Num::Tensor(a)) => {
                Num::Tensor(scalar(a, ScalarOp::Add, n.value()?)?)
            }
            (a, b) => Num::Float(a.value()? + b.value()?),
        })
    }

    /// `self - o`.
    pub(crate) fn sub(&self, o: &Num) -> Result<Num> {
        Ok(match (self, o) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a - b),
            (Num::Tensor(a), Num::Tensor(b)) => Num::Tensor(a.f_sub(b)?),
            (Num::Tensor(a), n) => Num::Tensor(scalar(a, ScalarOp::Sub, n.value()?)?),
            // `n - t` is `torch.rsub(t, n)`: `n − t`, rounded as `−t + n`.
            (n, Num::Tensor(b)) => Num::Tensor(scalar(&b.f_neg()?, ScalarOp::Add, n.value()?)?),
            (a, b) => Num::Float(a.value()? - b.value()?),
        })
    }

    /// `self * o`.
    pub(crate) fn mul(&self, o: &Num) -> Result<Num> {
        Ok(match (self, o) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a * b),
            (Num::Tensor(a), Num::Tensor(b)) => Num::Tensor(a.f_mul(b)?),
            (Num::Tensor(a), n) | (n, Num::Tensor(a)) => {
                Num::Tensor(scalar(a, ScalarOp::Mul, n.value()?)?)
            }
            (a, b) => Num::Float(a.value()? * b.value()?),
        })
    }

    /// `self / o` (true division).
    pub(crate) fn div(&self, o: &Num) -> Result<Num> {
        Ok(match (self, o) {
            (Num::Tensor(a), Num::Tensor(b)) => Num::Tensor(a.f_div(b)?),
            (Num::Tensor(a), n) => Num::Tensor(scalar(a, ScalarOp::Div, n.value()?)?),
            // `n / t` is `t.__rtruediv__(n)`: `t.reciprocal() * n`.
            (n, Num::Tensor(b)) => {
                Num::Tensor(scalar(&b.f_reciprocal()?, ScalarOp::Mul, n.value()?)?)
            }
            (a, b) => {
                let d = b.value()?;
                if d == 0.0 {
                    return Err(zero_division());
                }
                Num::Float(a.value()? / d)
            }
        })
    }

    /// `-self`.
    pub(crate) fn neg(&self) -> Result<Num> {
        Ok(match self {
            Num::Int(a) => Num::Int(-a),
            Num::Float(a) => Num::Float(-a),
            Num::Tensor(t) => Num::Tensor(t.f_neg()?),
        })
    }

    /// `abs(self)`.
    pub(crate) fn abs(&self) -> Result<Num> {
        Ok(match self {
            Num::Int(a) => Num::Int(a.abs()),
            Num::Float(a) => Num::Float(a.abs()),
            Num::Tensor(t) => Num::Tensor(t.f_abs()?),
        })
    }

    /// `self ** 2`.
    pub(crate) fn square(&self) -> Result<Num> {
        Ok(match self {
            Num::Int(a) => Num::Int(a * a),
            Num::Float(a) => Num::Float(a.powf(2.0)),
            Num::Tensor(t) => Num::Tensor(t.f_pow_tensor_scalar(2i64)?),
        })
    }

    /// `self.sqrt()` (torch calls it on a tensor; a float takes its square root).
    pub(crate) fn sqrt(&self) -> Result<Num> {
        Ok(match self {
            Num::Tensor(t) => Num::Tensor(t.f_sqrt()?),
            n => Num::Float(n.value()?.sqrt()),
        })
    }

    /// `bool(self <op> o)`.
    pub(crate) fn cmp(&self, op: Cmp, o: &Num) -> Result<bool> {
        match (self, o) {
            (Num::Tensor(a), Num::Tensor(b)) => {
                let r = match op {
                    Cmp::Gt => a.f_gt_tensor(b)?,
                    Cmp::Lt => a.f_lt_tensor(b)?,
                    Cmp::Ge => a.f_ge_tensor(b)?,
                    Cmp::Le => a.f_le_tensor(b)?,
                };
                truth(&r)
            }
            (Num::Tensor(a), n) => truth(&scalar(a, op.op(), n.value()?)?),
            // `n > t` falls back to `t.__lt__(n)`.
            (n, Num::Tensor(b)) => truth(&scalar(b, op.flip().op(), n.value()?)?),
            (a, b) => Ok(op.floats(a.value()?, b.value()?)),
        }
    }
}

/// Python's `max(a, b)`: `b` if `b > a`, else `a`.
pub(crate) fn py_max(a: &Num, b: &Num) -> Result<Num> {
    Ok(if b.cmp(Cmp::Gt, a)? {
        b.clone()
    } else {
        a.clone()
    })
}

/// Python's `min(a, b)`: `b` if `b < a`, else `a`.
pub(crate) fn py_min(a: &Num, b: &Num) -> Result<Num> {
    Ok(if b.cmp(Cmp::Lt, a)? {
        b.clone()
    } else {
        a.clone()
    })
}
