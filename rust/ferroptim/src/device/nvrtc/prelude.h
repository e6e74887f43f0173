// ferroptim: what every generated element function and kernel includes (DESIGN.md §3).
// The same text compiles as CUDA C++ (NVRTC, __CUDACC_RTC__) and as host C++ (the bit-for-bit
// check of src/device/nvrtc/tests.rs, built with -ffp-contract=off -fno-math-errno).
// Every arithmetic operation is an explicitly rounded one: on the device the `_rn` intrinsics,
// which the compiler never contracts into a multiply-add (and kernels are also compiled with
// --fmad=false); a fused multiply-add appears only where the Rust rule calls `mul_add`.
#ifdef __CUDACC_RTC__
#define FO_DEV __device__ __forceinline__
typedef unsigned long long fo_u64;
FO_DEV unsigned int fo_f2u(float f) { return __float_as_uint(f); }
FO_DEV float fo_u2f(unsigned int u) { return __uint_as_float(u); }
FO_DEV fo_u64 fo_d2u(double f) { return (fo_u64)__double_as_longlong(f); }
FO_DEV double fo_u2d(fo_u64 u) { return __longlong_as_double((long long)u); }
FO_DEV float fo_add(float a, float b) { return __fadd_rn(a, b); }
FO_DEV float fo_sub(float a, float b) { return __fsub_rn(a, b); }
FO_DEV float fo_mul(float a, float b) { return __fmul_rn(a, b); }
FO_DEV float fo_div(float a, float b) { return __fdiv_rn(a, b); }
FO_DEV float fo_sqrt(float a) { return __fsqrt_rn(a); }
FO_DEV float fo_fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
FO_DEV float fo_abs(float a) { return fabsf(a); }
FO_DEV double fo_add(double a, double b) { return __dadd_rn(a, b); }
FO_DEV double fo_sub(double a, double b) { return __dsub_rn(a, b); }
FO_DEV double fo_mul(double a, double b) { return __dmul_rn(a, b); }
FO_DEV double fo_div(double a, double b) { return __ddiv_rn(a, b); }
FO_DEV double fo_sqrt(double a) { return __dsqrt_rn(a); }
FO_DEV double fo_fma(double a, double b, double c) { return __fma_rn(a, b, c); }
FO_DEV double fo_abs(double a) { return fabs(a); }
// CUDA's pow (within 2 ulp), for the capturable steps' per-step scalars only.
FO_DEV double fo_pow(double a, double b) { return pow(a, b); }
#else
#include <cmath>
#include <cstring>
#define FO_DEV static inline
typedef unsigned long long fo_u64;
FO_DEV unsigned int fo_f2u(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
FO_DEV float fo_u2f(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
FO_DEV fo_u64 fo_d2u(double f) { fo_u64 u; std::memcpy(&u, &f, 8); return u; }
FO_DEV double fo_u2d(fo_u64 u) { double f; std::memcpy(&f, &u, 8); return f; }
FO_DEV float fo_add(float a, float b) { return a + b; }
FO_DEV float fo_sub(float a, float b) { return a - b; }
FO_DEV float fo_mul(float a, float b) { return a * b; }
FO_DEV float fo_div(float a, float b) { return a / b; }
FO_DEV float fo_sqrt(float a) { return std::sqrt(a); }
FO_DEV float fo_fma(float a, float b, float c) { return std::fma(a, b, c); }
FO_DEV float fo_abs(float a) { return std::fabs(a); }
FO_DEV double fo_add(double a, double b) { return a + b; }
FO_DEV double fo_sub(double a, double b) { return a - b; }
FO_DEV double fo_mul(double a, double b) { return a * b; }
FO_DEV double fo_div(double a, double b) { return a / b; }
FO_DEV double fo_sqrt(double a) { return std::sqrt(a); }
FO_DEV double fo_fma(double a, double b, double c) { return std::fma(a, b, c); }
FO_DEV double fo_abs(double a) { return std::fabs(a); }
// glibc's pow, as Rust's f64::powf calls it.
FO_DEV double fo_pow(double a, double b) { return std::pow(a, b); }
#endif

// Float::max_nan: NaN (Rust's canonical quiet NaN) if either is NaN, else the larger.
FO_DEV float fo_max_nan(float a, float b) {
  return (a != a || b != b) ? fo_u2f(0x7FC00000u) : (a > b ? a : b);
}
FO_DEV double fo_max_nan(double a, double b) {
  return (a != a || b != b) ? fo_u2d(0x7FF8000000000000ull) : (a > b ? a : b);
}

// f64::min: the other value if one is NaN, else the smaller.
FO_DEV double fo_min_num(double a, double b) {
  return (a != a) ? b : (b != b) ? a : (a < b ? a : b);
}

// Storage <-> compute, as src/element.rs: f32/f64 as they are; bf16 and f16 (held as
// unsigned short) widen exactly and round to nearest even once, when stored.
FO_DEV float fo_load(float v) { return v; }
FO_DEV double fo_load(double v) { return v; }
FO_DEV void fo_store(float& dst, float v) { dst = v; }
FO_DEV void fo_store(double& dst, double v) { dst = v; }

struct fo_bf16 { unsigned short x; };
struct fo_f16 { unsigned short x; };

FO_DEV float fo_load(fo_bf16 v) { return fo_u2f(((unsigned int)v.x) << 16); }
// c10's round_to_nearest_even; NaN becomes the canonical 0x7FC0.
FO_DEV void fo_store(fo_bf16& dst, float v) {
  const unsigned int bits = fo_f2u(v);
  const unsigned int rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  dst.x = (v != v) ? (unsigned short)0x7FC0u : (unsigned short)rounded;
}

FO_DEV float fo_load(fo_f16 v) {
  const unsigned int h = v.x;
  const unsigned int sign = (h & 0x8000u) << 16;
  const unsigned int exp = (h >> 10) & 0x1Fu;
  unsigned int man = h & 0x3FFu;
  if (exp == 0x1Fu) {
    return fo_u2f(man ? (sign | 0x7FC00000u | (man << 13)) : (sign | 0x7F800000u));
  }
  if (exp == 0u) {
    if (man == 0u) return fo_u2f(sign);
    unsigned int e = 0u;
    while (!(man & 0x400u)) { man <<= 1; e++; }
    return fo_u2f(sign | ((113u - e) << 23) | ((man & 0x3FFu) << 13));
  }
  return fo_u2f(sign | ((exp + 112u) << 23) | (man << 13));
}
FO_DEV void fo_store(fo_f16& dst, float f) {
  const unsigned int x = fo_f2u(f);
  const unsigned int sign = (x >> 16) & 0x8000u;
  const unsigned int exp = (x >> 23) & 0xFFu;
  unsigned int man = x & 0x7FFFFFu;
  if (exp == 0xFFu) {
    dst.x = (unsigned short)(man ? (sign | 0x7E00u | (man >> 13)) : (sign | 0x7C00u));
    return;
  }
  const int e = (int)exp - 112;
  if (e >= 0x1F) { dst.x = (unsigned short)(sign | 0x7C00u); return; }
  if (e <= 0) {
    if (e < -10) { dst.x = (unsigned short)sign; return; }
    man |= 0x800000u;
    const unsigned int shift = (unsigned int)(14 - e);
    unsigned int h = man >> shift;
    const unsigned int rem = man & ((1u << shift) - 1u);
    const unsigned int half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    dst.x = (unsigned short)(sign | h);
    return;
  }
  unsigned int h = sign | ((unsigned int)e << 10) | (man >> 13);
  const unsigned int rem = man & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  dst.x = (unsigned short)h;
}
