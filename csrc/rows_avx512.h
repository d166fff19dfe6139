// AVX-512 per-row loops of the logits-path ops (16 fp32 lanes; fp32, bf16 and fp16 data): the math of rows.h's loops.
// No include guard: rows_avx512.cpp compiles this body once per variant, inside a target region and a namespace.
// PK_BF16_CVT = 1: bf16 results are rounded by the AVX512_BF16 instruction, else by integer arithmetic (same bits).

constexpr int kLanes = 16;

// The first n (< 16) lanes.
inline __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

// ---- loads and stores: T in memory <-> 16 x fp32 in a register; the masked forms never touch the lanes left out ---
// load2 / store2 move 32 consecutive elements as two registers, in an order of the type's choosing (bf16: the even and
// the odd elements): the forward only sums and takes maxima, and the backward stores what it loaded with store2.
template <typename T>
struct Io;

template <typename T>
struct Pairs {
  static void load2(const T* p, __m512& a, __m512& b) {
    a = Io<T>::load(p);
    b = Io<T>::load(p + kLanes);
  }
  static void store2(T* p, __m512 a, __m512 b) {
    Io<T>::store(p, a);
    Io<T>::store(p + kLanes, b);
  }
};

template <>
struct Io<float> : Pairs<float> {
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
  static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(p, k, v); }
};

template <>
struct Io<c10::BFloat16> {
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
#if !PK_BF16_CVT
  // v rounded to nearest even (as c10::BFloat16 does) in the top 16 bits of each lane; NaN stays NaN (quiet). No
  // denormal reaches here (FTZ in the loops), where the AVX512_BF16 instruction would differ.
  static __m512i round_high(__m512 v) {
    const __m512i b = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(b, _mm512_set1_epi32(0x00400000)));
  }
