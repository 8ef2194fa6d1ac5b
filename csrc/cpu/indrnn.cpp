// IndRNN layer forward/backward on CPU. See include/rnnkernels/indrnn.h for the contract.
//
// The recurrence is independent per (b, h), so each element's whole time loop runs in one thread:
// h innermost (vectorised), batch rows, then time; blocks of (b, h) spread over threads with
// at::parallel_for.
#include <rnnkernels/indrnn.h>

#include <ATen/Parallel.h>  // no <ATen/ops/empty.h>: it adds ~5 s of compile; new_empty suffices

#include "activation.h"
#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace rnnkernels {
inline namespace v0 {
namespace {

using namespace detail;

// One step of n units: h = act(gx + u * h); y = h.  Plain function + restrict so GCC vectorises.
template <typename scalar_t, Act act>
RNNKERNELS_MULTIVERSION void step_fwd(const scalar_t* __restrict__ gx, const scalar_t* __restrict__ u,
              scalar_t* __restrict__ h, scalar_t* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t pre = gx[i] + u[i] * h[i];
    const scalar_t v = activate<act>(pre);
    h[i] = v;
    y[i] = v;
  }
}

// One backward step of n units; dh holds dL/dh_t on entry and dL/dh_{t-1} on exit.
template <typename scalar_t, Act act>
RNNKERNELS_MULTIVERSION void step_bwd(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ y,
              const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ u,
              scalar_t* __restrict__ dh, scalar_t* __restrict__ d_gx, double* __restrict__ d_u,
              int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t g = dh[i] + grad_y[i];
    const scalar_t d_pre = activation_grad<act>(g, y[i]);
    d_gx[i] = d_pre;
    d_u[i] += double(d_pre) * double(h_prev[i]);
    dh[i] = d_pre * u[i];
  }
}

// Work split: an item is a block of sequences x a chunk of hidden units, and it runs the whole time
// loop for them. Several rows per item keep each step's reads contiguous (a lone 512-byte row per
// step, 16 KB apart, stalls on cache misses); enough items keep every thread busy.
struct Split {
  int64_t h_chunk, h_chunks, rows, row_blocks;
  Split(int64_t B, int64_t H) {
    h_chunk = H <= 1024 ? H : 512;
    h_chunks = (H + h_chunk - 1) / h_chunk;
    const int64_t threads = at::get_num_threads();
    const int64_t balanced = (B * h_chunks + 4 * threads - 1) / (4 * threads);  // ~4 items/thread
    rows = std::clamp<int64_t>(balanced, 1, std::max<int64_t>(1, 4096 / h_chunk));
    row_blocks = (B + rows - 1) / rows;
  }
  int64_t items() const { return row_blocks * h_chunks; }
};

template <typename scalar_t, Act act>
void fwd_kernel(const scalar_t* gx, const scalar_t* u, const scalar_t* h0,
                const std::vector<int64_t>& len, bool reverse, scalar_t* y, scalar_t* hT,
                int64_t T, int64_t B, int64_t H) {
  const Split split(B, H);
  at::parallel_for(0, split.items(), 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;  // per thread: parallel_for may run this on a pool thread
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b_begin = (item / split.h_chunks) * split.rows;
      const int64_t b_end = std::min(B, b_begin + split.rows);
      const int64_t h_begin = (item % split.h_chunks) * split.h_chunk;
      const int64_t n = std::min(split.h_chunk, H - h_begin);
      for (int64_t b = b_begin; b < b_end; ++b)  // running state lives in hT
        std::memcpy(hT + b * H + h_begin, h0 + b * H + h_begin, n * sizeof(scalar_t));
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        for (int64_t b = b_begin; b < b_end; ++b) {
          const int64_t row = b * H + h_begin, at = t * B * H + row;
          if (t < len[b])
            step_fwd<scalar_t, act>(gx + at, u + h_begin, hT + row, y + at, n);
          else
            std::fill_n(y + at, n, scalar_t(0));  // past the end: y is 0, state frozen
        }
      }
    }
  });
}

