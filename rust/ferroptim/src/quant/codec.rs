//! Block-wise quantization of `f32` values to 8-bit codes and back (one block at a time).
//!
//! A block's scale is its absmax, the largest `|x|`; values are normalised by the `f32`
//! reciprocal of the absmax (`y = x · (1/absmax)`; an all-zero block has scale 0 and codes
//! 0), and each `y` takes the nearest code of the [`Map`] (see `map.rs`). Decoding is
//! `table[code] · absmax`.
//!
//! Finding the nearest code fast: rather than searching the 128 or 256 midpoints, the code is
//! computed from the map's structure. Comparisons with the (exact) midpoints between decades
//! give the bit length `n` of the index; within a decade the magnitudes are evenly spaced, so
//! the index is `2ⁿ⁻¹ + round(a · S[n] − O[n])` (clamped to the decade). Rounding errors of
//! that estimate are below 10⁻⁴ of a step, so it is exact unless the estimate lies within
//! [`GUARD`] of a rounding boundary (about 0.2% of values): those few are recomputed by the
//! exact search ([`Map::index`]). The result is therefore always the exact nearest code (ties
//! to the lower one), whatever the instruction set, and the loops are branch-free and
//! vectorise.

use super::map::Map;
use std::sync::OnceLock;

/// How close (in steps of the decade) to a rounding boundary the estimate must be to be
/// checked by the exact search. The estimate's own error is below 10⁻⁴ of a step.
pub(super) const GUARD: f32 = 1e-3;

/// Tables for the fast nearest-code computation and decoding.
#[derive(Debug)]
pub struct Codec {
    pub map: &'static Map,
    /// `decode[code]`: the code's value in units of the absmax (sign included).
    pub decode: [f32; 256],
    /// Decade thresholds `T[1..=bits]` (the `mid` below the first index of `n` bits).
    threshold: [f32; 8],
    bits: usize,
    /// Per bit length `n` (0..=8): scale, offset, first index and last fraction of the decade.
    scale: [f32; 9],
    offset: [f32; 9],
    base: [u32; 9],
    kmax: [f32; 9],
    /// The same tables padded to 16 entries, for 16-lane permutes.
    wide: Wide,
}

/// [`Codec`]'s per-decade tables padded to 16 entries (see `x86.rs`).
#[derive(Debug)]
pub(super) struct Wide {
    pub scale: [f32; 16],
    pub offset: [f32; 16],
    pub kmax: [f32; 16],
    pub base: [i32; 16],
    /// Per binary octave `o` (values in [2⁻ᵒ, 2¹⁻ᵒ), `o` = 0..=31, the last also holding
    /// everything smaller): the number of decade thresholds below the octave, and the one
    /// threshold inside it (+∞ if none; thresholds are ~10× apart, so there is at most one).
    pub octave_base: [i32; 32],
    pub octave_threshold: [f32; 32],
}

