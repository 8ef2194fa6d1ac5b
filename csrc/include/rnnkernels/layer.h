// rnnkernels whole-layer calls: input projection and recurrence of one layer, one direction, in
// one call, forward and backward (CPU, fp32/fp64). For C++ users of the CMake library; the Python
// package does the same in torch (functional.py).
//
// Parameters are torch's, as nn.LSTM / nn.GRU store them (weight_ih_l0, weight_hh_l0, ...), gate
// orders and equations as in lstm.h, gru.h, indrnn.h, rnn.h. Inputs are time-major: x [T,B,I]. The
// projection gx = x W_ih^T + b_ih (+ b_hh where it folds: LSTM, IndRNN, RNN) is one GEMM over
// all T.
// lengths [B] (int64, or nullopt for all T valid) and reverse mean what they mean for the cells:
// sequence b is valid for t < lengths[b], y is 0 past its end and its state is frozen.
//
// Autograd does not see these calls: *_layer_fwd returns what *_layer_bwd needs, and
// *_layer_bwd returns the gradient of every input. A gradient of a final state may be nullopt
// (zero). Gradients of absent optional inputs are undefined tensors (!t.defined()).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace rnnkernels {
inline namespace v0 {

// ---- LSTM: G = 4 gates (i, f, g, o); R = P with projection w_hr, else H.

struct LSTMLayerOutput {
  at::Tensor y;      // [T,B,R]   output, zero past each sequence's end
  at::Tensor hT;     // [B,R]     hidden state after each sequence's last valid step
  at::Tensor cT;     // [B,H]     cell state after each sequence's last valid step
  at::Tensor gates;  // [T,B,4H]  saved for lstm_layer_bwd
  at::Tensor cells;  // [T,B,H]   saved for lstm_layer_bwd
};

struct LSTMLayerGrads {
  at::Tensor d_x;     // [T,B,I]
  at::Tensor d_w_ih;  // [4H,I]
  at::Tensor d_w_hh;  // [4H,R]
  at::Tensor d_b_ih;  // [4H], undefined without b_ih
  at::Tensor d_b_hh;  // [4H], undefined without b_hh
  at::Tensor d_w_hr;  // [P,H], undefined without w_hr
  at::Tensor d_h0;    // [B,R]
  at::Tensor d_c0;    // [B,H]
};

// Forward.
//   x:       [T,B,I]   input
//   w_ih:    [4H,I]    input weights;  w_hh: [4H,R] recurrent weights
//   b_ih:    [4H]      input bias, or nullopt;  b_hh: [4H] recurrent bias, or nullopt
//   w_hr:    [P,H]     projection weights, or nullopt
//   h0:      [B,R]     initial hidden state;  c0: [B,H] initial cell state
//   lengths: [B]       int64 valid steps per sequence, or nullopt
//   reverse: run t = T-1 .. 0
LSTMLayerOutput lstm_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths, bool reverse);

// Backward of lstm_layer_fwd.
//   grad_y: [T,B,R];  grad_hT: [B,R] or nullopt;  grad_cT: [B,H] or nullopt
//   x ... reverse: as given to lstm_layer_fwd;  out: what it returned
LSTMLayerGrads lstm_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT,
    const std::optional<at::Tensor>& grad_cT, const at::Tensor& x, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    bool reverse, const LSTMLayerOutput& out);

// Inference: lstm_layer_fwd's (y [T,B,R], hT [B,R], cT [B,H]), keeping no activations.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths, bool reverse);

// ---- GRU: G = 3 gates (r, z, n); b_hh stays inside the recurrence (torch's GRU form).

struct GRULayerOutput {
  at::Tensor y;      // [T,B,H]   output, zero past each sequence's end
  at::Tensor hT;     // [B,H]     state after each sequence's last valid step
  at::Tensor gates;  // [T,B,3H]  saved for gru_layer_bwd
  at::Tensor hn;     // [T,B,H]   saved for gru_layer_bwd
};

struct GRULayerGrads {
  at::Tensor d_x;     // [T,B,I]
  at::Tensor d_w_ih;  // [3H,I]
  at::Tensor d_w_hh;  // [3H,H]
  at::Tensor d_b_ih;  // [3H], undefined without b_ih
  at::Tensor d_b_hh;  // [3H], undefined without b_hh
  at::Tensor d_h0;    // [B,H]
};

