// The AVX-512 loops (rows_avx512.h) compiled twice, as ATen builds one kernel file per CPU capability: in namespace
// avx512 for avx512f/bw/vl/dq, in avx512_bf16 with AVX512_BF16 too. Only these functions get the wider targets.
#include "cpu_capability.h"

#ifdef PK_HAVE_AVX512
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "rows.h"

// Every function defined between a push and its pop gets the target (GCC pragma; Clang's equivalent attribute push).
// The headers above stay outside: their inline functions are baseline x86-64 code wherever the linker picks them.
#define PK_INSTANTIATE(T)                                                                \
  template void fwd_row<T>(const T* row, int64_t V, float inv_t, Online<float>& st);     \
  template void bwd_row<T>(const T* x, T* out, int64_t V, const RowGrad<float>& g);

// GCC 12 warns that the `undefined` pass-through operand inside its own AVX-512 intrinsics is (or may be)
// uninitialized (GCC bug 105593, fixed in 12.3): a false positive in every unmasked _mm512 call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#endif
namespace pk {
namespace avx512 {
#define PK_BF16_CVT 0
#include "rows_avx512.h"
#undef PK_BF16_CVT
PK_INSTANTIATE(float)
PK_INSTANTIATE(c10::BFloat16)
PK_INSTANTIATE(c10::Half)
}  // namespace avx512
}  // namespace pk
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#endif
namespace pk {
namespace avx512_bf16 {
#define PK_BF16_CVT 1
#include "rows_avx512.h"
#undef PK_BF16_CVT
PK_INSTANTIATE(c10::BFloat16)
}  // namespace avx512_bf16
}  // namespace pk
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif

#endif  // PK_HAVE_AVX512
