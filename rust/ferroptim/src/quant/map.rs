//! The dynamic quantization maps of 8-bit optimizer state.
//!
//! Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization"
//! (ICLR 2022), §2 and appendix: *dynamic (tree) quantization*. A code's bits after the sign
//! read as: a run of `E` zero bits giving the decimal exponent 10⁻ᴱ, a one bit (the
//! indicator), then `k` bits of a linear fraction. The second moments are non-negative, so
//! their map has no sign bit and uses it as one more bit (the paper's *unsigned* dynamic
//! quantization).
//!
//! The maps here are generated from that definition:
//!
//! * **signed** (first moments, momentum): bit 7 is the sign; the 7 bits below it hold
//!   `low` ∈ 0..128. `low = 0` is zero. Otherwise `n` = the bit length of `low` (1..=7), the
//!   exponent is `E = 7 − n`, the fraction has `k = n − 1` bits `f = low − 2ᵏ`, and the
//!   magnitude is `10⁻ᴱ · (0.1 + 0.9 · (f + 1) / 2ᵏ)`: every decade (10⁻ᴱ⁻¹, 10⁻ᴱ] is cut
//!   into 2ᵏ equal steps whose top is 10⁻ᴱ, so 1 and the smallest code 10⁻⁶ are exact.
//! * **unsigned** (second moments): the same over all 8 bits (`low` = the code, `n` ∈ 1..=8,
//!   `E = 8 − n`, smallest nonzero value 10⁻⁷).
//!
//! Magnitudes grow with `low`, so quantizing a value `a ∈ [0, 1]` to the *nearest* code is
//! "count the midpoints between consecutive magnitudes that lie below `a`". The magnitudes
//! are computed in `f64` and rounded to `f32`; each midpoint is the `f32` rounding of the
//! `f64` mean of its two magnitudes (both exactly representable in `f64`). A value exactly on
//! a midpoint takes the lower code. `tests/python/test_8bit.py` rebuilds these tables from the
//! same definition in pure torch.

use std::sync::OnceLock;

/// 10⁻ᴱ for `E = 0..=8`, as decimal literals (the nearest `f64`).
const DECADES: [f64; 9] = [1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8];

/// One quantization map: the sorted magnitudes and the midpoints between them.
#[derive(Debug)]
pub struct Map {
    /// Whether the map is signed (bit 7 is the sign) or unsigned.
    pub signed: bool,
    /// Number of magnitudes: 128 (signed) or 256 (unsigned).
    pub levels: usize,
    /// `magnitude[low]` for `low < levels`; the rest is unused (zero).
    pub magnitude: [f32; 256],
    /// `mid[i]` between `magnitude[i]` and `magnitude[i + 1]` for `i < levels − 1`; the rest is
    /// `+∞` (never below a value, so lookups past the end change nothing).
    pub mid: [f32; 256],
    /// Per bit length `n` (0..=bits): the threshold `mid[2ⁿ⁻¹ − 1]` above which a value's
    /// index has at least `n` bits (`n = 0`: −∞).
    pub decade_threshold: [f32; 9],
}

impl Map {
    fn new(signed: bool) -> Map {
        let bits: u32 = if signed { 7 } else { 8 };
        let levels = 1usize << bits;
        let mut mag64 = [0.0f64; 256];
        for (low, m) in mag64.iter_mut().enumerate().take(levels).skip(1) {
            let n = usize::BITS - low.leading_zeros(); // bit length, 1..=bits
            let k = n - 1;
            let f = (low - (1 << k)) as f64;
            let e = (bits - n) as usize;
            *m = DECADES[e] * (0.1 + 0.9 * (f + 1.0) / (1u64 << k) as f64);
        }
        let mut magnitude = [0.0f32; 256];
        let mut mid = [f32::INFINITY; 256];
        for i in 0..levels {
            magnitude[i] = mag64[i] as f32;
            if i + 1 < levels {
                mid[i] = ((mag64[i] + mag64[i + 1]) / 2.0) as f32;
            }
        }
        let mut decade_threshold = [f32::INFINITY; 9];
        decade_threshold[0] = f32::NEG_INFINITY;
        for (n, t) in decade_threshold
            .iter_mut()
            .enumerate()
            .take(bits as usize + 1)
            .skip(1)
        {
            *t = mid[(1 << (n - 1)) - 1];
        }
        Map {
            signed,
            levels,
            magnitude,
            mid,
            decade_threshold,
        }
    }