impl Codec {
    fn new(map: &'static Map) -> Codec {
        let bits = map.levels.trailing_zeros() as usize;
        let mut decode = [0.0f32; 256];
        for (c, d) in decode.iter_mut().enumerate() {
            *d = map.decode(c as u8);
        }
        let mut threshold = [f32::INFINITY; 8];
        threshold[..bits].copy_from_slice(&map.decade_threshold[1..=bits]);
        let (mut scale, mut offset) = ([0.0f32; 9], [-0.5f32; 9]);
        let (mut base, mut kmax) = ([0u32; 9], [0.0f32; 9]);
        const DECADES: [f64; 9] = [1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8];
        for n in 1..=bits {
            // Decade n: indices 2ᵏ..2ᵏ⁺¹ with k = n − 1, magnitude D·(0.1 + 0.9·(f + 1)/2ᵏ).
            let steps = (1u64 << (n - 1)) as f64;
            let d = DECADES[bits - n];
            scale[n] = (steps / (0.9 * d)) as f32;
            // a·S − O = f + 0.5 at the magnitude of fraction f: floor rounds to nearest.
            offset[n] = (0.1 / 0.9 * steps + 0.5) as f32;
            base[n] = 1 << (n - 1);
            kmax[n] = (steps - 1.0) as f32;
        }
        let mut wide = Wide {
            scale: [0.0; 16],
            offset: [0.0; 16],
            kmax: [0.0; 16],
            base: [0; 16],
            octave_base: [0; 32],
            octave_threshold: [f32::INFINITY; 32],
        };
        wide.scale[..9].copy_from_slice(&scale);
        wide.offset[..9].copy_from_slice(&offset);
        wide.kmax[..9].copy_from_slice(&kmax);
        for (w, b) in wide.base.iter_mut().zip(base) {
            *w = b as i32;
        }
        let thresholds = &threshold[..bits];
        for o in 0..32 {
            let (lo, hi) = (2f32.powi(-(o as i32)), 2f32.powi(1 - o as i32));
            wide.octave_base[o] = thresholds.iter().filter(|t| **t < lo).count() as i32;
            let inside: Vec<f32> = thresholds
                .iter()
                .copied()
                .filter(|t| *t >= lo && *t < hi)
                .collect();
            debug_assert!(inside.len() <= 1);
            wide.octave_threshold[o] = inside.first().copied().unwrap_or(f32::INFINITY);
        }
        // Nothing below the last octave: every value there has bit length 0.
        debug_assert!(thresholds.iter().all(|t| *t >= 2f32.powi(-31)));
        Codec {
            map,
            decode,
            threshold,
            bits,
            scale,
            offset,
            base,
            kmax,
            wide,
        }
    }

    /// The tables padded for 16 lanes.
    pub(super) fn tables(&self) -> &Wide {
        &self.wide
    }

    /// Decodes a block: `out[i] = decode[codes[i]] · absmax`.
    #[inline(always)]
    pub fn decode_block(&self, codes: &[u8], absmax: f32, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::driver::has_avx512() {
            // SAFETY: the CPU has AVX-512F/BW/VL (checked by `has_avx512`).
            return unsafe { super::x86::decode(self, codes, absmax, out) };
        }
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = self.decode[usize::from(c)] * absmax;
        }
    }

    /// Encodes a block: returns its absmax (NaN if a value is NaN) and writes the nearest
    /// codes of `values / absmax` to `codes`. `fix` is scratch of the same length.
    #[inline(always)]
    pub fn encode_block(&self, values: &[f32], codes: &mut [u8], fix: &mut [u8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if crate::driver::has_avx512() {
            // SAFETY: the CPU has AVX-512F/BW/VL and FMA (checked by `has_avx512`).
            return unsafe { super::x86::encode(self, values, codes) };
        }
        self.encode_portable(values, codes, fix)
    }

    /// [`Codec::encode_block`] without SIMD intrinsics (the loop LLVM vectorises as it can).
    #[inline(always)]
    pub fn encode_portable(&self, values: &[f32], codes: &mut [u8], fix: &mut [u8]) -> f32 {
        let absmax = values.iter().fold(0.0f32, |m, &x| {
            if x.abs() > m || x.is_nan() {
                x.abs()
            } else {
                m
            }
        });
        let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
        let signed = self.map.signed;
        let len = values.len().min(codes.len()).min(fix.len());
        let (values, codes, fix) = (&values[..len], &mut codes[..len], &mut fix[..len]);
        let mut any = 0u8;
        for i in 0..len {
            let y = values[i] * inv;
            let (a, sign) = if signed {
                (y.abs(), if y < 0.0 { 0x80u8 } else { 0 })
            } else {
                (if y > 0.0 { y } else { 0.0 }, 0)
            };
            let mut n = 0usize;
            for t in &self.threshold[..self.bits] {
                n += usize::from(a > *t);
            }
            let n = n.min(8);
            let fr = a.mul_add(self.scale[n], -self.offset[n]);
            let fl = fr.floor();
            let f = fl.max(0.0).min(self.kmax[n]);
            let dist = fr - fl;
            let unsure = u8::from(!(GUARD..=1.0 - GUARD).contains(&dist));
            fix[i] = unsure;
            any |= unsure;
            codes[i] = (self.base[n] + f as u32) as u8 | sign;
        }
        if any != 0 {
            for i in 0..len {
                if fix[i] != 0 {
                    codes[i] = self.map.encode(values[i] * inv);
                }
            }
        }
        absmax
    }
}

