// CPU forward and backward of the fused log-prob / entropy op: tensor checks, dtype dispatch, threads across rows.
// The math is in rows.h; the contract (shapes, outputs, ignore_index) is that of prepo_kernels/logprobs_entropy_torch.py.
#include "logprobs_entropy.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cpu_capability.h"
#include "rows.h"

namespace pk {
namespace {

// Rows per task: enough elements per task that the scheduling cost vanishes, one row when rows are long.
int64_t grain_rows(int64_t V) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(V, 1)); }

// Rows may overlap in what is only read (expanded logits have stride(0) = 0); never in what is written.
void check_logits(const at::Tensor& logits, const char* name, bool written) {
  TORCH_CHECK_VALUE(logits.device().is_cpu(), name, " must be a CPU tensor, got ", logits.device());
  TORCH_CHECK_VALUE(logits.dim() == 2, name, " must be 2-D [N, V], got ", logits.dim(), " dims");
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                       logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kDouble,
                   name, " must be float32, bfloat16, float16 or float64, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) > 0, name, " has an empty vocabulary dimension (V = 0)");
  TORCH_CHECK_VALUE(logits.size(1) == 1 || logits.stride(1) == 1, name,
                    " must have unit stride along V, got stride ", logits.stride(1));
  TORCH_CHECK_VALUE(!written || logits.size(0) <= 1 || logits.stride(0) >= logits.size(1), name,
                    " rows must not overlap (stride(0) >= V), got stride ", logits.stride(0));
}

void check_row_vector(const at::Tensor& t, int64_t N, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == N, name, " must have shape [", N, "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

// Targets outside [0, V) that are not ignore_index would be read out of range: refuse them before any thread runs.
void check_targets(const at::Tensor& targets, int64_t N, int64_t V, int64_t ignore_index) {
  check_row_vector(targets, N, at::kLong, "targets");
  const int64_t* t = targets.const_data_ptr<int64_t>();
  const int64_t ts = targets.stride(0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t y = t[i * ts];
    TORCH_CHECK_VALUE(y == ignore_index || (y >= 0 && y < V), "targets has value ", y, " at row ", i,
                      " outside [0, ", V, ") that is not ignore_index=", ignore_index);
  }
}

// 1 / T, in the compute type C of the rows.
template <typename C>
C checked_inv_temperature(double temperature) {
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0.0, "temperature must be finite and > 0, got ",
                    temperature);
  return static_cast<C>(1.0 / temperature);
}

// The dtype of lp / ent / lse / ez and of the upstream gradients: float64 for float64 logits, else float32.
at::ScalarType compute_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// f(T()) for the element type T of the logits (checked by check_logits to be one of these four).
template <typename F>
void with_dtype(at::ScalarType type, const F& f) {
  switch (type) {
    case at::kFloat:
      return f(float());
    case at::kDouble:
      return f(double());
    case at::kBFloat16:
      return f(c10::BFloat16());
    default:
      return f(c10::Half());
  }
}

