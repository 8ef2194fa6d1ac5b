// rnnkernels IndRNN layer kernels: public C++ API (CPU, fp32/fp64/bf16/fp16).
//
// One layer, one direction, time-major padded layout. Step: h_t = act(gx_t + u * h_{t-1}),
// act = relu or tanh. Sequence b is valid for t < lengths[b]; past its end its state is frozen
// and y is 0. reverse=true visits t = T-1 .. 0, so each sequence starts at its own last valid
// step from h0 (PackedSequence semantics). Inputs may be non-contiguous (copied if so);
// all tensors of a call share one dtype except lengths (int64). Outputs are freshly allocated.
// fp32 tanh is a rational approximation (|error| < 4e-7); NaN propagates as in torch.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace rnnkernels {
inline namespace v0 {

// Forward.
//   gx:           [T,B,H]  input projection x W_ih^T + b_ih + b_hh
//   u:            [H]      recurrent weights
//   h0:           [B,H]    initial state
//   lengths:      [B]      int64 valid steps per sequence, or nullopt (all T valid)
//   reverse:      run t = T-1 .. 0
//   nonlinearity: "relu" or "tanh"
// Returns (y [T,B,H], zero past each sequence's end; hT [B,H], state after the last valid step).
std::tuple<at::Tensor, at::Tensor> indrnn_fwd(
    const at::Tensor& gx, const at::Tensor& u, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity);

// Backward of indrnn_fwd (the activation's derivative is taken from y).
//   grad_y:  [T,B,H]  gradient of y
//   grad_hT: [B,H]    gradient of hT
//   u, h0, lengths, reverse, nonlinearity: as given to indrnn_fwd
//   y:       [T,B,H]  y returned by indrnn_fwd
// Returns (d_gx [T,B,H], 0 at invalid steps; d_u [H]; d_h0 [B,H]). d_u is reduced in a fixed
// order: bitwise deterministic for any thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor> indrnn_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_hT, const at::Tensor& u,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity, const at::Tensor& y);

}  // namespace v0
}  // namespace rnnkernels
