// Whole-layer calls for C++ users: the input-projection GEMM over all T around each cell's
// kernels. See include/rnnkernels/layer.h for the contract. Only Tensor methods (mm, addmm, sum)
// are used, so no ATen op header beyond <ATen/core/Tensor.h> is needed (compile time).
#include <rnnkernels/layer.h>

#include <rnnkernels/gru.h>
#include <rnnkernels/indrnn.h>
#include <rnnkernels/linear.h>
#include <rnnkernels/lstm.h>
#include <rnnkernels/rnn.h>

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

namespace rnnkernels {
inline namespace v0 {
namespace {

// Checks x [T,B,I] against w_ih [G*H, I]; name is the cell, for messages.
void check_projection(const char* name, const at::Tensor& x, const at::Tensor& w_ih,
                      int64_t gate_rows) {
  TORCH_CHECK(x.dim() == 3, "rnnkernels ", name, "_layer: x must be [T,B,I], got ", x.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == gate_rows && w_ih.size(1) == x.size(2),
              "rnnkernels ", name, "_layer: w_ih must be [", gate_rows, ",", x.size(2),
              "], got ", w_ih.sizes());
}

void check_bias(const char* name, const char* what, const std::optional<at::Tensor>& bias,
                int64_t gate_rows) {
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == gate_rows), "rnnkernels ", name,
              "_layer: ", what, " must be [", gate_rows, "], got ", bias->sizes());
}

// gx [T,B,G] = x W_ih^T + sum of the given biases: one GEMM over all T (linear.h).
at::Tensor project(const at::Tensor& x, const at::Tensor& w_ih,
                   const std::optional<at::Tensor>& bias1,
                   const std::optional<at::Tensor>& bias2) {
  std::optional<at::Tensor> bias;
  if (bias1 && bias2) {
    bias = bias1->add(*bias2);
  } else if (bias1 || bias2) {
    bias = bias1 ? *bias1 : *bias2;
  }
  return linear(x, w_ih, bias);
}

struct ProjectionGrads {
  at::Tensor d_x, d_w_ih, d_bias;  // [T,B,I], [G,I], [G] (undefined unless asked)
};

// Backward of project(): d_gx [T,B,G] -> d_x = d_gx W_ih, d_w_ih = d_gx^T x, d_bias = sum over T,B.
ProjectionGrads project_bwd(const at::Tensor& d_gx, const at::Tensor& x, const at::Tensor& w_ih,
                            bool need_bias) {
  const int64_t T = x.size(0), B = x.size(1);
  const at::Tensor d_gx2 = d_gx.reshape({T * B, d_gx.size(2)});  // [T*B, G]
  ProjectionGrads grads;
  grads.d_x = linear(d_gx, w_ih.t(), std::nullopt);  // d_gx W_ih, W_ih read in place
  grads.d_w_ih = d_gx2.t().mm(x.reshape({T * B, x.size(2)}));
  if (need_bias) grads.d_bias = d_gx2.sum(0);
  return grads;
}

// A missing gradient of a final state is zero.
at::Tensor grad_or_zeros(const std::optional<at::Tensor>& grad, const at::Tensor& like) {
  return grad ? *grad : like.new_zeros(like.sizes());
}

// The forward layers; save=false (the inference calls) keeps no activations (lstm.h, gru.h).
LSTMLayerOutput lstm_layer_run(const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh,
                               const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                               const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
                               bool reverse, bool save) {
  check_projection("lstm", x, w_ih, w_hh.size(0));
  check_bias("lstm", "b_ih", b_ih, w_hh.size(0));
  check_bias("lstm", "b_hh", b_hh, w_hh.size(0));
  auto [y, hT, cT, gates, cells] =
      lstm_fwd(project(x, w_ih, b_ih, b_hh), w_hh, w_hr, h0, c0, lengths, reverse, save);
  return {y, hT, cT, gates, cells};
}

GRULayerOutput gru_layer_run(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                             const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  check_projection("gru", x, w_ih, w_hh.size(0));
  check_bias("gru", "b_ih", b_ih, w_hh.size(0));
  auto [y, hT, gates, hn] =
      gru_fwd(project(x, w_ih, b_ih, std::nullopt), w_hh, b_hh, h0, lengths, reverse, save);
  return {y, hT, gates, hn};
}

}  // namespace

// ---- LSTM

LSTMLayerOutput lstm_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return lstm_layer_run(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, true);
}

LSTMLayerGrads lstm_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT,
    const std::optional<at::Tensor>& grad_cT, const at::Tensor& x, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    bool reverse, const LSTMLayerOutput& out) {
  check_projection("lstm", x, w_ih, w_hh.size(0));
  auto [d_gx, d_w_hh, d_w_hr, d_h0, d_c0] =
      lstm_bwd(grad_y, grad_or_zeros(grad_hT, out.hT), grad_or_zeros(grad_cT, out.cT), w_hh,
               w_hr, h0, c0, lengths, reverse, out.y, out.gates, out.cells);
  ProjectionGrads projection = project_bwd(d_gx, x, w_ih, b_ih || b_hh);
  LSTMLayerGrads grads;
  grads.d_x = projection.d_x;
  grads.d_w_ih = projection.d_w_ih;
  grads.d_w_hh = d_w_hh;
  if (b_ih) grads.d_b_ih = projection.d_bias;
  if (b_hh) grads.d_b_hh = b_ih ? projection.d_bias.clone() : projection.d_bias;  // no aliasing
  if (w_hr) grads.d_w_hr = d_w_hr;
  grads.d_h0 = d_h0;
  grads.d_c0 = d_c0;
  return grads;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  LSTMLayerOutput out =
      lstm_layer_run(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, false);
  return {out.y, out.hT, out.cT};
}

