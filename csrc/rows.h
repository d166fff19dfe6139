// Per-row kernels of the logits-path ops (log-prob, entropy and their gradient): portable scalar and AVX2 versions
// here, AVX-512 in rows_avx512.h. Pure C++ over raw pointers: checks, dtypes and threads live in logprobs_entropy.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu_capability.h"
#include "vec_avx2.h"

namespace pk {

// Forward streams a row in tiles: the tile's max first, then one exp per element, the tile still in L1. 2048
// elements (8 KiB of fp32) keep the re-read in L1 and make the once-per-tile rescale of the running sums negligible.
constexpr int64_t kTile = 2048;

// The type a row is computed in: float for fp32 / bf16 / fp16 data (the AVX2 loops), double for double data.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Result of the forward over one row; lse and ez as in the contract of prepo_kernels/logprobs_entropy_torch.py.
template <typename C>
struct RowOut {
  C lp, ent, lse, ez;
};

// Online softmax statistics relative to the running max m (in units of z = x / T):
//   s0 = sum e^(z - m),  s1 = sum (z - m) e^(z - m);  then lse = m + log s0 and H = log s0 - s1 / s0.
template <typename C>
struct Online {
  C m = -std::numeric_limits<C>::infinity();
  double s0 = 0.0, s1 = 0.0;

  // Move the reference point to m_new >= m (the shift of the (z - m) terms goes into s1 first).
  // The first tile has s0 = 0 and m = -inf: nothing to rescale, and no 0 * inf.
  void rebase(C m_new) {
    if (s0 > 0.0 && m_new > m) {
      const double shift = static_cast<double>(m) - static_cast<double>(m_new);
      const double a = std::exp(shift);
      s1 = (s1 + shift * s0) * a;
      s0 *= a;
    }
    m = m_new;
  }

  // Reference point used in the arithmetic: 0 while every value seen is -inf (keeps -inf - -inf out).
  C ref() const { return std::isinf(m) && m < 0 ? C(0) : m; }

  // A row without a finite lse (NaN or +inf in z: s0 is NaN; all -inf: s0 = 0) is flagged, per the NON_FINITE_ROWS
  // contract of prepo_kernels/logprobs_entropy_torch.py: lp = ent = ez = NaN (0 when ignored), lse NaN or -inf (all -inf).
  RowOut<C> finish(C z_target, bool ignored) const {
    const double log_s0 = std::log(s0);
    const double lse = static_cast<double>(ref()) + log_s0;
    const double ent = log_s0 - s1 / s0;
    const C nan = std::numeric_limits<C>::quiet_NaN();
    RowOut<C> o;
    if (!std::isfinite(lse)) {
      o.lse = std::isinf(lse) && lse < 0 ? static_cast<C>(lse) : nan;
      o.ez = nan;
      o.lp = o.ent = ignored ? C(0) : nan;
      return o;
    }
    o.lse = static_cast<C>(lse);
    o.ez = static_cast<C>(lse - ent);
    // (z_t - m) - log s0: both terms are exact-ish and <= 0 / >= 0, so lp <= 0 with no cancellation at large |z|
    o.lp = ignored ? C(0) : static_cast<C>((static_cast<double>(z_target) - ref()) - log_s0);
    o.ent = ignored ? C(0) : static_cast<C>(ent);
    return o;
  }
};

// Gradient coefficients of one row: dlogits_j = p_j * (c0 - ge * d_j), d_j = z_j - lse, plus g_lp / T at the target.
// (From dz = g_lp (onehot - p) + g_ent p (ez - z) and ez - z = (ez - lse) - d, all divided by T.)
template <typename C>
struct RowGrad {
  C inv_t, lse, c0, ge, g_lp_t;

  RowGrad(C g_lp, C g_ent, C lse_, C ez, C inv_t_)
      : inv_t(inv_t_),
        lse(lse_),
        c0(static_cast<C>((static_cast<double>(g_ent) * (static_cast<double>(ez) - lse_) - g_lp) * inv_t_)),
        ge(g_ent * inv_t_),
        g_lp_t(g_lp * inv_t_) {}

