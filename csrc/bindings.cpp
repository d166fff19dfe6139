// Python bindings of the CPU kernels: the extension module prepo_kernels._C (loaded by prepo_kernels/logprobs_entropy_native.py).
// Kept apart from the kernels so that only this file pays for the pybind/torch headers (the tensor casters alone:
// a third of the compile time of <torch/extension.h>).
#include <torch/csrc/utils/pybind.h>

#include "logprobs_entropy.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "prepo_kernels C++ CPU kernels: fused per-token log-probs and entropies (OpenMP, AVX2)";
  m.def("logprobs_entropy_fwd", &pk::logprobs_entropy_fwd, "(logits, targets, temperature, ignore_index) -> "
        "(lp, ent, lse, ez)", py::arg("logits"), py::arg("targets"), py::arg("temperature"), py::arg("ignore_index"),
        py::call_guard<py::gil_scoped_release>());
  m.def("logprobs_entropy_bwd", &pk::logprobs_entropy_bwd,
        "(grad_lp, grad_ent, logits, targets, lse, ez, temperature, ignore_index, out): writes the gradient into out",
        py::arg("grad_lp"), py::arg("grad_ent"), py::arg("logits"), py::arg("targets"), py::arg("lse"), py::arg("ez"),
        py::arg("temperature"), py::arg("ignore_index"), py::arg("out"), py::call_guard<py::gil_scoped_release>());
  m.def("cpu_isa", &pk::cpu_isa, "\"avx2\" or \"scalar\": the inner loops in use");
  m.def("set_force_scalar", &pk::set_force_scalar, "tests only: force the portable scalar loops", py::arg("on"));
}