template <typename scalar_t, Act act>
void bwd_kernel(const scalar_t* grad_y, const scalar_t* grad_hT, const scalar_t* u,
                const scalar_t* h0, const std::vector<int64_t>& len, bool reverse,
                const scalar_t* y, scalar_t* d_gx, scalar_t* d_u, scalar_t* d_h0, int64_t T,
                int64_t B, int64_t H) {
  const Split split(B, H);
  std::vector<double> d_u_rows(B * H, 0.0);  // [B,H] per-sequence partial sums of d_u
  at::parallel_for(0, split.items(), 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b_begin = (item / split.h_chunks) * split.rows;
      const int64_t b_end = std::min(B, b_begin + split.rows);
      const int64_t h_begin = (item % split.h_chunks) * split.h_chunk;
      const int64_t n = std::min(split.h_chunk, H - h_begin);
      for (int64_t b = b_begin; b < b_end; ++b)  // running dL/dh lives in d_h0
        std::memcpy(d_h0 + b * H + h_begin, grad_hT + b * H + h_begin, n * sizeof(scalar_t));
      for (int64_t s = T - 1; s >= 0; --s) {  // the forward's visiting order, backwards
        const int64_t t = reverse ? T - 1 - s : s;
        for (int64_t b = b_begin; b < b_end; ++b) {
          const int64_t row = b * H + h_begin, at = t * B * H + row;
          if (t >= len[b]) {
            std::fill_n(d_gx + at, n, scalar_t(0));
            continue;
          }
          const bool first = reverse ? t == len[b] - 1 : t == 0;  // this sequence's first step
          const scalar_t* h_prev = first ? h0 + row : y + (reverse ? at + B * H : at - B * H);
          step_bwd<scalar_t, act>(grad_y + at, y + at, h_prev, u + h_begin, d_h0 + row,
                                  d_gx + at, d_u_rows.data() + row, n);
        }
      }
    }
  });
  // d_u = sum over b in a fixed order: deterministic for any thread count.
  std::vector<double> total(H, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) total[h] += d_u_rows[b * H + h];
  for (int64_t h = 0; h < H; ++h) d_u[h] = scalar_t(total[h]);
}

void check_layer(const at::Tensor& x, const at::Tensor& u, const at::Tensor& h0,
                 const char* x_name) {
  TORCH_CHECK(x.dim() == 3, "rnnkernels indrnn: ", x_name, " must be [T,B,H], got ", x.sizes());
  const int64_t B = x.size(1), H = x.size(2);
  TORCH_CHECK(u.dim() == 1 && u.size(0) == H, "rnnkernels indrnn: u must be [H=", H, "], got ",
              u.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H,
              "rnnkernels indrnn: h0 must be [B=", B, ",H=", H, "], got ", h0.sizes());
  check_float_cpu({&x, &u, &h0}, "indrnn");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> indrnn_fwd(
    const at::Tensor& gx_in, const at::Tensor& u_in, const at::Tensor& h0_in,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity) {
  check_layer(gx_in, u_in, h0_in, "gx");
  const Act act = parse_act(nonlinearity, "indrnn");
  const at::ScalarType io = gx_in.scalar_type();  // bfloat16, float16: run in float (common.h)
  const at::Tensor gx = as_float(gx_in), u = as_float(u_in), h0 = as_float(h0_in);
  const int64_t T = gx.size(0), B = gx.size(1), H = gx.size(2);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "indrnn");
  at::Tensor y = gx.new_empty({T, B, H});  // [T,B,H]
  at::Tensor hT = gx.new_empty({B, H});    // [B,H]
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    auto kernel =
        act == Act::relu ? fwd_kernel<scalar_t, Act::relu> : fwd_kernel<scalar_t, Act::tanh>;
    kernel(gx.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), len, reverse,
           y.data_ptr<scalar_t>(), hT.data_ptr<scalar_t>(), T, B, H);
  };
  gx.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  return {to_io(y, io), to_io(hT, io)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> indrnn_bwd(
    const at::Tensor& grad_y_in, const at::Tensor& grad_hT_in, const at::Tensor& u_in,
    const at::Tensor& h0_in, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity, const at::Tensor& y_in) {
  check_layer(y_in, u_in, h0_in, "y");
  TORCH_CHECK(grad_y_in.sizes() == y_in.sizes() && grad_hT_in.sizes() == h0_in.sizes() &&
                  grad_y_in.scalar_type() == y_in.scalar_type() &&
                  grad_hT_in.scalar_type() == y_in.scalar_type(),
              "rnnkernels indrnn: grad_y / grad_hT must match y / h0 in shape and dtype");
  TORCH_CHECK(grad_y_in.device().is_cpu() && grad_hT_in.device().is_cpu(),
              "rnnkernels indrnn (cpp): tensors must be on the CPU");
  const Act act = parse_act(nonlinearity, "indrnn");
  const at::ScalarType io = y_in.scalar_type();
  const at::Tensor grad_y = as_float(grad_y_in), grad_hT = as_float(grad_hT_in);
  const at::Tensor u = as_float(u_in), h0 = as_float(h0_in), y = as_float(y_in);
  const int64_t T = y.size(0), B = y.size(1), H = y.size(2);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "indrnn");
  at::Tensor d_gx = y.new_empty({T, B, H});  // [T,B,H]
  at::Tensor d_u = y.new_empty({H});         // [H]
  at::Tensor d_h0 = y.new_empty({B, H});     // [B,H]
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    auto kernel =
        act == Act::relu ? bwd_kernel<scalar_t, Act::relu> : bwd_kernel<scalar_t, Act::tanh>;
    kernel(grad_y.data_ptr<scalar_t>(), grad_hT.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
           h0.data_ptr<scalar_t>(), len, reverse, y.data_ptr<scalar_t>(),
           d_gx.data_ptr<scalar_t>(), d_u.data_ptr<scalar_t>(), d_h0.data_ptr<scalar_t>(), T, B,
           H);
  };
  y.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  return {to_io(d_gx, io), to_io(d_u, io), to_io(d_h0, io)};
}

}  // namespace v0
}  // namespace rnnkernels