// ---- GRU

GRULayerOutput gru_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse) {
  return gru_layer_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, true);
}

GRULayerGrads gru_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, const GRULayerOutput& out) {
  check_projection("gru", x, w_ih, w_hh.size(0));
  auto [d_gx, d_w_hh, d_b_hh, d_h0] = gru_bwd(grad_y, grad_or_zeros(grad_hT, out.hT), w_hh, b_hh,
                                              h0, lengths, reverse, out.y, out.gates, out.hn);
  ProjectionGrads projection = project_bwd(d_gx, x, w_ih, b_ih.has_value());
  GRULayerGrads grads;
  grads.d_x = projection.d_x;
  grads.d_w_ih = projection.d_w_ih;
  grads.d_w_hh = d_w_hh;
  grads.d_b_ih = projection.d_bias;
  if (b_hh) grads.d_b_hh = d_b_hh;
  grads.d_h0 = d_h0;
  return grads;
}

std::tuple<at::Tensor, at::Tensor> gru_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse) {
  GRULayerOutput out = gru_layer_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, false);
  return {out.y, out.hT};
}

// ---- IndRNN

IndRNNLayerOutput indrnn_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& u,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity) {
  check_projection("indrnn", x, w_ih, u.size(0));
  check_bias("indrnn", "b_ih", b_ih, u.size(0));
  check_bias("indrnn", "b_hh", b_hh, u.size(0));
  auto [y, hT] = indrnn_fwd(project(x, w_ih, b_ih, b_hh), u, h0, lengths, reverse, nonlinearity);
  return {y, hT};
}

IndRNNLayerGrads indrnn_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& u, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity,
    const IndRNNLayerOutput& out) {
  check_projection("indrnn", x, w_ih, u.size(0));
  auto [d_gx, d_u, d_h0] = indrnn_bwd(grad_y, grad_or_zeros(grad_hT, out.hT), u, h0, lengths,
                                      reverse, nonlinearity, out.y);
  ProjectionGrads projection = project_bwd(d_gx, x, w_ih, b_ih || b_hh);
  IndRNNLayerGrads grads;
  grads.d_x = projection.d_x;
  grads.d_w_ih = projection.d_w_ih;
  grads.d_u = d_u;
  if (b_ih) grads.d_b_ih = projection.d_bias;
  if (b_hh) grads.d_b_hh = b_ih ? projection.d_bias.clone() : projection.d_bias;
  grads.d_h0 = d_h0;
  return grads;
}

std::tuple<at::Tensor, at::Tensor> indrnn_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& u,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity) {
  IndRNNLayerOutput out =
      indrnn_layer_fwd(x, w_ih, u, b_ih, b_hh, h0, lengths, reverse, nonlinearity);
  return {out.y, out.hT};
}

// ---- RNN

RNNLayerOutput rnn_layer_fwd(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                             const std::optional<at::Tensor>& lengths, bool reverse,
                             std::string_view nonlinearity) {
  check_projection("rnn", x, w_ih, w_hh.size(0));
  check_bias("rnn", "b_ih", b_ih, w_hh.size(0));
  check_bias("rnn", "b_hh", b_hh, w_hh.size(0));
  auto [y, hT] = rnn_fwd(project(x, w_ih, b_ih, b_hh), w_hh, h0, lengths, reverse, nonlinearity);
  return {y, hT};
}

RNNLayerGrads rnn_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity,
    const RNNLayerOutput& out) {
  check_projection("rnn", x, w_ih, w_hh.size(0));
  auto [d_gx, d_w_hh, d_h0] = rnn_bwd(grad_y, grad_or_zeros(grad_hT, out.hT), w_hh, h0, lengths,
                                      reverse, nonlinearity, out.y);
  ProjectionGrads projection = project_bwd(d_gx, x, w_ih, b_ih || b_hh);
  RNNLayerGrads grads;
  grads.d_x = projection.d_x;
  grads.d_w_ih = projection.d_w_ih;
  grads.d_w_hh = d_w_hh;
  if (b_ih) grads.d_b_ih = projection.d_bias;
  if (b_hh) grads.d_b_hh = b_ih ? projection.d_bias.clone() : projection.d_bias;
  grads.d_h0 = d_h0;
  return grads;
}

std::tuple<at::Tensor, at::Tensor> rnn_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity) {
  RNNLayerOutput out = rnn_layer_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity);
  return {out.y, out.hT};
}

}  // namespace v0
}  // namespace rnnkernels
