// The one place that registers dispatcher ops: schemas of the rnnkernels_cpp namespace and their
// CPU implementations. (The Python side owns the `rnnkernels` namespace; two libraries defining
// the same namespace abort the process, hence a distinct one.) Fakes/autograd live in Python.
#include <rnnkernels/indrnn.h>

#include <torch/library.h>

namespace {

std::tuple<at::Tensor, at::Tensor> indrnn_fwd_cpu(const at::Tensor& gx, const at::Tensor& u,
                                                  const at::Tensor& h0,
                                                  const std::optional<at::Tensor>& lengths,
                                                  bool reverse, c10::string_view nonlinearity) {
  return rnnkernels::indrnn_fwd(gx, u, h0, lengths, reverse, nonlinearity);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> indrnn_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hT, const at::Tensor& u,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    c10::string_view nonlinearity, const at::Tensor& y) {
  return rnnkernels::indrnn_bwd(grad_y, grad_hT, u, h0, lengths, reverse, nonlinearity, y);
}

}  // namespace

TORCH_LIBRARY(rnnkernels_cpp, m) {
  m.def(
      "indrnn_fwd(Tensor gx, Tensor u, Tensor h0, Tensor? lengths, bool reverse, "
      "str nonlinearity) -> (Tensor, Tensor)");
  m.def(
      "indrnn_bwd(Tensor grad_y, Tensor grad_hT, Tensor u, Tensor h0, Tensor? lengths, "
      "bool reverse, str nonlinearity, Tensor y) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkernels_cpp, CPU, m) {
  m.impl("indrnn_fwd", &indrnn_fwd_cpu);
  m.impl("indrnn_bwd", &indrnn_bwd_cpu);
}
