// Run-time choice of the kernels' inner loops: cpuid through __builtin_cpu_supports (which also checks that the OS
// saves the wider registers), or the name the caller gives (PREPO_CPU_CAPABILITY, for tests and benchmarks).
#include "cpu_capability.h"

#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace pk {
namespace {

constexpr Capability kAll[] = {Capability::kAvx512Bf16, Capability::kAvx512, Capability::kAvx2,
                               Capability::kScalar};

bool cpu_supports(Capability c) {
  switch (c) {
    case Capability::kScalar:
      return true;
#ifdef PK_HAVE_AVX2
    case Capability::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
#ifdef PK_HAVE_AVX512
    case Capability::kAvx512:
      return cpu_supports(Capability::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
    case Capability::kAvx512Bf16:
      return cpu_supports(Capability::kAvx512) && __builtin_cpu_supports("avx512bf16");
#endif
    default:
      return false;
  }
}

// Detected once: cpuid does not change while the process runs.
Capability best() {
  static const Capability b = [] {
    for (Capability c : kAll)
      if (cpu_supports(c)) return c;
    return Capability::kScalar;
  }();
  return b;
}

}  // namespace

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512Bf16:
      return "avx512_bf16";
    case Capability::kAvx512:
      return "avx512";
    case Capability::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> names;
  for (Capability c : kAll)
    if (cpu_supports(c)) names.emplace_back(capability_name(c));
  return names;
}

Capability resolve_capability(const std::string& name) {
  if (name.empty() || name == "auto") return best();
  for (Capability c : kAll) {
    if (name != capability_name(c)) continue;
    TORCH_CHECK(cpu_supports(c), "PREPO_CPU_CAPABILITY=", name, ": this CPU (or this build of prepo_kernels._C) lacks ",
                name == "avx2" ? "avx2/fma/f16c" : name == "avx512" ? "avx512f/bw/vl/dq" : "avx512f/bw/vl/dq + avx512_bf16",
                "; it supports ", capability_name(best()), " and below");
    return c;
  }
  TORCH_CHECK_VALUE(false, "PREPO_CPU_CAPABILITY must be one of auto, avx512_bf16, avx512, avx2, scalar; got '", name,
                    "'");
}

}  // namespace pk
