// The input projection y = x W^T + bias on CPU. See include/rnnkernels/linear.h for the contract.
//
// W (and the bias) are packed once per call into the step GEMM's panels (panel_gemm.h), and the
// panels (or the rows of x, where the panels do not divide evenly) split over torch's pool; each
// thread walks its rows in chunks that stay in its L2 (192 KiB of x) while its panels pass over
// them, a register block of rows at a time, the bias loaded into the accumulators (no separate
// pass over y, as addmm's copy of the bias).
//
// Measured on a 2-vCPU AMD EPYC Zen 4 (one thread, CPU time, min of 8 alternating runs; the
// layers' input GEMMs x [T*B, H] W^T, W [4H, H], and the backward's d_x = grad W), GFLOP/s of
// F.linear (MKL's addmm) / oneDNN (torch.ops.mkldnn._linear_pointwise) / ours:
//   T=100 B=32 H=256   87 / 103 / 107   d_x: MKL mm 90, oneDNN 106, ours 110
//   T=512 B=16 H=128   91 / 100 / 100   d_x: 80 / 103 / 106
//   T=50 B=64 H=512    91 / 103 / 109   d_x: 93 / 108 / 113
//   T=100 B=1 H=256    98 / 104 / 105   d_x: 101 / 105 / 107
//   T=100 B=4 H=1024   91 / 104 / 103   d_x: 98 / 106 / 103
//   T=200 B=8 H=64    101 / 105 / 111   d_x: 97 / 108 / 113
// (the FMA peak is 117 a core; the AVX2 kernel: 80-103). With few rows the packing of W^T
// counts: a scalar loop took 0.18 ms for a 1 MB W, 8x8 transposes 0.05 (B=1: 83 -> 105 GFLOP/s).
// The weight gradient d_W = grad^T x stays with MKL's sgemm (autograd in ops/linear.py): our
// kernel with grad^T read in place ran at 86-89 GFLOP/s, and with it copied into register-block
// order at 91-100, where MKL ran at 91-98 (worse at N=400 k=1024 n=4096: 85 vs 94).
#include <rnnkernels/linear.h>

#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>

#include "common.h"
#include "panel_gemm.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rnnkernels {
inline namespace v0 {
namespace {

using namespace detail;

void check_linear(const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() >= 1, "rnnkernels linear: x must be [*, k], got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(-1),
              "rnnkernels linear: weight must be [n, k=", x.size(-1), "], got ", weight.sizes());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)),
              "rnnkernels linear: bias must be [n=", weight.size(0), "], got ", bias->sizes());
  if (bias)
    check_float_cpu({&x, &weight, &*bias}, "linear");
  else
    check_float_cpu({&x, &weight}, "linear");
}

#ifdef RNNKERNELS_PANEL_GEMM
// y [N,n] = x [N,k] W^T + bias with our kernel for `isa`.
void panel_linear(CpuGemm isa, const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t N = x.size(0), k = x.size(1), n = weight.size(0);
  // W^T [k,n] row-major (weight = w.t() of a contiguous w) is packed as it is; else rows of W.
  const bool transposed = !weight.is_contiguous() && weight.t().is_contiguous();
  const at::Tensor w = transposed ? weight : weight.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  FlushDenormals flush;
  const PackedPanels packed(isa, w.data_ptr<float>(), !transposed, transposed ? n : k, n, k,
                            bias ? b.data_ptr<float>() : nullptr);
  const float* a = x.data_ptr<float>();
  float* c = y.data_ptr<float>();
  const int64_t panels = packed.panels(), block = packed.max_rows();
  const int64_t chunk = std::max(block, (int64_t(192) << 10) / std::max<int64_t>(4 * k, 1));
  // rows [r0, r1) by panels [p0, p1), in chunks of rows that stay in L2 while the panels pass
  auto part = [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    FlushDenormals flush_here;  // pool threads have their own FP mode
    for (int64_t r = r0; r < r1; r += chunk)
      packed.gemm(p0, p1, std::min(chunk, r1 - r), a + r * k, k, false, c + r * n, n);
  };
  const int64_t threads = at::get_num_threads();
  if (threads < 2 || 2 * N * n * k < 2000000 || at::in_parallel_region())
    return part(0, N, 0, panels);
  // The panels split over the threads where they divide evenly: each thread then packed, keeps
  // in its L2 and multiplies by the same share of W (T=100 B=1 H=256, 100 rows, two threads:
  // 0.276 -> 0.251 ms; at 3200 rows the same); else the rows, unless too few for a block each.
  if (panels % threads == 0 || N < threads * block)
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) { part(0, N, p0, p1); });
  else
    at::parallel_for(0, N, block, [&](int64_t r0, int64_t r1) { part(r0, r1, 0, panels); });
}
#endif

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias) {
  check_linear(x, weight, bias);
  // bfloat16 on the avx512bf16 path: torch's GEMM (oneDNN's AVX512_BF16 one: 162 GFLOP/s wall,
  // 185 CPU time, to our float kernel's 106, on x [3200,256] W^T [256,1024], one Zen 4 core),
  // through the BLAS path below. Our bf16_block on x's rows as pairs was tried: 177-181 GFLOP/s
  // (d_x = grad W: 207-211, torch's 206-210; CPU time, load 7), no faster, so not kept. Other
  // half-type calls: the float GEMM on float copies (torch's float16 GEMM on CPU is not
  // vectorised: 9.8 GFLOP/s), the result rounded once.
  const at::ScalarType io = x.scalar_type();
  if (is_half(io) && !(io == at::kBFloat16 && cpu_gemm() == CpuGemm::avx512bf16)) {
    const std::optional<at::Tensor> b = bias ? std::optional(bias->to(at::kFloat)) : std::nullopt;
    return linear(x.to(at::kFloat), weight.to(at::kFloat), b).to(io);
  }
  const int64_t k = weight.size(1), n = weight.size(0);
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = n;
  const int64_t N = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  const at::Tensor x2 = x.reshape({N, k});  // [N,k]; torch's GEMMs take it strided (d_W's x^T)
#ifdef RNNKERNELS_PANEL_GEMM
  const CpuGemm isa = x.scalar_type() == at::kFloat ? cpu_gemm() : CpuGemm::blas;
  if (isa != CpuGemm::blas) {
    at::Tensor y = x2.new_empty({N, n});
    if (y.numel() > 0) panel_linear(isa, x2.contiguous(), weight, bias, y);
    return y.view(sizes);
  }
#endif
  const at::Tensor y = bias ? bias->addmm(x2, weight.t()) : x2.mm(weight.t());
  return y.view(sizes);
}

}  // namespace v0
}  // namespace rnnkernels
