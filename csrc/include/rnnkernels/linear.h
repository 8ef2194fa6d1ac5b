// rnnkernels input projection: public C++ API (CPU, fp32/fp64/bf16/fp16).
//
// y = x W^T + bias, F.linear's contract: the GEMM over all time steps that computes a layer's gx
// before its recurrence (the whole-layer calls of layer.h use it, and so does the Python cpp
// backend, as the op rnnkernels_cpp::linear). float runs our packed GEMM (the AVX-512 or AVX2
// kernel of the step GEMMs, csrc/cpu/panel_gemm.h, with the bias fused; RNNKERNELS_CPU_ISA
// chooses as there), each output element summed by one thread in a fixed order, so the result is
// bitwise reproducible for any thread count; denormals are flushed while it runs. double, and
// float under RNNKERNELS_CPU_ISA=blas or without AVX2, is torch's addmm / mm. bfloat16 on the
// avx512bf16 path: torch's bfloat16 GEMM; other bfloat16 / float16: the float GEMM on float
// copies, rounded once.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace rnnkernels {
inline namespace v0 {

//   x:      [*, k]  (any leading dimensions)
//   weight: [n, k]  any strides: its transpose W^T [k, n] row-major (weight = w.t()) is read as
//           is, so the backward's d_x = d_y W is linear(d_y, W.t()) with no copy of W
//   bias:   [n], or nullopt
// Returns y [*, n], contiguous.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias);

}  // namespace v0
}  // namespace rnnkernels