#endif
  static __m256i narrow(__m512 v) {
#if PK_BF16_CVT
    return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
#else
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_high(v), 16));
#endif
  }
  static __m512 load(const c10::BFloat16* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const c10::BFloat16* p, __mmask16 k) { return widen(_mm256_maskz_loadu_epi16(k, p)); }
  static void store(c10::BFloat16* p, __m512 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  static void store(c10::BFloat16* p, __m512 v, __mmask16 k) { _mm256_mask_storeu_epi16(p, k, narrow(v)); }
  // one 64-byte load; a = the even elements (shifted up), b = the odd ones (already in the top halves)
  static void load2(const c10::BFloat16* p, __m512& a, __m512& b) {
    const __m512i v = _mm512_loadu_si512(p);
    a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static void store2(c10::BFloat16* p, __m512 a, __m512 b) {
#if PK_BF16_CVT
    // [a_0..a_15, b_0..b_15] rounded, then interleaved back into element order
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ab = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
    _mm512_storeu_si512(p, _mm512_permutexvar_epi16(idx, ab));
#else
    const __m512i lo = _mm512_srli_epi32(round_high(a), 16);
    const __m512i hi = _mm512_and_si512(round_high(b), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
    _mm512_storeu_si512(p, _mm512_or_si512(lo, hi));
#endif
  }
};

template <>
struct Io<c10::Half> : Pairs<c10::Half> {
  static __m512 load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 load(const c10::Half* p, __mmask16 k) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }
  static __m256i narrow(__m512 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static void store(c10::Half* p, __m512 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  static void store(c10::Half* p, __m512 v, __mmask16 k) { _mm256_mask_storeu_epi16(p, k, narrow(v)); }
};

// The first n (< 16) elements, the other lanes set to pad.
template <typename T>
__m512 load_tail(const T* p, int64_t n, float pad) {
  const __mmask16 k = first_lanes(n);
  return _mm512_mask_blend_ps(k, _mm512_set1_ps(pad), Io<T>::load(p, k));
}

// ---- exp ---------------------------------------------------------------------------------------------------------
// Floor of the argument: e^-110 is below half the smallest fp32 denormal, so the result rounds to exactly 0 there; the
// loops flush the denormals between about -87.3 and -110 to 0 (FTZ), as the AVX2 exp's mask does below -86.
constexpr float kExpFloor = -110.0f;

// What exp_nonpos is accurate to, per use (measured over every float in [-87.3, 0] against double exp):
// - kUlp: ln2 in two parts, e^r by degree 3: 0.99 ulp (the AVX2 exp of vec_avx2.h: 1.01). The fp32 backward, which
//   runs at the speed of an in-place read+write pass whichever exp it takes.
// - kSum: ln2 rounded to one float, one FMA less: 0.97 ulp on [-1, 0], 1.25 on [-10, 0], 4.5 at -87 (the one-float ln2
//   is off by 1.9e-9, times |v| <= 126), and at most 5.8e-8 absolute everywhere, as kUlp: the forward, whose sums are
//   >= 1 (the row max adds e^0) and cannot tell the two apart.
// - k16Bit: kSum with e^r by degree 2, one FMA less again: relative error <= 7.4e-7, over 600x below the rounding of
//   the result to fp16 (up to 2^-11) and 5000x below bf16 (2^-8). The backward of bf16 / fp16 data, bound by arithmetic.
// e^0 = 1 exactly in all three.
enum class ExpAccuracy { kUlp, kSum, k16Bit };

// e^d for d <= 0 (d may be -inf; NaN gives NaN); dc receives max(d, kExpFloor), finite, for the e * d terms.
// d = (k + j/16) ln2 + r, |r| <= ln2/32: e^d = 2^k 2^(j/16) e^r, 2^(j/16) from a 16-entry table held in a register
// (vpermps), e^r - 1 by a polynomial (least-max-error coefficients on that interval: degree 3, error 1.6e-9; degree 2,
// 4.3e-7), 2^k by vscalefps. 11 (kUlp), 10 (kSum) or 9 (k16Bit) vector operations per 16 lanes.
template <ExpAccuracy kAcc>
inline __m512 exp_nonpos(__m512 d, __m512& dc) {
  const __m512 table = _mm512_setr_ps(0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f,
                                      0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f,
                                      0x1.8ace54p+0f, 0x1.9c4918p+0f, 0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f,
                                      0x1.ea4afap+0f);
  dc = _mm512_max_ps(_mm512_set1_ps(kExpFloor), d);  // NaN in d: the second operand, NaN
  // v = k + j/16 = d / ln2 rounded to a multiple of 1/16 by the 1.5 * 2^19 shifter (whose ulp is 1/16): j sits in
  // the low 4 bits of t; vscalefps takes floor(v) = k itself
  const __m512 shifter = _mm512_set1_ps(786432.0f);
  const __m512 t = _mm512_fmadd_ps(dc, _mm512_set1_ps(1.44269504088896341f), shifter);
  const __m512 v = _mm512_sub_ps(t, shifter);
  __m512 r, q;
  if constexpr (kAcc == ExpAccuracy::kUlp) {
    r = _mm512_fnmadd_ps(v, _mm512_set1_ps(0x1.63p-1f), dc);  // ln2 in two parts: v * hi is exact
    r = _mm512_fnmadd_ps(v, _mm512_set1_ps(-0x1.bd0106p-13f), r);
  } else {
    r = _mm512_fnmadd_ps(v, _mm512_set1_ps(0x1.62e430p-1f), dc);
  }
  if constexpr (kAcc == ExpAccuracy::k16Bit) {  // e^r - 1
    q = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.fffff6p-2f), r, _mm512_set1_ps(0x1.0003d6p+0f)), r);
  } else {
    q = _mm512_fmadd_ps(_mm512_set1_ps(0x1.55573ep-3f), r, _mm512_set1_ps(0x1.00022p-1f));
    q = _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r);
  }
  const __m512 s = _mm512_permutexvar_ps(_mm512_castps_si512(t), table);
  return _mm512_scalef_ps(_mm512_fmadd_ps(s, q, s), v);  // 2^k (2^(j/16) e^r)
}

// ---- the row loops -------------------------------------------------------------------------------------------

// Touch the cache lines of `bytes` bytes at p (a hint: never faults, even past the end of the buffer).
template <int bytes>
inline void prefetch(const void* p) {
  for (int b = 0; b < bytes; b += 64) _mm_prefetch(static_cast<const char*>(p) + b, _MM_HINT_T0);
}

