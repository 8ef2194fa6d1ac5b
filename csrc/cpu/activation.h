// The activations of the cells that take a nonlinearity (IndRNN, RNN): relu or tanh, and the
// gradient of the pre-activation taken from the output alone. Internal header (not installed).
#pragma once

#include <c10/util/Exception.h>

#include "common.h"

#include <string>
#include <string_view>

namespace rnnkernels {
inline namespace v0 {
namespace detail {

enum class Act { relu, tanh };

inline Act parse_act(std::string_view nonlinearity, const char* cell) {
  if (nonlinearity == "relu") return Act::relu;
  if (nonlinearity == "tanh") return Act::tanh;
  TORCH_CHECK(false, "rnnkernels ", cell, ": nonlinearity must be 'relu' or 'tanh', got '",
              std::string(nonlinearity), "'");
}

// relu that propagates NaN as torch.relu does (NaN <= 0 is false).
template <typename scalar_t>
inline scalar_t relu(scalar_t x) {
  return x <= scalar_t(0) ? scalar_t(0) : x;
}

template <Act act, typename scalar_t>
inline scalar_t activate(scalar_t pre) {
  return act == Act::relu ? relu(pre) : tanh_(pre);
}

// d_pre from d_y = dL/dy and y = act(pre): relu y > 0, tanh 1 - y^2.
template <Act act, typename scalar_t>
inline scalar_t activation_grad(scalar_t d_y, scalar_t y) {
  return act == Act::relu ? d_y * scalar_t(y > scalar_t(0)) : d_y * (scalar_t(1) - y * y);
}

}  // namespace detail
}  // namespace v0
}  // namespace rnnkernels
