//! Block-wise quantization of `f32` values to 8-bit codes and back (one block at a time).
//!
//! A block's scale is its absmax, the largest `|x|`; values are normalised by the `f32`
//! reciprocal of the absmax (`y = x · (1/absmax)`; an all-zero block has scale 0 and codes
//! 0), and each `y` takes the nearest code of the [`Map`] (see `map.rs`): the number of the
//! map's midpoints strictly below `|y|` (a value on a midpoint takes the lower code), with
//! the sign bit for negative `y` in the signed map, and 0 for negative `y` in the unsigned one.
//! Decoding is `table[code] · absmax`.
//!
//! Finding the nearest code fast, exactly: the bits of a non-negative `f32` above the lowest
//! 15 (its exponent and 8 leading fraction bits) name a *bucket* of floats whose width is at
//! most 2⁻⁸ of its lower end. Consecutive midpoints of either map are at least 0.9/128 ≈ 0.7%
//! apart (relative to the larger one), so a bucket holds at most one midpoint. A table gives,
//! per bucket, the number `T` of midpoints below the bucket and the low 15 bits of the
//! midpoint inside it, if any; the code is then `T + (low15(y) > low15(mid))`, which one
//! integer addition and a shift compute (see [`Codec::bucket`]). The table is built from the
//! map's `f32` midpoints, so the result is the exact nearest code by construction, whatever
//! the instruction set; `tests` checks it against the map's binary search at every place
//! where either can change.
//!
//! Buckets cover `|y|` from 2⁻³¹ to 2 (the normalised values are at most `1 + 2⁻²²`); smaller
//! values (and zeros, and negative values of the unsigned map) wrap around to one extra bucket
//! with no midpoint and `T = 0`. Blocks whose absmax or its reciprocal is not finite (NaN or
//! infinite values, an absmax so small that its reciprocal overflows) are encoded by the map's
//! exact search instead.

use super::map::Map;
use std::sync::OnceLock;

/// The key of the first bucket: the bits above the lowest 15 of 2⁻³¹.
pub(super) const KEY0: u32 = (127 - 31) << 8;
/// Number of buckets from 2⁻³¹ to 2; index `KEYS` is the extra bucket (see the module doc).
pub(super) const KEYS: u32 = 32 << 8;

/// Tables for the nearest-code computation and for decoding.
#[derive(Debug)]
pub struct Codec {
    pub map: &'static Map,
    /// `decode[code]`: the code's value in units of the absmax (sign included).
    pub decode: [f32; 256],
    /// `planes[b][code]`: byte `b` (little-endian) of `decode[code]`'s bits (see `x86.rs`).
    pub(super) planes: [[u8; 256]; 4],
    /// Per bucket `key` (`0..=KEYS`): `(T << 15) | (0x7FFF − low15(mid))` where `T` is the
    /// number of midpoints below the bucket and `mid` the midpoint inside it (none: `low15` is
    /// taken as `0x7FFF`). For `a` in the bucket, `(bucket + low15(a)) >> 15` is `T`, plus one
    /// exactly when `low15(a) > low15(mid)`, i.e. when `a > mid`.
    pub(super) bucket: Box<[u32; KEYS as usize + 1]>,
}

impl Codec {
    fn new(map: &'static Map) -> Codec {
        let mut decode = [0.0f32; 256];
        for (c, d) in decode.iter_mut().enumerate() {
            *d = map.decode(c as u8);
        }
        let mut planes = [[0u8; 256]; 4];
        for (c, d) in decode.iter().enumerate() {
            for (b, byte) in d.to_bits().to_le_bytes().into_iter().enumerate() {
                planes[b][c] = byte;
            }
        }
        let mids = &map.mid[..map.levels - 1];
        let mut bucket = Box::new([0u32; KEYS as usize + 1]);
        for (key, entry) in bucket.iter_mut().enumerate().take(KEYS as usize) {
            let lo = f32::from_bits((key as u32 + KEY0) << 15);
            let hi = f32::from_bits((key as u32 + KEY0 + 1) << 15);
            let below = mids.partition_point(|m| *m < lo);
            let inside = mids[below..].iter().take_while(|m| **m < hi).count();
            // The maps' midpoints are ≥ 0.7% apart and a bucket is ≤ 0.4% wide.
            debug_assert!(inside <= 1, "bucket {key} holds {inside} midpoints");
            let low = match inside {
                0 => 0x7FFF,
                _ => mids[below].to_bits() & 0x7FFF,
            };
            *entry = ((below as u32) << 15) | (0x7FFF - low);
        }
        Codec {
            map,
            decode,
            planes,
            bucket,
        }
    }

    /// The code of `y` (a normalised value, `|y| < 2`, not NaN) from the bucket table.
    #[inline(always)]
    pub(super) fn code(&self, y: f32) -> u8 {
        let bits = y.to_bits();
        let (a, sign) = if self.map.signed {
            (bits & 0x7FFF_FFFF, if y < 0.0 { 0x80 } else { 0 })
        } else {
            (bits, 0) // negative: the key wraps to the extra bucket, code 0
        };
        let key = (a >> 15).wrapping_sub(KEY0).min(KEYS);
        ((self.bucket[key as usize] + (a & 0x7FFF)) >> 15) as u8 | sign
    }