// d = z - m (or z - lse) with z = x / T rounded first (no fmsub), as m was: the max element gives d = 0 and e = 1
// exactly. At T = 1 (the common case) the multiply is skipped: it would be exact.
template <bool kScaled>
inline __m512 shifted(__m512 x, __m512 vinv, __m512 vm) {
  return _mm512_sub_ps(kScaled ? _mm512_mul_ps(x, vinv) : x, vm);
}

// One vector of the forward's sums: s0 += e^d, s1 += e^d * d.
template <bool kScaled>
inline void accumulate(__m512 x, __m512 vinv, __m512 vm, __m512& s0, __m512& s1) {
  __m512 dc;
  const __m512 e = exp_nonpos<ExpAccuracy::kSum>(shifted<kScaled>(x, vinv, vm), dc);
  s0 = _mm512_add_ps(s0, e);
  s1 = _mm512_fmadd_ps(e, dc, s1);
}

// The max of p[0, len), len <= kTile, and `vmax`; the tail padded with -inf.
template <typename T>
inline float tile_max(const T* p, int64_t len, __m512 vmax) {
  const int64_t full = len - len % kLanes;
  __m512 vmax2 = vmax;
  int64_t j = 0;
  for (; j + 2 * kLanes <= full; j += 2 * kLanes) {
    __m512 a, b;
    Io<T>::load2(p + j, a, b);
    vmax = _mm512_max_ps(vmax, a);
    vmax2 = _mm512_max_ps(vmax2, b);
  }
  for (; j < full; j += kLanes) vmax = _mm512_max_ps(vmax, Io<T>::load(p + j));
  if (full < len) vmax = _mm512_max_ps(vmax, load_tail(p + full, len - full, -std::numeric_limits<float>::infinity()));
  return _mm512_reduce_max_ps(_mm512_max_ps(vmax, vmax2));
}

// How far ahead the loops prefetch: two fp32 tiles; the hardware prefetcher does not see this far.
constexpr int64_t kPrefetchBytes = 16384;

// Forward over one row, tile by tile as in rows.h: the tile's max, then one exp per element with the tile in L1,
// kUnroll independent vectors per step (the exp is a long dependency chain; more of them in flight keep the FMA
// units busy); the tiles ahead are prefetched. The next tile's max: for 16-bit data (bound by arithmetic) inside this
// tile's exp loop, its loads from memory overlapping the exps (10% faster than a separate pass); for fp32 (bound by
// memory) in a pass of its own after the loop, whose back-to-back loads keep more misses in flight (20% faster than
// interleaved; both measured streaming 2048 x 49152 logits on the 2-core EPYC).
template <typename T, bool kScaled>
void fwd_tiles(const T* row, int64_t V, float inv_t, Online<float>& st) {
  constexpr int kUnroll = 4, kStep = kUnroll * kLanes;
  constexpr bool kMaxAhead = sizeof(T) < sizeof(float);
  const float ninf = -std::numeric_limits<float>::infinity();
  const __m512 vinv = _mm512_set1_ps(inv_t);
  float tmax = tile_max(row, std::min(kTile, V), _mm512_set1_ps(ninf));
  for (int64_t start = 0; start < V; start += kTile) {
    const int64_t len = std::min(kTile, V - start);  // == kTile (a multiple of kStep) whenever a next tile exists
    const int64_t full = len - len % kLanes;
    const T* p = row + start;
    st.rebase(std::max(st.m, tmax * inv_t));  // x -> x / T is monotonic, so max(x) / T = max(x / T)
    const __m512 vm = _mm512_set1_ps(st.ref());
    const T* next = p + kTile;
    const int64_t next_len = std::clamp<int64_t>(V - start - kTile, 0, kTile);
    const int64_t next_steps = kMaxAhead ? next_len - next_len % kStep : 0;  // the part maxed in the loop below
    __m512 nmax = _mm512_set1_ps(ninf), nmax2 = nmax;
    __m512 s0[kUnroll], s1[kUnroll];
    for (int u = 0; u < kUnroll; ++u) s0[u] = s1[u] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + kStep <= full; j += kStep) {
      prefetch<kStep * sizeof(T)>(p + j + kPrefetchBytes / sizeof(T));
      if (j < next_steps) {
        for (int u = 0; u < kUnroll; u += 2) {
          __m512 a, b;
          Io<T>::load2(next + j + u * kLanes, a, b);
          nmax = _mm512_max_ps(nmax, a);
          nmax2 = _mm512_max_ps(nmax2, b);
        }
      }
      for (int u = 0; u < kUnroll; u += 2) {
        __m512 a, b;
        Io<T>::load2(p + j + u * kLanes, a, b);
        accumulate<kScaled>(a, vinv, vm, s0[u], s1[u]);
        accumulate<kScaled>(b, vinv, vm, s0[u + 1], s1[u + 1]);
      }
    }
    for (int u = 0; j < full; j += kLanes, ++u) accumulate<kScaled>(Io<T>::load(p + j), vinv, vm, s0[u], s1[u]);
    if (full < len) accumulate<kScaled>(load_tail(p + full, len - full, ninf), vinv, vm, s0[kUnroll - 1], s1[kUnroll - 1]);
    for (int u = 1; u < kUnroll; ++u) {
      s0[0] = _mm512_add_ps(s0[0], s0[u]);
      s1[0] = _mm512_add_ps(s1[0], s1[u]);
    }
    st.s0 += _mm512_reduce_add_ps(s0[0]);
    st.s1 += _mm512_reduce_add_ps(s1[0]);
    if (next_len > 0) tmax = tile_max(next + next_steps, next_len - next_steps, _mm512_max_ps(nmax, nmax2));
  }
}

