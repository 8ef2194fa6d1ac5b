// rnnkernels LSTM layer kernels: public C++ API (CPU, fp32/fp64/bf16/fp16).
//
// One layer, one direction, time-major padded layout, torch's gate order i, f, g, o. Step:
//   [i f g o] = gx_t + h_{t-1} W_hh^T;  i, f, o = sigmoid;  g = tanh
//   c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t);  with projection h_t = h_t W_hr^T.
// Sequence b is valid for t < lengths[b]; past its end its state is frozen and y is 0.
// reverse=true visits t = T-1 .. 0, so each sequence starts at its own last valid step from h0
// (PackedSequence semantics). R = P with projection, else H. Outputs are freshly allocated.
// bfloat16 / float16: every tensor in that dtype, computed in float (accumulation, state, cell,
// pointwise); gates and cells (saved for the backward) are float, and lstm_bwd takes them so.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rnnkernels {
inline namespace v0 {

// Forward.
//   gx:      [T,B,4H]  input projection x W_ih^T + b_ih + b_hh
//   w_hh:    [4H,R]    recurrent weights
//   w_hr:    [P,H]     projection weights, or nullopt
//   h0:      [B,R]     initial hidden state;  c0: [B,H] initial cell state
//   lengths: [B]       int64 valid steps per sequence, or nullopt (all T valid)
//   reverse: run t = T-1 .. 0
//   save:    keep gates and cells for lstm_bwd; false (inference) returns them as [0,B,4H] and
//            [0,B,H], and the kernel writes one step's in place of T (less memory traffic)
// Returns (y [T,B,R], zero past each sequence's end; hT [B,R]; cT [B,H];
//          gates [T,B,4H], i f g o after their activations, zero past the end;
//          cells [T,B,H], c_t after each step, frozen past the end).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd(
    const at::Tensor& gx, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    bool reverse, bool save = true);

// Backward of lstm_fwd.
//   grad_y: [T,B,R], grad_hT: [B,R], grad_cT: [B,H]   gradients of y, hT, cT
//   w_hh, w_hr, h0, c0, lengths, reverse:            as given to lstm_fwd
//   y, gates, cells:                                 as returned by lstm_fwd
// Returns (d_gx [T,B,4H], zero at invalid steps; d_w_hh [4H,R]; d_w_hr [P,H] or [0] without
// projection; d_h0 [B,R]; d_c0 [B,H]). Bitwise deterministic for a fixed thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_hT, const at::Tensor& grad_cT,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells);

}  // namespace v0
}  // namespace rnnkernels
