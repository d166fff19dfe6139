// Python bindings of the CPU kernels: the extension module prepo_kernels._C (loaded by prepo_kernels/logprobs_entropy_native.py).
// Kept apart from the kernels so that only this file pays for the pybind/torch headers (the tensor casters alone:
// a third of the compile time of <torch/extension.h>).
#include <torch/csrc/utils/pybind.h>

#include "cpu_capability.h"
#include "logprobs_entropy.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "prepo_kernels C++ CPU kernels: fused per-token log-probs and entropies (OpenMP; AVX-512, AVX2 or "
            "scalar loops, chosen at run time)";
  m.def("logprobs_entropy_fwd", &pk::logprobs_entropy_fwd, "(logits, targets, temperature, ignore_index) -> "
        "(lp, ent, lse, ez)", py::arg("logits"), py::arg("targets"), py::arg("temperature"), py::arg("ignore_index"),
        py::arg("capability") = "", py::call_guard<py::gil_scoped_release>());
  m.def("logprobs_entropy_bwd", &pk::logprobs_entropy_bwd,
        "(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, out): writes the gradient into out",
        py::arg("grad_lp"), py::arg("grad_ent"), py::arg("logits"), py::arg("targets"), py::arg("lse"), py::arg("ez"),
        py::arg("temperature"), py::arg("ignore_index"), py::arg("out"), py::arg("capability") = "",
        py::call_guard<py::gil_scoped_release>());
  m.def("cpu_capability", &pk::cpu_capability, "(capability=\"\") -> the loops it selects: \"avx512_bf16\", "
        "\"avx512\", \"avx2\" or \"scalar\"", py::arg("capability") = "");
  m.def("supported_capabilities", &pk::supported_capabilities, "the capabilities this CPU supports, best first");
}
