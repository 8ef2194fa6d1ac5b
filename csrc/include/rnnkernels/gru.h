// rnnkernels GRU layer kernels: public C++ API (CPU, fp32/fp64/bf16/fp16).
//
// One layer, one direction, time-major padded layout, torch's gate order r, z, n and its
// "linear before reset" form (b_hn inside r * (...)). Step:
//   [gh_r gh_z gh_n] = h_{t-1} W_hh^T + b_hh
//   r = sigmoid(gx_r + gh_r);  z = sigmoid(gx_z + gh_z);  n = tanh(gx_n + r * gh_n)
//   h_t = (1 - z) * n + z * h_{t-1}
// Sequence b is valid for t < lengths[b]; past its end its state is frozen and y is 0.
// reverse=true visits t = T-1 .. 0, so each sequence starts at its own last valid step from h0
// (PackedSequence semantics). Outputs are freshly allocated.
// bfloat16 / float16: every tensor in that dtype, computed in float; gates and hn (saved for the
// backward) are float, and gru_bwd takes them so.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rnnkernels {
inline namespace v0 {

// Forward.
//   gx:      [T,B,3H]  input projection x W_ih^T + b_ih
//   w_hh:    [3H,H]    recurrent weights
//   b_hh:    [3H]      recurrent bias, or nullopt
//   h0:      [B,H]     initial state
//   lengths: [B]       int64 valid steps per sequence, or nullopt (all T valid)
//   reverse: run t = T-1 .. 0
//   save:    keep gates and hn for gru_bwd; false (inference) returns them as [0,B,3H] and
//            [0,B,H], and the kernel writes one step's in place of T (less memory traffic)
// Returns (y [T,B,H], zero past each sequence's end; hT [B,H];
//          gates [T,B,3H], r z n after their activations, zero past the end;
//          hn [T,B,H], gh_n = h_{t-1} W_hn^T + b_hn, zero past the end).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_fwd(
    const at::Tensor& gx, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    bool save = true);

// Backward of gru_fwd.
//   grad_y: [T,B,H], grad_hT: [B,H]            gradients of y, hT
//   w_hh, b_hh, h0, lengths, reverse:          as given to gru_fwd
//   y, gates, hn:                              as returned by gru_fwd
// Returns (d_gx [T,B,3H], zero at invalid steps; d_w_hh [3H,H]; d_b_hh [3H] or [0] without
// bias; d_h0 [B,H]). Bitwise deterministic for a fixed thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_hT, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& y,
    const at::Tensor& gates, const at::Tensor& hn);

}  // namespace v0
}  // namespace rnnkernels