  // The target column in double: g_lp (1 - p_t) formed before any rounding to the output dtype. A target on a -inf
  // (masked) column has p_t = 0 and gets g_lp / T, never 0 * inf.
  double target_value(C x_t) const {
    const double d = static_cast<double>(x_t) * inv_t - lse;
    const double p = std::exp(d);
    return (p > 0.0 ? p * (static_cast<double>(c0) - static_cast<double>(ge) * d) : 0.0) + g_lp_t;
  }
};

// ---- portable scalar versions ----------------------------------------------------------------------------------

template <typename T, typename C = typename Acc<T>::type>
void fwd_row_scalar(const T* row, int64_t V, C inv_t, Online<C>& st) {
  for (int64_t start = 0; start < V; start += kTile) {
    const int64_t len = std::min(kTile, V - start);
    const T* p = row + start;
    C tmax = -std::numeric_limits<C>::infinity();
    for (int64_t j = 0; j < len; ++j) tmax = std::max(tmax, static_cast<C>(p[j]));
    st.rebase(std::max(st.m, tmax * inv_t));  // x -> x / T is monotonic, so max(x) / T = max(x / T)
    const C m = st.ref();
    double s0 = 0.0, s1 = 0.0;  // a sequential sum: double keeps it as accurate as the 8-lane one
    for (int64_t j = 0; j < len; ++j) {
      const C d = static_cast<C>(p[j]) * inv_t - m;  // z rounded first, as m was: the max gives d = 0
      const C e = std::exp(d);
      s0 += e;
      s1 += e > C(0) ? static_cast<double>(e) * d : 0.0;  // -inf column: e = 0, skip 0 * -inf
    }
    st.s0 += s0;
    st.s1 += s1;
  }
}

template <typename T, typename C = typename Acc<T>::type>
void bwd_row_scalar(const T* x, T* out, int64_t V, const RowGrad<C>& g) {
  for (int64_t j = 0; j < V; ++j) {
    const C d = static_cast<C>(x[j]) * g.inv_t - g.lse;
    const C p = std::exp(d);
    out[j] = static_cast<T>(p > C(0) ? p * (g.c0 - g.ge * d) : C(0));
  }
}

#ifdef PK_HAVE_AVX2
namespace avx2 {

template <typename T>
PK_AVX2_KERNEL void fwd_row(const T* row, int64_t V, float inv_t, Online<float>& st) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const __m256 vinv = _mm256_set1_ps(inv_t);
  for (int64_t start = 0; start < V; start += kTile) {
    const int64_t len = std::min(kTile, V - start);
    const int64_t full = len - len % kLanes;
    const T* p = row + start;
    // pass 1 over the tile (from memory): its max; the tail is padded with -inf
    __m256 vmax = _mm256_set1_ps(ninf);
    __m256 vmax2 = vmax;
    int64_t j = 0;
    for (; j + 2 * kLanes <= full; j += 2 * kLanes) {
      vmax = _mm256_max_ps(vmax, Io<T>::load(p + j));
      vmax2 = _mm256_max_ps(vmax2, Io<T>::load(p + j + kLanes));
    }
    for (; j < full; j += kLanes) vmax = _mm256_max_ps(vmax, Io<T>::load(p + j));
    const __m256 tail = full < len ? load_tail(p + full, len - full, ninf) : _mm256_set1_ps(ninf);
    const float tmax = hmax(_mm256_max_ps(_mm256_max_ps(vmax, vmax2), tail));
    st.rebase(std::max(st.m, tmax * inv_t));
    // pass 2 over the tile (from L1): one exp per element. z = x / T is rounded before subtracting m (no fmsub),
    // exactly as m itself was: the max element gives d = 0, e = 1, so s0 >= 1 and lp <= 0 hold exactly.
    const __m256 vm = _mm256_set1_ps(st.ref());
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 dc;
    for (j = 0; j < full; j += kLanes) {
      const __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_mul_ps(Io<T>::load(p + j), vinv), vm), dc);
      s0 = _mm256_add_ps(s0, e);
      s1 = _mm256_fmadd_ps(e, dc, s1);
    }
    if (full < len) {
      const __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_mul_ps(tail, vinv), vm), dc);
      s0 = _mm256_add_ps(s0, e);
      s1 = _mm256_fmadd_ps(e, dc, s1);
    }
    st.s0 += hsum(s0);
    st.s1 += hsum(s1);
  }
}

