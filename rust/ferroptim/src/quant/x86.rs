//! AVX-512 versions of the block codec (`codec.rs`): the same operations on 16 lanes.
//!
//! Encoding computes exactly what the portable loop computes: the decade count from the
//! same `f32` comparisons, `a·S − O` with one fused multiply-add, `floor`, the clamp, and
//! the exact search for the lanes near a rounding boundary. Decoding is a table gather.

use super::codec::Codec;
use std::arch::x86_64::*;

/// `Codec::encode_block` on AVX-512 (see there). Returns the block's absmax.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) unsafe fn encode(c: &Codec, values: &[f32], codes: &mut [u8]) -> f32 {
    let len = values.len().min(codes.len());
    let (vp, cp) = (values.as_ptr(), codes.as_mut_ptr());
    let lanes = |i: usize| -> __mmask16 {
        let left = len - i;
        if left >= 16 {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    };
    // absmax, NaN-propagating.
    let mut m = _mm512_setzero_ps();
    let mut nan: __mmask16 = 0;
    let mut i = 0;
    while i < len {
        let k = lanes(i);
        // SAFETY: the masked load reads only lanes `i..len` of `values`.
        let x = unsafe { _mm512_maskz_loadu_ps(k, vp.add(i)) };
        m = _mm512_max_ps(m, _mm512_abs_ps(x));
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        i += 16;
    }
    let absmax = if nan != 0 {
        f32::NAN
    } else {
        _mm512_reduce_max_ps(m)
    };
    let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
    let t = c.tables();
    let vinv = _mm512_set1_ps(inv);
    let (one, sign_bit) = (_mm512_set1_epi32(1), _mm512_set1_epi32(0x80));
    // SAFETY: the octave tables are 32 entries long.
    let (ob_lo, ob_hi, ot_lo, ot_hi) = unsafe {
        (
            _mm512_loadu_si512(t.octave_base.as_ptr() as *const __m512i),
            _mm512_loadu_si512(t.octave_base.as_ptr().add(16) as *const __m512i),
            _mm512_loadu_ps(t.octave_threshold.as_ptr()),
            _mm512_loadu_ps(t.octave_threshold.as_ptr().add(16)),
        )
    };
    let (bias, last) = (_mm512_set1_epi32(127), _mm512_set1_epi32(31));
    // SAFETY: the tables are 16 entries long (`[f32; 16]`, `[i32; 16]`).
    let (scale, offset, kmax, base) = unsafe {
        (
            _mm512_loadu_ps(t.scale.as_ptr()),
            _mm512_loadu_ps(t.offset.as_ptr()),
            _mm512_loadu_ps(t.kmax.as_ptr()),
            _mm512_loadu_si512(t.base.as_ptr() as *const __m512i),
        )
    };
    let (zero, guard_lo, guard_hi) = (
        _mm512_setzero_ps(),
        _mm512_set1_ps(super::codec::GUARD),
        _mm512_set1_ps(1.0 - super::codec::GUARD),
    );
    let signed = c.map.signed;
    let mut i = 0;
    while i < len {
        let k = lanes(i);
        // SAFETY: as above.
        let x = unsafe { _mm512_maskz_loadu_ps(k, vp.add(i)) };
        let y = _mm512_mul_ps(x, vinv);
        let (a, neg) = if signed {
            (_mm512_abs_ps(y), _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero))
        } else {
            // Negative values: no threshold is below them, so their index is 0, as in
            // the portable loop (which clamps them to 0 first).
            (_mm512_max_ps(y, zero), 0)
        };
        // The bit length n of the index = the number of decade thresholds below `a`: those
        // below `a`'s binary octave, plus the one inside it if `a` exceeds it.
        let exponent = _mm512_srli_epi32::<23>(_mm512_castps_si512(a));
        let octave = _mm512_min_epi32(
            _mm512_max_epi32(_mm512_sub_epi32(bias, exponent), _mm512_setzero_si512()),
            last,
        );
        let n = _mm512_permutex2var_epi32(ob_lo, octave, ob_hi);
        let inside = _mm512_permutex2var_ps(ot_lo, octave, ot_hi);
        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, inside);
        let n = _mm512_mask_add_epi32(n, gt, n, one);
        let fr = _mm512_fmsub_ps(
            a,
            _mm512_permutexvar_ps(n, scale),
            _mm512_permutexvar_ps(n, offset),
        );
        let fl = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(fr);
        let f = _mm512_min_ps(_mm512_max_ps(fl, zero), _mm512_permutexvar_ps(n, kmax));
        let dist = _mm512_sub_ps(fr, fl);
        let sure = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(dist, guard_lo)
            & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(dist, guard_hi);
        let idx = _mm512_add_epi32(_mm512_permutexvar_epi32(n, base), _mm512_cvttps_epi32(f));
        let code = _mm512_mask_or_epi32(idx, neg, idx, sign_bit);
        // SAFETY: the masked store writes only bytes `i..len` of `codes`.
        unsafe { _mm512_mask_cvtepi32_storeu_epi8(cp.add(i) as *mut i8, k, code) };
        let mut unsure = !sure & k;
        while unsure != 0 {
            let lane = unsure.trailing_zeros() as usize;
            // SAFETY: `lane` is a set bit of `k`, so `i + lane < len`.
            unsafe { *cp.add(i + lane) = c.map.encode(*vp.add(i + lane) * inv) };
            unsure &= unsure - 1;
        }
        i += 16;
    }
    absmax
}

/// `Codec::decode_block` on AVX-512: `out[i] = decode[codes[i]] · absmax`.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn decode(c: &Codec, codes: &[u8], absmax: f32, out: &mut [f32]) {
    let len = codes.len().min(out.len());
    let (cp, op) = (codes.as_ptr(), out.as_mut_ptr());
    let scale = _mm512_set1_ps(absmax);
    let mut i = 0;
    while i < len {
        let left = len - i;
        let k: __mmask16 = if left >= 16 {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        };
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
