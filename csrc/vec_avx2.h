// AVX2/FMA/F16C building blocks of the CPU kernels: 8-wide fp32 loads/stores of fp32, bf16 and fp16 data, and exp.
// Compiled with per-function target attributes and chosen at run time, so the extension loads on any x86-64 CPU.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu_capability.h"

#ifdef PK_HAVE_AVX2
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

// Every function that touches a __m256 carries this attribute; the kernels that use them carry it too, so the
// helpers inline into them while the rest of the library stays baseline x86-64.
#define PK_AVX2 __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#define PK_AVX2_KERNEL __attribute__((target("avx2,fma,f16c")))

namespace pk {
namespace avx2 {

constexpr int kLanes = 8;

// ---- loads and stores: T in memory <-> 8 x fp32 in a register ---------------------------------------------------
template <typename T>
struct Io;

template <>
struct Io<float> {
  PK_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  PK_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
};

template <>
struct Io<c10::BFloat16> {
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place
  PK_AVX2 static __m256 load(const c10::BFloat16* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  // round to nearest even (as c10::BFloat16 does); NaN stays NaN (a quiet bit is forced on)
  PK_AVX2 static void store(c10::BFloat16* p, __m256 v) {
    __m256i b = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i qnan = _mm256_or_si256(b, _mm256_set1_epi32(0x00400000));
    r = _mm256_srli_epi32(_mm256_blendv_epi8(r, qnan, nan), 16);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
};

template <>
struct Io<c10::Half> {
  PK_AVX2 static __m256 load(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  PK_AVX2 static void store(c10::Half* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
};

// The last V % 8 elements go through a stack buffer: never a read or write past the end of a row.
template <typename T>
PK_AVX2 __m256 load_tail(const T* p, int64_t n, float pad) {
  alignas(32) float buf[kLanes];
  for (int i = 0; i < kLanes; ++i) buf[i] = i < n ? static_cast<float>(p[i]) : pad;
  return _mm256_load_ps(buf);
}

template <typename T>
PK_AVX2 void store_tail(T* p, int64_t n, __m256 v) {
  alignas(32) T buf[kLanes];
  Io<T>::store(buf, v);
  std::memcpy(p, buf, static_cast<size_t>(n) * sizeof(T));
}

// ---- reductions --------------------------------------------------------------------------------------------------
PK_AVX2 float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

PK_AVX2 float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---- exp ---------------------------------------------------------------------------------------------------------
// Below this the result would be close to or under FLT_MIN; it is returned as exactly 0, which no fp32 sum with a
// term of 1 (the row max) can notice, and it keeps denormals (slow microcode assists) out of the loop.
constexpr float kExpFloor = -86.0f;

// e^d for d <= 0 (d may be -inf). Cody-Waite reduction d = n ln2 + r, |r| <= ln2/2, then a degree-7 series for
// e^r in Horner form (minimax coefficients; ~1 ulp on the reduced range), scaled by 2^n through the exponent bits.
// `dc` receives d clamped to [kExpFloor, 0]-ish (finite), so callers can form e * d without 0 * -inf = NaN.
// NaN in gives NaN out (max(lo, NaN) returns the NaN).
PK_AVX2 __m256 exp_nonpos(__m256 d, __m256& dc) {
  const __m256 lo = _mm256_set1_ps(kExpFloor);
  const __m256 under = _mm256_cmp_ps(d, lo, _CMP_LT_OQ);
  dc = _mm256_max_ps(lo, d);
  // n = round(d / ln2) by the 1.5 * 2^23 shifter: the fma's rounding leaves n in the low mantissa bits of t
  const __m256 shifter = _mm256_set1_ps(12582912.0f);
  const __m256 t = _mm256_fmadd_ps(dc, _mm256_set1_ps(1.44269504088896341f), shifter);
  const __m256 n = _mm256_sub_ps(t, shifter);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), dc);  // ln2 split: hi part is exact in 9 bits
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // 2^n: (bits(t) + 127) << 23 keeps exactly (n + 127) << 23, the shifter's own bits fall off the top
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

// Flush-to-zero / denormals-are-zero for the duration of a kernel on this thread, restored afterwards.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned int saved_;
};

}  // namespace avx2
}  // namespace pk

#endif