    /// Decodes a block: `out[i] = decode[codes[i]] · absmax`.
    #[inline(always)]
    pub fn decode_block(&self, codes: &[u8], absmax: f32, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::driver::has_avx512() {
            // SAFETY: the CPU has AVX-512F/BW/VL (checked by `has_avx512`), and AVX512_VBMI
            // when `has_vbmi` says so.
            return unsafe { super::x86::decode(self, codes, absmax, out, super::x86::has_vbmi()) };
        }
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = self.decode[usize::from(c)] * absmax;
        }
    }

    /// Encodes a block: returns its absmax (NaN if a value is NaN) and writes the nearest
    /// codes of `values / absmax` to `codes`.
    #[inline(always)]
    pub fn encode_block(&self, values: &[f32], codes: &mut [u8]) -> f32 {
        self.encode_block_max(values, codes, max_abs_bits(values))
    }

    /// [`Codec::encode_block`] given `max_bits`, the largest `|x|` bits of `values`
    /// ([`max_abs_bits`]; found while the values were computed).
    #[inline(always)]
    pub fn encode_block_max(&self, values: &[f32], codes: &mut [u8], max_bits: u32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if crate::driver::has_avx512() {
            // SAFETY: the CPU has AVX-512F/BW/VL (checked by `has_avx512`).
            return unsafe { super::x86::encode(self, values, codes, max_bits) };
        }
        self.encode_portable(values, codes, max_bits)
    }

    /// [`Codec::encode_block_max`] without SIMD intrinsics (the loop LLVM vectorises as it
    /// can).
    #[inline(always)]
    pub fn encode_portable(&self, values: &[f32], codes: &mut [u8], max_bits: u32) -> f32 {
        let absmax = absmax_of(max_bits);
        let inv = reciprocal(absmax);
        if !fast(absmax, inv) {
            self.encode_exact(values, codes, inv);
            return absmax;
        }
        for (c, x) in codes.iter_mut().zip(values) {
            *c = self.code(x * inv);
        }
        absmax
    }

    /// The codes of `values · inv` by the map's exact search (blocks with non-finite values).
    #[cold]
    pub(super) fn encode_exact(&self, values: &[f32], codes: &mut [u8], inv: f32) {
        for (c, x) in codes.iter_mut().zip(values) {
            *c = self.map.encode(x * inv);
        }
    }
}

/// The largest `|x|` bits of `values` (a NaN's bits are above every other value's).
#[inline(always)]
pub fn max_abs_bits(values: &[f32]) -> u32 {
    values
        .iter()
        .fold(0u32, |m, x| m.max(x.to_bits() & 0x7FFF_FFFF))
}

/// The absmax whose bits are `max_bits` (the largest `|x|` bits: NaN bits are above all
/// others), with every NaN as the one canonical NaN.
#[inline(always)]
pub(super) fn absmax_of(max_bits: u32) -> f32 {
    let absmax = f32::from_bits(max_bits);
    if absmax.is_nan() {
        f32::NAN
    } else {
        absmax
    }
}

/// The normalising factor of a block: `1 / absmax`, or 0 for an all-zero (or NaN) block.
#[inline(always)]
pub(super) fn reciprocal(absmax: f32) -> f32 {
    if absmax > 0.0 {
        1.0 / absmax
    } else {
        0.0
    }
}