/// The codec of the signed map.
pub fn signed() -> &'static Codec {
    static C: OnceLock<Codec> = OnceLock::new();
    C.get_or_init(|| Codec::new(super::map::signed()))
}

/// The codec of the unsigned map.
pub fn unsigned() -> &'static Codec {
    static C: OnceLock<Codec> = OnceLock::new();
    C.get_or_init(|| Codec::new(super::map::unsigned()))
}

/// The codec of the state tensor `name` (see [`super::map::for_state`]).
pub fn for_state(name: &str) -> &'static Codec {
    if super::map::is_non_negative(name) {
        unsigned()
    } else {
        signed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values spread over many decades.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                let e = ((s >> 20) & 15) as i32;
                (u - 0.5) * 10f32.powi(-e / 2)
            })
            .collect()
    }

    #[test]
    fn fast_encode_equals_the_exact_search() {
        for codec in [signed(), unsigned()] {
            for seed in 0..20 {
                let mut v = values(4096, seed);
                if !codec.map.signed {
                    v.iter_mut().for_each(|x| *x = x.abs());
                }
                // Values exactly on and next to every midpoint, and every code's value.
                for i in 0..codec.map.levels - 1 {
                    let m = codec.map.mid[i];
                    v.extend([
                        m,
                        f32::from_bits(m.to_bits() + 1),
                        f32::from_bits(m.to_bits() - 1),
                    ]);
                }
                v.extend((0..=255u8).map(|c| codec.decode[usize::from(c)]));
                v.push(1.0);
                let mut codes = vec![0u8; v.len()];
                let mut fix = vec![0u8; v.len()];
                let absmax = codec.encode_block(&v, &mut codes, &mut fix);
                let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
                for (x, c) in v.iter().zip(&codes) {
                    assert_eq!(*c, codec.map.encode(x * inv), "{x}");
                }
                // The portable loop gives the same codes and absmax.
                let mut portable = vec![0u8; v.len()];
                let a2 = codec.encode_portable(&v, &mut portable, &mut fix);
                assert_eq!((a2.to_bits(), &portable), (absmax.to_bits(), &codes));
            }
        }
    }

    #[test]
    fn blocks_round_trip_within_the_map_step() {
        let v = values(256, 7);
        let (mut codes, mut fix, mut back) = (vec![0u8; 256], vec![0u8; 256], vec![0.0; 256]);
        let codec = signed();
        let absmax = codec.encode_block(&v, &mut codes, &mut fix);
        assert_eq!(absmax, v.iter().fold(0.0f32, |m, x| m.max(x.abs())));
        codec.decode_block(&codes, absmax, &mut back);
        for (x, y) in v.iter().zip(&back) {
            // The coarsest step is 0.9/64 of the absmax (top decade); half of it at most.
            assert!((x - y).abs() <= absmax * 0.9 / 128.0 * 1.0001, "{x} {y}");
        }
        // The largest value is exact.
        let i = (0..256)
            .max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()))
            .unwrap_or(0);
        assert_eq!(back[i], v[i]);
        // All zeros: scale 0, codes 0.
        let z = codec.encode_block(&[0.0; 16], &mut codes[..16], &mut fix[..16]);
        assert_eq!((z, &codes[..16]), (0.0, &[0u8; 16][..]));
    }
}
