// Declarations of the CPU log-prob / entropy kernels exported by prepo_kernels._C (see logprobs_entropy.cpp).
// Signatures follow the backend contract in prepo_kernels/logprobs_entropy_torch.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace pk {

// `capability` in both ops: "" (the best this CPU has) or a name for cpu_capability.h's resolve_capability.

// logits [N, V] (fp32/bf16/fp16/fp64, unit stride along V), targets [N] int64 -> {lp, ent, lse, ez}, [N] each,
// float32 (float64 for fp64 logits, computed in double). Rows without a finite lse: NaN (see rows.h, Online::finish).
std::vector<at::Tensor> logprobs_entropy_fwd(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                             int64_t ignore_index, const std::string& capability);

// Writes d(sum g_lp * lp + g_ent * ent)/d logits into out (logits' shape and dtype; may be logits itself); the
// vectors have the forward's output dtype. Rows with a non-finite lse get NaN, ignored rows 0.
void logprobs_entropy_bwd(const at::Tensor& grad_lp, const at::Tensor& grad_ent, const at::Tensor& logits,
                          const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& ez, double temperature,
                          int64_t ignore_index, at::Tensor out, const std::string& capability);

// The loops that `capability` runs on this CPU: "avx512_bf16", "avx512", "avx2" or "scalar" (errors as the ops').
std::string cpu_capability(const std::string& capability);

}  // namespace pk