template <typename T>
void fwd_row(const T* row, int64_t V, float inv_t, Online<float>& st) {
  return inv_t == 1.0f ? fwd_tiles<T, false>(row, V, inv_t, st) : fwd_tiles<T, true>(row, V, inv_t, st);
}

// dlogits_j = p_j (c0 - ge d_j), d_j = z_j - lse (RowGrad in rows.h). Each vector is loaded before it is stored, so
// out == x (in-place backward) is safe; the tail is a masked load and store inside the row. fp32 runs at the speed of
// an in-place read+write pass whichever exp; 16-bit data is bound by the arithmetic, and takes the cheapest exp.
template <typename T, bool kScaled>
void bwd_loop(const T* x, T* out, int64_t V, const RowGrad<float>& g) {
  const __m512 vinv = _mm512_set1_ps(g.inv_t), vlse = _mm512_set1_ps(g.lse);
  const __m512 vc0 = _mm512_set1_ps(g.c0), vge = _mm512_set1_ps(g.ge);
  const int64_t full = V - V % kLanes;
  constexpr ExpAccuracy kAcc = sizeof(T) == sizeof(float) ? ExpAccuracy::kUlp : ExpAccuracy::k16Bit;
  const auto grad = [&](__m512 xv) {
    __m512 dc;
    const __m512 p = exp_nonpos<kAcc>(shifted<kScaled>(xv, vinv, vlse), dc);
    return _mm512_mul_ps(p, _mm512_fnmadd_ps(vge, dc, vc0));
  };
  int64_t j = 0;
  for (; j + 2 * kLanes <= full; j += 2 * kLanes) {
    prefetch<2 * kLanes * sizeof(T)>(x + j + kPrefetchBytes / sizeof(T));
    __m512 a, b;
    Io<T>::load2(x + j, a, b);
    Io<T>::store2(out + j, grad(a), grad(b));
  }
  if (j < full) Io<T>::store(out + j, grad(Io<T>::load(x + j)));
  if (full < V) {
    const __m512 xt = load_tail(x + full, V - full, -std::numeric_limits<float>::infinity());
    Io<T>::store(out + full, grad(xt), first_lanes(V - full));
  }
}

template <typename T>
void bwd_row(const T* x, T* out, int64_t V, const RowGrad<float>& g) {
  return g.inv_t == 1.0f ? bwd_loop<T, false>(x, out, V, g) : bwd_loop<T, true>(x, out, V, g);
}
