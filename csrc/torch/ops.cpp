// The one place that registers dispatcher ops: schemas of the rnnkernels_cpp namespace and their
// CPU implementations, the public functions of include/rnnkernels/. (The Python side owns the
// `rnnkernels` namespace; two libraries defining one namespace abort the process, hence a
// distinct one.) Fakes and autograd live in Python.
#include <rnnkernels/rnnkernels.h>

#include <torch/library.h>

TORCH_LIBRARY(rnnkernels_cpp, m) {
  m.def(
      "lstm_fwd(Tensor gx, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, "
      "bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_bwd(Tensor grad_y, Tensor grad_hT, Tensor grad_cT, Tensor w_hh, Tensor? w_hr, "
      "Tensor h0, Tensor c0, Tensor? lengths, bool reverse, Tensor y, Tensor gates, "
      "Tensor cells) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_fwd(Tensor gx, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, bool reverse) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_bwd(Tensor grad_y, Tensor grad_hT, Tensor w_hh, Tensor? b_hh, Tensor h0, "
      "Tensor? lengths, bool reverse, Tensor y, Tensor gates, Tensor hn) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "indrnn_fwd(Tensor gx, Tensor u, Tensor h0, Tensor? lengths, bool reverse, "
      "str nonlinearity) -> (Tensor, Tensor)");
  m.def(
      "indrnn_bwd(Tensor grad_y, Tensor grad_hT, Tensor u, Tensor h0, Tensor? lengths, "
      "bool reverse, str nonlinearity, Tensor y) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkernels_cpp, CPU, m) {
  m.impl("lstm_fwd", &rnnkernels::lstm_fwd);
  m.impl("lstm_bwd", &rnnkernels::lstm_bwd);
  m.impl("gru_fwd", &rnnkernels::gru_fwd);
  m.impl("gru_bwd", &rnnkernels::gru_bwd);
  m.impl("indrnn_fwd", &rnnkernels::indrnn_fwd);
  m.impl("indrnn_bwd", &rnnkernels::indrnn_bwd);
}
