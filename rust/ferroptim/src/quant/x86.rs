//! AVX-512 versions of the block codec (`codec.rs`): the same operations on 16 lanes.
//!
//! Encoding computes exactly what the portable loop computes: the absmax as the largest
//! `|x|` bits, the normalised values `x · (1/absmax)`, and per value the bucket table's entry
//! (a gather) plus the value's low 15 bits, shifted. Decoding is a table gather.

use super::codec::{absmax_of, fast, reciprocal, Codec, KEY0, KEYS};
use std::arch::x86_64::*;

/// The lanes of a 16-lane step at `i` that lie before `len`.
#[inline(always)]
fn lanes(i: usize, len: usize) -> __mmask16 {
    let left = len - i;
    if left >= 16 {
        0xFFFF
    } else {
        ((1u32 << left) - 1) as __mmask16
    }
}

/// `Codec::encode_block_max` on AVX-512 (see there): `max_bits` is the largest `|x|` bits
/// of `values`. Returns the block's absmax.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn encode(c: &Codec, values: &[f32], codes: &mut [u8], max_bits: u32) -> f32 {
    let len = values.len().min(codes.len());
    let (vp, cp) = (values.as_ptr(), codes.as_mut_ptr());
    let abs = _mm512_set1_epi32(0x7FFF_FFFF);
    let absmax = absmax_of(max_bits);
    let inv = reciprocal(absmax);
    if !fast(absmax, inv) {
        c.encode_exact(&values[..len], &mut codes[..len], inv);
        return absmax;
    }
    let vinv = _mm512_set1_ps(inv);
    let (key0, keys, low) = (
        _mm512_set1_epi32(KEY0 as i32),
        _mm512_set1_epi32(KEYS as i32),
        _mm512_set1_epi32(0x7FFF),
    );
    let (zero, sign_bit) = (_mm512_setzero_ps(), _mm512_set1_epi32(0x80));
    let table = c.bucket.as_ptr() as *const i32;
    let signed = c.map.signed;
    let mut i = 0;
    while i < len {
        let k = lanes(i, len);
        // SAFETY: as above.
        let x = unsafe { _mm512_maskz_loadu_ps(k, vp.add(i)) };
        let y = _mm512_mul_ps(x, vinv);
        let bits = _mm512_castps_si512(y);
        // Signed: |y| and the sign; unsigned: negative values wrap to the extra bucket.
        let a = if signed {
            _mm512_and_si512(bits, abs)
        } else {
            bits
        };
        let key = _mm512_min_epu32(_mm512_sub_epi32(_mm512_srli_epi32::<15>(a), key0), keys);
        // SAFETY: every key is at most `KEYS`, an index of the table (`KEYS + 1` entries).
        let entry = unsafe { _mm512_i32gather_epi32::<4>(key, table) };
        let code = _mm512_srli_epi32::<15>(_mm512_add_epi32(entry, _mm512_and_si512(a, low)));
        let code = if signed {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero);
            _mm512_mask_or_epi32(code, neg, code, sign_bit)
        } else {
            code
        };
        // SAFETY: the masked store writes only bytes `i..len` of `codes`.
        unsafe { _mm512_mask_cvtepi32_storeu_epi8(cp.add(i) as *mut i8, k, code) };
        i += 16;
    }
    absmax
}

/// `Codec::decode_block` on AVX-512: `out[i] = decode[codes[i]] · absmax`. With AVX512_VBMI
/// (`vbmi`), 64 codes at a time by byte permutes ([`decode64`]); the rest by a table gather.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL, and AVX512_VBMI if `vbmi`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn decode(c: &Codec, codes: &[u8], absmax: f32, out: &mut [f32], vbmi: bool) {
    let len = codes.len().min(out.len());
    let (cp, op) = (codes.as_ptr(), out.as_mut_ptr());
    let scale = _mm512_set1_ps(absmax);
    let mut i = 0;
    if vbmi && len >= 64 {
        // SAFETY: the caller guarantees AVX512_VBMI; `len / 64 * 64 <= len`.
        unsafe { decode64(c, codes, absmax, out) };
        i = len / 64 * 64;
    }
    while i < len {
        let k = lanes(i, len);
        // SAFETY: masked loads/stores touch only elements `i..len`; gathered indices are
        // bytes, below the table's 256 entries.
        unsafe {
            let b = _mm_maskz_loadu_epi8(k, cp.add(i) as *const i8);
            let idx = _mm512_cvtepu8_epi32(b);
            let v = _mm512_i32gather_ps::<4>(idx, c.decode.as_ptr());
            _mm512_mask_storeu_ps(op.add(i), k, _mm512_mul_ps(v, scale));
        }
        i += 16;
    }
}