// fn(i) for every row i, rows split across the OpenMP threads of ATen's pool, denormals flushed in the loops.
template <typename F>
void for_each_row(int64_t N, int64_t V, const F& fn) {
  at::parallel_for(0, N, grain_rows(V), [&](int64_t begin, int64_t end) {
#ifdef PK_HAVE_AVX2
    avx2::FlushDenormals ftz;
#endif
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

template <typename T, typename C = typename Acc<T>::type>
void forward_rows(const at::Tensor& logits, const at::Tensor& targets, double temperature, int64_t ignore_index,
                  Capability cap, std::vector<at::Tensor>& outs) {
  const C inv_t = checked_inv_temperature<C>(temperature);
  const int64_t V = logits.size(1), rs = logits.stride(0), ts = targets.stride(0);
  const T* base = logits.const_data_ptr<T>();
  const int64_t* tg = targets.const_data_ptr<int64_t>();
  C* lp = outs[0].mutable_data_ptr<C>();
  C* ent = outs[1].mutable_data_ptr<C>();
  C* lse = outs[2].mutable_data_ptr<C>();
  C* ez = outs[3].mutable_data_ptr<C>();
  for_each_row(logits.size(0), V, [&](int64_t i) {
    const T* row = base + i * rs;  // int64 offsets: N * V exceeds 2^31 at 32k x 152k
    Online<C> st;
    forward_row<T>(row, V, inv_t, st, cap);
    const int64_t y = tg[i * ts];
    const bool ignored = y == ignore_index;
    const C z_t = ignored ? C(0) : static_cast<C>(row[y]) * inv_t;  // never gather at ignore_index
    const RowOut<C> o = st.finish(z_t, ignored);
    lp[i] = o.lp;
    ent[i] = o.ent;
    lse[i] = o.lse;
    ez[i] = o.ez;
  });
}

template <typename T, typename C = typename Acc<T>::type>
void backward_rows(const at::Tensor& grad_lp, const at::Tensor& grad_ent, const at::Tensor& logits,
                   const at::Tensor& targets, const at::Tensor& lse_t, const at::Tensor& ez_t, double temperature,
                   int64_t ignore_index, Capability cap, at::Tensor& out) {
  const C inv_t = checked_inv_temperature<C>(temperature);
  const C* g_lp = grad_lp.const_data_ptr<C>();
  const C* g_ent = grad_ent.const_data_ptr<C>();
  const C* lse = lse_t.const_data_ptr<C>();
  const C* ez = ez_t.const_data_ptr<C>();
  const int64_t V = logits.size(1), rs = logits.stride(0), os = out.stride(0), ts = targets.stride(0);
  const T* base = logits.const_data_ptr<T>();
  T* obase = out.mutable_data_ptr<T>();
  const int64_t* tg = targets.const_data_ptr<int64_t>();
  for_each_row(logits.size(0), V, [&](int64_t i) {
    const T* x = base + i * rs;
    T* o = obase + i * os;
    const int64_t y = tg[i * ts];
    if (y == ignore_index) {
      std::memset(static_cast<void*>(o), 0, static_cast<size_t>(V) * sizeof(T));  // +0.0 in every dtype
      return;
    }
    if (!std::isfinite(lse[i])) {  // a flagged row (NON_FINITE_ROWS): its gradient is NaN, whatever the upstream
      std::fill(o, o + V, static_cast<T>(std::numeric_limits<C>::quiet_NaN()));
      return;
    }
    const RowGrad<C> g(g_lp[i], g_ent[i], lse[i], ez[i], inv_t);
    // read the target logit before the row is overwritten (out may be logits itself)
    const double d_target = g.target_value(static_cast<C>(x[y]));
    backward_row<T>(x, o, V, g, cap);
    o[y] = static_cast<T>(static_cast<C>(d_target));
  });
}

}  // namespace

std::vector<at::Tensor> logprobs_entropy_fwd(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                             int64_t ignore_index, const std::string& capability) {
  const Capability cap = resolve_capability(capability);
  check_logits(logits, "logits", false);
  const int64_t N = logits.size(0), V = logits.size(1);
  check_targets(targets, N, V, ignore_index);
  checked_inv_temperature<double>(temperature);
  auto opts = logits.options().dtype(compute_type(logits));
  std::vector<at::Tensor> outs;
  for (int k = 0; k < 4; ++k) outs.push_back(at::empty({N}, opts));
  with_dtype(logits.scalar_type(), [&](auto tag) {
    forward_rows<decltype(tag)>(logits, targets, temperature, ignore_index, cap, outs);
  });
  return outs;
}

void logprobs_entropy_bwd(const at::Tensor& grad_lp, const at::Tensor& grad_ent, const at::Tensor& logits,
                          const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& ez, double temperature,
                          int64_t ignore_index, at::Tensor out, const std::string& capability) {
  const Capability cap = resolve_capability(capability);
  check_logits(logits, "logits", false);
  check_logits(out, "out", true);
  const int64_t N = logits.size(0), V = logits.size(1);
  TORCH_CHECK_VALUE(out.sizes() == logits.sizes(), "out must have the shape of logits ", logits.sizes(), ", got ",
                    out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == logits.scalar_type(), "out must have the dtype of logits (",
                   logits.scalar_type(), "), got ", out.scalar_type());
  const auto overlap = at::get_overlap_status(out, logits);
  TORCH_CHECK_VALUE(overlap == at::MemOverlapStatus::No ||
                        (overlap == at::MemOverlapStatus::Full && out.strides() == logits.strides()),
                    "out must be logits itself or not overlap it");
  check_targets(targets, N, V, ignore_index);
  const char* names[4] = {"grad_lp", "grad_ent", "lse", "ez"};
  const at::Tensor* vecs[4] = {&grad_lp, &grad_ent, &lse, &ez};
  for (int k = 0; k < 4; ++k) {
    check_row_vector(*vecs[k], N, compute_type(logits), names[k]);
    TORCH_CHECK_VALUE(vecs[k]->is_contiguous(), names[k], " must be contiguous");
  }
  checked_inv_temperature<double>(temperature);
  with_dtype(logits.scalar_type(), [&](auto tag) {
    backward_rows<decltype(tag)>(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, cap, out);
  });
}

std::string cpu_capability(const std::string& capability) { return capability_name(resolve_capability(capability)); }

}  // namespace pk
