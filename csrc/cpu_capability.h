// Which inner loops the CPU kernels run (scalar, AVX2, AVX-512, AVX-512 with the BF16 conversion), chosen at run time
// from cpuid or named by the caller; the build itself targets baseline x86-64, so one binary runs on any such CPU.
#pragma once

#include <string>
#include <vector>

// The vector loops exist on x86-64 with GCC or Clang (per-function targets, __builtin_cpu_supports); AVX-512 needs a
// compiler that knows AVX512_BF16 (GCC 10, Clang 9).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define PK_HAVE_AVX2 1
#if defined(__clang__) ? (__clang_major__ >= 9) : (__GNUC__ >= 10)
#define PK_HAVE_AVX512 1
#endif
#endif

namespace pk {

// In increasing order of preference.
enum class Capability { kScalar, kAvx2, kAvx512, kAvx512Bf16 };

// "scalar", "avx2", "avx512" (avx512f/bw/vl/dq) or "avx512_bf16" (those and AVX512_BF16).
const char* capability_name(Capability c);

// The capabilities this CPU (and this build) supports, best first; "scalar" always.
std::vector<std::string> supported_capabilities();

// "" or "auto": the best this CPU supports; otherwise the one named, with a ValueError for an unknown name and a
// RuntimeError when this CPU or build lacks it. (The name comes from PREPO_CPU_CAPABILITY, read by the Python layer.)
Capability resolve_capability(const std::string& name);

}  // namespace pk