/// Decodes the first `len / 64 * 64` codes, 64 at a time, without gathers: the 256-entry
/// table is held as four byte planes (byte `b` of every entry's `f32` bits), each two halves
/// of 128 bytes that one `vpermi2b` indexes by a code's low 7 bits; bit 7 picks the half.
/// The four planes are then interleaved into `f32` lanes by byte and word unpacks, which work
/// within 128-bit lanes; the codes are first permuted so that the unpacks leave the values
/// in order. Every value is a table entry times `absmax`, exactly as the gather computes.
///
/// # Safety
/// The CPU must support AVX-512F/BW and AVX512_VBMI.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn decode64(c: &Codec, codes: &[u8], absmax: f32, out: &mut [f32]) {
    let len = codes.len().min(out.len()) / 64 * 64;
    let (cp, op) = (codes.as_ptr(), out.as_mut_ptr());
    let planes = &c.planes;
    // SAFETY: `planes` is 4 × 256 bytes: each `loadu` reads 64 of them.
    let t: [[__m512i; 4]; 4] = std::array::from_fn(|b| {
        std::array::from_fn(|q| unsafe {
            _mm512_loadu_si512(planes[b].as_ptr().add(64 * q) as *const __m512i)
        })
    });
    // SAFETY: `ORDER` is 64 bytes.
    let order = unsafe { _mm512_loadu_si512(ORDER.as_ptr() as *const __m512i) };
    let scale = _mm512_set1_ps(absmax);
    let mut i = 0;
    while i < len {
        // SAFETY: `i + 64 <= len`: the load reads codes `i..i + 64`.
        let raw = unsafe { _mm512_loadu_si512(cp.add(i) as *const __m512i) };
        let r = _mm512_permutexvar_epi8(order, raw);
        let high = _mm512_movepi8_mask(r);
        let plane = |b: usize| {
            let lo = _mm512_permutex2var_epi8(t[b][0], r, t[b][1]);
            let hi = _mm512_permutex2var_epi8(t[b][2], r, t[b][3]);
            _mm512_mask_blend_epi8(high, lo, hi)
        };
        let (p0, p1, p2, p3) = (plane(0), plane(1), plane(2), plane(3));
        let (w01lo, w01hi) = (_mm512_unpacklo_epi8(p0, p1), _mm512_unpackhi_epi8(p0, p1));
        let (w23lo, w23hi) = (_mm512_unpacklo_epi8(p2, p3), _mm512_unpackhi_epi8(p2, p3));
        let v = [
            _mm512_unpacklo_epi16(w01lo, w23lo),
            _mm512_unpackhi_epi16(w01lo, w23lo),
            _mm512_unpacklo_epi16(w01hi, w23hi),
            _mm512_unpackhi_epi16(w01hi, w23hi),
        ];
        for (q, v) in v.into_iter().enumerate() {
            let x = _mm512_mul_ps(_mm512_castsi512_ps(v), scale);
            // SAFETY: elements `i + 16q .. i + 16q + 16` lie below `len`.
            unsafe { _mm512_storeu_ps(op.add(i + 16 * q), x) };
        }
        i += 64;
    }
}

/// The byte order that makes [`decode64`]'s unpacks leave values in order: the unpacks put
/// the value of permuted byte `16L + 4v + j` (128-bit lane `L`, `j` < 4) into output vector
/// `v` at position `4L + j`, so that byte must be code `16v + 4L + j`.
const ORDER: [u8; 64] = {
    let mut o = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let (lane, v, j) = (i / 16, (i % 16) / 4, i % 4);
        o[i] = (16 * v + 4 * lane + j) as u8;
        i += 1;
    }
    o
};

/// Whether the CPU has AVX512_VBMI (byte permutes across a register), for [`decode`].
pub(super) fn has_vbmi() -> bool {
    static VBMI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VBMI.get_or_init(|| is_x86_feature_detected!("avx512vbmi"))
}