/// Whether the bucket table encodes the block: every normalised value is then finite and
/// below 2 in magnitude.
#[inline(always)]
pub(super) fn fast(absmax: f32, inv: f32) -> bool {
    absmax.is_finite() && inv.is_finite()
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

    fn next(x: f32) -> f32 {
        f32::from_bits(x.to_bits() + 1)
    }

    fn prev(x: f32) -> f32 {
        f32::from_bits(x.to_bits() - 1)
    }

    /// Within a bucket both the table's code and the exact search's are non-decreasing step
    /// functions of `|y|` with at most one step (at most one midpoint lies inside): equal at the
    /// bucket's two ends and on both sides of its midpoint, they are equal on every float of it.
    #[test]
    fn bucket_table_is_the_exact_search_on_every_float() {
        for codec in [signed(), unsigned()] {
            let map = codec.map;
            let mids = &map.mid[..map.levels - 1];
            let mut probes = vec![0.0, f32::from_bits(1), 1e-38, prev(2f32.powi(-31))];
            for key in 0..KEYS {
                let lo = f32::from_bits((key + KEY0) << 15);
                let hi = f32::from_bits((key + KEY0 + 1) << 15);
                let inside: Vec<f32> = mids
                    .iter()
                    .copied()
                    .filter(|m| (lo..hi).contains(m))
                    .collect();
                assert!(inside.len() <= 1, "bucket {key}: {inside:?}");
                probes.extend([lo, prev(hi)]);
                for m in inside {
                    probes.extend([prev(m).max(lo), m, next(m).min(prev(hi))]);
                }
            }
            probes.push(1.0 + f32::EPSILON);
            for a in probes {
                for y in [a, -a] {
                    assert_eq!(codec.code(y), map.encode(y), "{y:e} ({:#x})", y.to_bits());
                }
            }
        }
    }

    #[test]
    fn blocks_encode_as_the_exact_search() {
        for codec in [signed(), unsigned()] {
            for seed in 0..20 {
                let mut v = values(4096, seed);
                if !codec.map.signed && seed % 2 == 0 {
                    v.iter_mut().for_each(|x| *x = x.abs());
                }
                // Values exactly on and next to every midpoint, and every code's value.
                for i in 0..codec.map.levels - 1 {
                    let m = codec.map.mid[i];
                    v.extend([m, next(m), prev(m)]);
                }
                v.extend((0..=255u8).map(|c| codec.decode[usize::from(c)]));
                v.extend([1.0, -0.0, 0.0, 1e-40, -1e-40]);
                let mut codes = vec![0u8; v.len()];
                let absmax = codec.encode_block(&v, &mut codes);
                let inv = reciprocal(absmax);
                for (x, c) in v.iter().zip(&codes) {
                    assert_eq!(*c, codec.map.encode(x * inv), "{x}");
                }
                // The portable loop gives the same codes and absmax, on every tail length.
                for len in [v.len(), 1, 15, 17, 255] {
                    let mut simd = vec![0u8; len];
                    let a1 = codec.encode_block(&v[..len], &mut simd);
                    let mut portable = vec![0u8; len];
                    let a2 =
                        codec.encode_portable(&v[..len], &mut portable, max_abs_bits(&v[..len]));
                    assert_eq!((a2.to_bits(), &portable), (a1.to_bits(), &simd));
                }
            }
        }
    }

    /// Blocks with NaN, infinities or a tiny absmax take the exact search; both paths agree.
    #[test]
    fn blocks_with_non_finite_values_agree() {
        let cases: [&[f32]; 6] = [
            &[1.0, f32::NAN, -0.5, 0.0],
            &[1.0, f32::INFINITY, -0.5, 0.0],
            &[f32::NEG_INFINITY, -0.5, 3.0],
            &[1e-40, -3e-41, 0.0, -0.0],
            &[f32::from_bits(0xFFC0_0001), 2.0],
            &[0.0, -0.0, 0.0],
        ];
        for codec in [signed(), unsigned()] {
            for case in cases {
                let mut v = case.to_vec();
                v.extend(values(40, 3).iter().map(|x| x * 1e-3));
                let (mut c1, mut c2) = (vec![0u8; v.len()], vec![0u8; v.len()]);
                let a1 = codec.encode_block(&v, &mut c1);
                let a2 = codec.encode_portable(&v, &mut c2, max_abs_bits(&v));
                assert_eq!((a1.to_bits(), &c1), (a2.to_bits(), &c2), "{case:?}");
                let inv = reciprocal(a1);
                for (x, c) in v.iter().zip(&c1) {
                    assert_eq!(*c, codec.map.encode(x * inv), "{x} in {case:?}");
                }
                if v.iter().any(|x| x.is_nan()) {
                    assert_eq!(a1.to_bits(), f32::NAN.to_bits());
                }
            }
        }
    }

    /// The decoders (byte permutes, gathers, portable) give the same bits for every code.
    #[test]
    fn decoders_agree_on_every_code() {
        for codec in [signed(), unsigned()] {
            let codes: Vec<u8> = (0..700u32).map(|i| (i * 167 + i / 256) as u8).collect();
            for (len, absmax) in [(700, 0.37f32), (256, 1.0), (64, 3e-20), (100, f32::NAN)] {
                let want: Vec<u32> = codes[..len]
                    .iter()
                    .map(|c| (codec.decode[usize::from(*c)] * absmax).to_bits())
                    .collect();
                let mut out = vec![0.0f32; len];
                codec.decode_block(&codes[..len], absmax, &mut out);
                assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
                #[cfg(target_arch = "x86_64")]
                if crate::driver::has_avx512() {
                    for vbmi in [false, super::super::x86::has_vbmi()] {
                        let mut out = vec![0.0f32; len];
                        // SAFETY: AVX-512 checked above; VBMI only when the CPU has it.
                        unsafe {
                            super::super::x86::decode(codec, &codes[..len], absmax, &mut out, vbmi)
                        };
                        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
                    }
                }
            }
        }
    }

    #[test]
    fn blocks_round_trip_within_the_map_step() {
        let v = values(256, 7);
        let (mut codes, mut back) = (vec![0u8; 256], vec![0.0; 256]);
        let codec = signed();
        let absmax = codec.encode_block(&v, &mut codes);
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
        let z = codec.encode_block(&[0.0; 16], &mut codes[..16]);
        assert_eq!((z, &codes[..16]), (0.0, &[0u8; 16][..]));
        // The portable decoder gives the same values.
        let mut portable = vec![0.0f32; 256];
        for (o, c) in portable.iter_mut().zip(&codes) {
            *o = codec.decode[usize::from(*c)] * absmax;
        }
        codec.decode_block(&codes, absmax, &mut back);
        assert_eq!(portable, back);
    }
}