    /// The value of `code`, in units of the block's absmax.
    #[inline(always)]
    pub fn decode(&self, code: u8) -> f32 {
        if self.signed {
            let m = self.magnitude[usize::from(code & 0x7F)];
            if code & 0x80 != 0 {
                -m
            } else {
                m
            }
        } else {
            self.magnitude[usize::from(code)]
        }
    }

    /// The index of the nearest magnitude to `a` (`a` ≥ 0; NaN gives 0): the number of
    /// midpoints below `a`, by a branch-free binary search.
    #[inline(always)]
    pub fn index(&self, a: f32) -> usize {
        let mut lo = 0usize;
        let mut step = self.levels / 2;
        while step > 0 {
            // After the loop, `lo` = #{i : mid[i] < a} (the midpoints are sorted).
            if self.mid[lo + step - 1] < a {
                lo += step;
            }
            step /= 2;
        }
        lo
    }

    /// The nearest code to `y` (in units of the block's absmax, |y| ≤ 1). Signed: the sign of
    /// `y < 0` and the nearest magnitude of `|y|`; unsigned: negative values give 0.
    #[inline(always)]
    pub fn encode(&self, y: f32) -> u8 {
        if self.signed {
            let sign = if y < 0.0 { 0x80 } else { 0 };
            self.index(y.abs()) as u8 | sign
        } else {
            self.index(y) as u8
        }
    }
}

/// The signed map (first moments, momentum buffers).
pub fn signed() -> &'static Map {
    static MAP: OnceLock<Map> = OnceLock::new();
    MAP.get_or_init(|| Map::new(true))
}

/// The unsigned map (second moments and other non-negative state).
pub fn unsigned() -> &'static Map {
    static MAP: OnceLock<Map> = OnceLock::new();
    MAP.get_or_init(|| Map::new(false))
}

/// The map for a state tensor of a rule: unsigned for the state that is non-negative by
/// construction (sums and averages of squares), signed for the rest.
pub fn for_state(name: &str) -> &'static Map {
    if is_non_negative(name) {
        unsigned()
    } else {
        signed()
    }
}

/// Whether the rules keep the state `name` non-negative: `exp_avg_sq`, `max_exp_avg_sq`,
/// `square_avg`, `sum` (Adagrad), `acc_delta` (Adadelta).
pub fn is_non_negative(name: &str) -> bool {
    matches!(
        name,
        "exp_avg_sq" | "max_exp_avg_sq" | "square_avg" | "sum" | "acc_delta"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_follow_the_definition() {
        let s = signed();
        assert_eq!(s.decode(0), 0.0);
        assert_eq!(s.decode(0x7F), 1.0);
        assert_eq!(s.decode(0xFF), -1.0);
        assert_eq!(s.decode(1), 1e-6);
        assert_eq!(s.decode(0x40), (0.1 + 0.9 / 64.0) as f32);
        let u = unsigned();
        assert_eq!(u.decode(0xFF), 1.0);
        assert_eq!(u.decode(1), 1e-7);
        assert_eq!(u.decode(0x80), (0.1 + 0.9 / 128.0) as f32);
        for m in [s, u] {
            for i in 1..m.levels {
                assert!(m.magnitude[i] > m.magnitude[i - 1], "{i}");
                assert!(m.mid[i - 1] > m.magnitude[i - 1] && m.mid[i - 1] < m.magnitude[i]);
            }
        }
    }

    #[test]
    fn encode_is_the_nearest_code() {
        for m in [signed(), unsigned()] {
            // Every code round-trips.
            for c in 0..=255u8 {
                let v = m.decode(c);
                let back = m.encode(v);
                assert_eq!(m.decode(back), v, "code {c}");
            }
            // Against a scan of all codes, on values across the whole range.
            for i in 0..20_000 {
                let t = i as f32 / 20_000.0;
                let y = if m.signed { 2.0 * t - 1.0 } else { t };
                let y = y * y.abs().powi(3); // dense near zero too
                let c = m.encode(y);
                let err = (m.decode(c) - y).abs();
                let best = (0..=255u8)
                    .map(|c| (m.decode(c) - y).abs())
                    .fold(f32::INFINITY, f32::min);
                assert_eq!(err, best, "{y}");
            }
        }
        assert_eq!(unsigned().encode(-0.5), 0);
        assert_eq!(signed().encode(f32::NAN) & 0x7F, 0);
    }
}