// Forward.
//   x: [T,B,I];  w_ih: [3H,I];  w_hh: [3H,H];  b_ih, b_hh: [3H] or nullopt;  h0: [B,H]
//   lengths: [B] int64 or nullopt;  reverse: run t = T-1 .. 0
GRULayerOutput gru_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse);

// Backward of gru_layer_fwd.
//   grad_y: [T,B,H];  grad_hT: [B,H] or nullopt
//   x ... reverse: as given to gru_layer_fwd;  out: what it returned
GRULayerGrads gru_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, const GRULayerOutput& out);

// Inference: gru_layer_fwd's (y [T,B,H], hT [B,H]), keeping no activations.
std::tuple<at::Tensor, at::Tensor> gru_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse);

// ---- IndRNN: h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1}), act "relu" or "tanh".

struct IndRNNLayerOutput {
  at::Tensor y;   // [T,B,H]  output, zero past each sequence's end (also saved for the backward)
  at::Tensor hT;  // [B,H]    state after each sequence's last valid step
};

struct IndRNNLayerGrads {
  at::Tensor d_x;     // [T,B,I]
  at::Tensor d_w_ih;  // [H,I]
  at::Tensor d_u;     // [H]
  at::Tensor d_b_ih;  // [H], undefined without b_ih
  at::Tensor d_b_hh;  // [H], undefined without b_hh
  at::Tensor d_h0;    // [B,H]
};

// Forward.
//   x: [T,B,I];  w_ih: [H,I];  u: [H] recurrent weights (weight_hh);  b_ih, b_hh: [H] or nullopt
//   h0: [B,H];  lengths: [B] int64 or nullopt;  reverse: run t = T-1 .. 0
//   nonlinearity: "relu" or "tanh"
IndRNNLayerOutput indrnn_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& u,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity);

// Backward of indrnn_layer_fwd.
//   grad_y: [T,B,H];  grad_hT: [B,H] or nullopt
//   x ... nonlinearity: as given to indrnn_layer_fwd;  out: what it returned
IndRNNLayerGrads indrnn_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& u, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity,
    const IndRNNLayerOutput& out);

// Inference: indrnn_layer_fwd's (y [T,B,H], hT [B,H]).
std::tuple<at::Tensor, at::Tensor> indrnn_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& u,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity);

// ---- RNN (Elman, nn.RNN): G = 1; act = tanh or relu.

struct RNNLayerOutput {
  at::Tensor y;   // [T,B,H]  output, zero past each sequence's end (also saved for the backward)
  at::Tensor hT;  // [B,H]    state after each sequence's last valid step
};

struct RNNLayerGrads {
  at::Tensor d_x;     // [T,B,I]
  at::Tensor d_w_ih;  // [H,I]
  at::Tensor d_w_hh;  // [H,H]
  at::Tensor d_b_ih;  // [H], undefined without b_ih
  at::Tensor d_b_hh;  // [H], undefined without b_hh
  at::Tensor d_h0;    // [B,H]
};

// Forward.
//   x: [T,B,I];  w_ih: [H,I];  w_hh: [H,H];  b_ih, b_hh: [H] or nullopt
//   h0: [B,H];  lengths: [B] int64 or nullopt;  reverse: run t = T-1 .. 0
//   nonlinearity: "tanh" or "relu"
RNNLayerOutput rnn_layer_fwd(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                             const std::optional<at::Tensor>& lengths, bool reverse,
                             std::string_view nonlinearity);

// Backward of rnn_layer_fwd.
//   grad_y: [T,B,H];  grad_hT: [B,H] or nullopt
//   x ... nonlinearity: as given to rnn_layer_fwd;  out: what it returned
RNNLayerGrads rnn_layer_bwd(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_hT, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity,
    const RNNLayerOutput& out);

// Inference: rnn_layer_fwd's (y [T,B,H], hT [B,H]).
std::tuple<at::Tensor, at::Tensor> rnn_layer(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity);

}  // namespace v0
}  // namespace rnnkernels
