//! Stochastic rounding to bfloat16 from a counter-based generator.
//!
//! Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3",
//! SC 2011): ten rounds of two 32×32→64-bit multiplications and a Weyl-sequence key schedule
//! turn a 128-bit counter and a 64-bit key into four 32-bit random words. The counter is the
//! element's position, so each element's random bits are a pure function of (key, parameter,
//! element): the result does not depend on how the work is split between threads.
//!
//! Stochastic rounding of `v` to bfloat16 keeps the top 16 bits of `bits(v) + r` for a
//! uniform 16-bit `r`: the magnitude rounds up with probability equal to the dropped fraction
//! of an ulp, so `E[round(v)] = v` (unbiased), for either sign.

use half::bf16;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 of `counter` under `key`.
#[inline(always)]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// `v` rounded stochastically to bfloat16 with the random word `r` (its low 16 bits are
/// used). NaN gives the canonical quiet NaN, infinities stay infinite.
#[inline(always)]
pub fn round_bf16(v: f32, r: u32) -> bf16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(r & 0xFFFF) >> 16) as u16;
    // Infinity: its low 16 bits are 0, so `+ r` cannot carry into the exponent.
    bf16::from_bits(if v.is_nan() { 0x7FC0 } else { rounded })
}

/// The random word of element `index` of parameter `param` under `key`: one Philox block
/// gives the words of four consecutive elements.
#[inline(always)]
pub fn word(key: [u32; 2], param: u32, index: usize) -> u32 {
    let quad = (index / 4) as u64;
    philox4x32([quad as u32, (quad >> 32) as u32, param, 0], key)[index % 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123's published known-answer vectors for philox4x32-10.
        assert_eq!(
            philox4x32([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn rounding_is_unbiased_and_stays_on_the_two_neighbours() {
        let v = 1.0f32 + 0.3 * 2f32.powi(-7); // 0.3 of a bf16 ulp above 1
        let (lo, hi) = (1.0f32, 1.0 + 2f32.powi(-7));
        let n = 200_000;
        let mut sum = 0.0f64;
        for i in 0..n {
            let r = round_bf16(v, word([1, 2], 0, i)).to_f32();
            assert!(r == lo || r == hi);
            sum += f64::from(r);
        }
        let mean = sum / n as f64;
        // Bernoulli(0.3) mean: standard error ulp·sqrt(0.21/n) ≈ 8e-6; 5 sigma.
        let ulp = 2f64.powi(-7);
        assert!((mean - f64::from(v)).abs() < 5.0 * ulp * (0.21f64 / n as f64).sqrt());
        assert_eq!(round_bf16(-2.0, 0xFFFF).to_f32(), -2.0); // exact values stay
        let half_ulp = -(2.0 + 2f32.powi(-7));
        assert_eq!(round_bf16(half_ulp, 0x7FFF).to_f32(), -2.0);
        assert_eq!(round_bf16(half_ulp, 0x8000).to_f32(), -2.015625);
        assert!(round_bf16(f32::INFINITY, 0xFFFF).to_f32().is_infinite());
        assert_eq!(round_bf16(f32::NAN, 7).to_bits(), 0x7FC0);
    }
}
