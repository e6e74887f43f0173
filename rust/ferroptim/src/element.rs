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
    /// `self.sqrt() / d` for a divisor `d` shared by many elements (a per-tensor constant such
    /// as Adam's `√(1 − β₂ᵗ)`): the same bits for every `d` in [`EXACT_DIVISOR`]. `f32` and
    /// `f64` replace the division by a multiplication by `1 / d` (computed once per loop: it
    /// does not depend on `self`) and Markstein's correction: `q = a·(1/d)`,
    /// `r = fma(−q, d, a)`, `fma(r, 1/d, q)`, the correctly rounded quotient when `1/d` is
    /// correctly rounded, `q` is within one ulp of `a/d` and nothing overflows or underflows
    /// (P. Markstein, "Computation of elementary functions on the IBM RISC System/6000
    /// processor", IBM J. Res. Dev. 34(1), 1990; J.-M. Muller et al., *Handbook of
    /// Floating-Point Arithmetic*, 2nd ed., 2018, §4.9). A square root is ±0, +∞, NaN or in
    /// `[2⁻⁷⁵, 2⁶⁴]` in `f32` (`[2⁻⁵³⁸, 2⁵¹²]` in `f64`), so for `d` in [`EXACT_DIVISOR`] no
    /// step overflows or underflows; where the root is ±0, ∞ or NaN, `a·(1/d)` is already
    /// `a/d` (NaN payload included) and is kept. For `d` outside that range (0, ∞, NaN or
    /// beyond 2^±40, e.g. from β₂ ∉ [0, 1), which every optimizer rejects) the result is
    /// `a·(1/d)`: ±0, ∞ and NaN as `a/d`, other values within one ulp of it. There is no
    /// branch on `d`: a loop-invariant one lets the compiler compute the division anyway.
    /// A default method: types without a faster form divide.
    #[inline(always)]
    fn sqrt_div(self, d: Self) -> Self {
        self.sqrt() / d
    }
}

/// The divisors (`f64`, before rounding to the compute type) for which [`Float::sqrt_div`]
/// takes Markstein's division: `[2⁻⁴⁰, 2⁴⁰]`. Adam-type bias corrections `√(1 − β₂ᵗ)` with
/// `β₂ ∈ [0, 1)` lie in `[2⁻²⁷, 1]`.
pub const EXACT_DIVISOR: std::ops::RangeInclusive<f64> =
    9.094947017729282e-13..=1_099_511_627_776.0;

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
            #[inline(always)]
            fn sqrt_div(self, d: Self) -> Self {
                let a = <$t>::sqrt(self);
                // One correctly rounded IEEE division that does not depend on the element:
                // loops hoist it, with the range test.
                let recip = 1.0 / d;
                let exact = EXACT_DIVISOR.contains(&f64::from(d));
                let q = a * recip;
                let r = (-q).mul_add(d, a);
                let corrected = r.mul_add(recip, q);
                if exact && a > 0.0 && a < <$t>::INFINITY {
                    corrected
                } else {
                    q
                }
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

    /// Divisors of the kind `sqrt_div` serves: Adam-type `√(1 − β₂ᵗ)` over many β₂ and t
    /// (rounded to `f32` as the kernels round them) and the ends of [`EXACT_DIVISOR`].
    fn divisors() -> Vec<f64> {
        let mut ds = vec![1.0, 0.5, 3.0, 2f64.powi(-40), 2f64.powi(40)];
        for beta2 in [0.0, 0.5, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0 - 1e-8] {
            for t in [1.0, 2.0, 3.0, 7.0, 10.0, 100.0, 1000.0, 1e4, 1e6] {
                ds.push((1.0 - f64::powf(beta2, t)).sqrt());
            }
        }
        ds
    }

    /// Square-root arguments over every exponent and special case: ±0, ±∞, NaNs, subnormals,
    /// negative values (root NaN), and a stride over all positive bit patterns.
    fn f32_arguments(stride: u32) -> impl Iterator<Item = f32> {
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -1.0,
            1e-45,
            f32::MAX,
        ]
        .into_iter()
        .chain([0x7FC0_0001u32, 0xFFC0_0000, 0x7F80_0001].map(f32::from_bits));
        specials.chain(
            (0..0x7F80_0000u32)
                .step_by(stride as usize)
                .map(f32::from_bits),
        )
    }

    #[test]
    fn sqrt_div_is_the_correctly_rounded_quotient_f32() {
        for d in divisors() {
            let d = d as f32;
            for x in f32_arguments(131) {
                let (got, want) = (x.sqrt_div(d), x.sqrt() / d);
                assert_eq!(got.to_bits(), want.to_bits(), "sqrt({x:e}) / {d:e}");
            }
        }
    }

    /// Every non-negative `f32` (2³¹ values) for Adam's first-step divisor `√(1 − 0.999)`.
    #[test]
    fn sqrt_div_is_exact_for_every_f32_at_adams_first_step() {
        let d = (1.0f64 - 0.999).sqrt() as f32;
        let bad = (0..=0x7FFF_FFFFu32)
            .map(f32::from_bits)
            .filter(|x| x.sqrt_div(d).to_bits() != (x.sqrt() / d).to_bits())
            .count();
        assert_eq!(bad, 0);
    }

    #[test]
    fn sqrt_div_is_the_correctly_rounded_quotient_f64() {
        // xorshift64*: bit patterns over the whole range, so every exponent is reached.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let specials = [0.0, -0.0, f64::INFINITY, f64::NAN, -1.0, 5e-324, f64::MAX];
        for d in divisors() {
            for x in specials
                .into_iter()
                .chain((0..200_000).map(|_| f64::from_bits(next() >> 1)))
            {
                let (got, want) = (x.sqrt_div(d), x.sqrt() / d);
                assert_eq!(got.to_bits(), want.to_bits(), "sqrt({x:e}) / {d:e}");
            }
        }
    }

    /// Outside [`EXACT_DIVISOR`]: ±0 and ∞ as the division, NaN where it is NaN, other values
    /// within one ulp.
    #[test]
    fn sqrt_div_outside_the_exact_range_is_within_one_ulp() {
        for d in [
            0.0f32,
            2f32.powi(-41),
            1e-30,
            2f32.powi(41),
            1e30,
            f32::INFINITY,
            f32::NAN,
        ] {
            for x in f32_arguments(65_537) {
                let (got, want) = (x.sqrt_div(d), x.sqrt() / d);
                if want.is_finite() {
                    let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                    assert!(ulps <= 1, "sqrt({x:e}) / {d:e}: {got:e} vs {want:e}");
                } else if want.is_nan() {
                    // Two NaN operands (a NaN divisor): which payload wins is not specified.
                    assert!(got.is_nan(), "sqrt({x:e}) / {d:e}: {got:e}");
                } else {
                    assert_eq!(got.to_bits(), want.to_bits(), "sqrt({x:e}) / {d:e}");
                }
            }
        }
    }

    #[test]
    fn max_nan_propagates_nan() {
        assert!(f32::NAN.max_nan(1.0).is_nan());
        assert!(1.0f32.max_nan(f32::NAN).is_nan());
        assert_eq!(2.0f32.max_nan(1.0), 2.0);
    }
}