template <typename T>
PK_AVX2_KERNEL void bwd_row(const T* x, T* out, int64_t V, const RowGrad<float>& g) {
  const __m256 vinv = _mm256_set1_ps(g.inv_t), vlse = _mm256_set1_ps(g.lse);
  const __m256 vc0 = _mm256_set1_ps(g.c0), vge = _mm256_set1_ps(g.ge);
  const int64_t full = V - V % kLanes;
  __m256 dc;
  // each vector is loaded before it is stored, so out == x (in-place backward) is safe
  for (int64_t j = 0; j < full; j += kLanes) {
    const __m256 p = exp_nonpos(_mm256_sub_ps(_mm256_mul_ps(Io<T>::load(x + j), vinv), vlse), dc);
    Io<T>::store(out + j, _mm256_mul_ps(p, _mm256_fnmadd_ps(vge, dc, vc0)));
  }
  if (full < V) {
    const __m256 xt = load_tail(x + full, V - full, -std::numeric_limits<float>::infinity());
    const __m256 p = exp_nonpos(_mm256_sub_ps(_mm256_mul_ps(xt, vinv), vlse), dc);
    store_tail(out + full, V - full, _mm256_mul_ps(p, _mm256_fnmadd_ps(vge, dc, vc0)));
  }
}

}  // namespace avx2
#endif

#ifdef PK_HAVE_AVX512
// The AVX-512 loops (rows_avx512.h), compiled in rows_avx512.cpp for float, c10::BFloat16 and c10::Half; the
// avx512_bf16 variant differs only in how bf16 results are rounded, so it has only the bf16 backward.
namespace avx512 {
template <typename T>
void fwd_row(const T* row, int64_t V, float inv_t, Online<float>& st);
template <typename T>
void bwd_row(const T* x, T* out, int64_t V, const RowGrad<float>& g);
}  // namespace avx512
namespace avx512_bf16 {
template <typename T>
void bwd_row(const T* x, T* out, int64_t V, const RowGrad<float>& g);
}  // namespace avx512_bf16
#endif

// The loops of capability `cap` (resolved by cpu_capability.cpp: the CPU has it); double data always takes the
// portable loops, in double.
template <typename T, typename C = typename Acc<T>::type>
void forward_row(const T* row, int64_t V, C inv_t, Online<C>& st, Capability cap) {
  if constexpr (std::is_same_v<C, float>) {
    switch (cap) {
#ifdef PK_HAVE_AVX512
      case Capability::kAvx512Bf16:
      case Capability::kAvx512:
        return avx512::fwd_row<T>(row, V, inv_t, st);
#endif
#ifdef PK_HAVE_AVX2
      case Capability::kAvx2:
        return avx2::fwd_row<T>(row, V, inv_t, st);
#endif
      default:
        break;
    }
  }
  fwd_row_scalar<T>(row, V, inv_t, st);
}

template <typename T, typename C = typename Acc<T>::type>
void backward_row(const T* x, T* out, int64_t V, const RowGrad<C>& g, Capability cap) {
  if constexpr (std::is_same_v<C, float>) {
    switch (cap) {
#ifdef PK_HAVE_AVX512
      case Capability::kAvx512Bf16:
        if constexpr (std::is_same_v<T, c10::BFloat16>) return avx512_bf16::bwd_row<T>(x, out, V, g);
        [[fallthrough]];
      case Capability::kAvx512:
        return avx512::bwd_row<T>(x, out, V, g);
#endif
#ifdef PK_HAVE_AVX2
      case Capability::kAvx2:
        return avx2::bwd_row<T>(x, out, V, g);
#endif
      default:
        break;
    }
  }
  bwd_row_scalar<T>(x, out, V, g);
}

}  // namespace pk
