//! Element types: how a stored value is widened for arithmetic and rounded back.
//!
//! Rules compute in a [`Float`] (`f32` or `f64`); tensors are stored as a [`Storage`] type.
//! `bf16` and `f16` widen to `f32` and round once (round-to-nearest-even) when stored, which is
//! what torch's fused CPU kernels do.

use half::{bf16, f16};
use std::ops::{Add, Div, Mul, Neg, Sub};
use tch::Kind;

/// Arithmetic type a rule computes in: `f32` for 32-bit and half storage, `f64` for `f64`.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// Converts a host scalar (a hyperparameter computed in `f64`, as Python computes it) to
    /// this type, rounding to nearest as torch does when it passes a Python float to a kernel.
    fn from_f64(v: f64) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Maximum of two values; NaN propagates as in `torch.maximum`.
    fn max_nan(self, other: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// `self · a + b` with one rounding (IEEE fused multiply-add): ATen's CPU kernels compute
    /// `x + α·y` (`add` with `alpha`, `addcmul`, `lerp`) this way on FMA hardware.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The value as `f64` (exact).
    fn to_f64(self) -> f64;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn max_nan(self, other: Self) -> Self {
                if self.is_nan() || other.is_nan() {
                    <$t>::NAN
                } else if self > other {
                    self
                } else {
                    other
                }
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);

/// A tensor element type the fused kernels read and write.
pub trait Storage: Copy + Send + Sync + 'static {
    /// Type the arithmetic is done in.
    type Compute: Float;
    /// The matching tch kind.
    const KIND: Kind;
    /// Widens a stored value (exact).
    fn load(self) -> Self::Compute;
    /// Rounds a computed value to storage (round-to-nearest-even for half types).
    fn store(v: Self::Compute) -> Self;
    /// The values themselves as `f32`s where the storage is `f32` (so code working on `f32`
    /// rows can use them in place), else None (the default).
    #[inline(always)]
    fn as_f32(values: &mut [Self]) -> Option<&mut [f32]> {
        let _ = values;
        None
    }
}

impl Storage for f32 {
    type Compute = f32;
    const KIND: Kind = Kind::Float;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn as_f32(values: &mut [f32]) -> Option<&mut [f32]> {
        Some(values)
    }
}

impl Storage for f64 {
    type Compute = f64;
    const KIND: Kind = Kind::Double;
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(v: f64) -> Self {
        v
    }
}

impl Storage for bf16 {
    type Compute = f32;
    const KIND: Kind = Kind::BFloat16;
    #[inline(always)]
    fn load(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    /// Round-to-nearest-even, NaN → canonical quiet NaN `0x7FC0` (c10's
    /// `round_to_nearest_even`). Branch-free, so loops over it vectorise.
    #[inline(always)]
    fn store(v: f32) -> Self {
        let bits = v.to_bits();
        let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
        bf16::from_bits(if v.is_nan() { 0x7FC0 } else { rounded as u16 })
    }
}

impl Storage for f16 {
    type Compute = f32;
    const KIND: Kind = Kind::Half;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Whether the fused kernels can store tensors of this kind directly.
pub fn is_supported(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_round_to_nearest_even() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(bf16::store(1.0 + 2f32.powi(-8)).load(), 1.0);
        // 1 + 3 * 2^-8 is halfway too: the even neighbour is 1 + 2^-6.
        assert_eq!(
            bf16::store(1.0 + 3.0 * 2f32.powi(-8)).load(),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(f16::store(1.0 + 2f32.powi(-11)).load(), 1.0);
    }

    #[test]
    fn bf16_conversion_matches_the_half_crate() {
        let values = [
            0.0f32,
            -0.0,
            1.0,
            -1.5,
            3.0e38,
            1.0e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for v in values
            .into_iter()
            .chain((0..10_000).map(|i| (i as f32 * 0.7391).sin() * 1e3))
        {
            assert_eq!(bf16::store(v).to_bits(), bf16::from_f32(v).to_bits(), "{v}");
            assert_eq!(
                bf16::store(v).load().to_bits(),
                bf16::from_f32(v).to_f32().to_bits()
            );
        }
        assert_eq!(bf16::store(f32::NAN).to_bits(), 0x7FC0);
        assert!(bf16::from_bits(0x7FC0).load().is_nan());
    }

    #[test]
    fn max_nan_propagates_nan() {
        assert!(f32::NAN.max_nan(1.0).is_nan());
        assert!(1.0f32.max_nan(f32::NAN).is_nan());
        assert_eq!(2.0f32.max_nan(1.0), 2.0);
    }
}
