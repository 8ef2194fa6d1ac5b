// Elman RNN (nn.RNN) layer forward/backward on CPU. See include/rnnkernels/rnn.h for the contract
// and rnnkernels/ops/rnn/README.md for the equations.
//
// As gru.cpp with one gate: per step ONE GEMM h_{t-1} W_hh^T into a [B,H] buffer (over the rows
// still valid at that step; W_hh packed once per call, step_weight.h), then ONE pointwise pass
// y = act(gx + gh) (IndRNN's activations, activation.h). Threads as in lstm.cpp / gru.cpp: one
// chunk of batch rows per thread through the whole time loop when every thread gets enough rows,
// else each step split (for_batch_chunks). The backward: d_pre = (dh + grad_y) act'(y) into d_gx,
// then dh = d_pre W_hh by the step GEMM; dW_hh = d_gx^T h_prev after the loop, one GEMM over all
// T*B rows (h_prev rebuilt from y and h0 as steps.previous_states does).
#include <rnnkernels/rnn.h>

#include <ATen/Parallel.h>  // no <ATen/ops/empty.h>: it adds ~5 s of compile; new_empty suffices

#include "activation.h"
#include "common.h"
#include "step_weight.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace rnnkernels {
inline namespace v0 {
namespace {

using namespace detail;

// One forward step of one batch row: h = y = act(gx + gh), gh = h_{t-1} W_hh^T.
template <typename scalar_t, Act act>
RNNKERNELS_MULTIVERSION void step_fwd(const scalar_t* __restrict__ gx,
                                      const scalar_t* __restrict__ gh, scalar_t* __restrict__ h,
                                      scalar_t* __restrict__ y, int64_t H) {
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t v = activate<act>(gx[i] + gh[i]);
    h[i] = v;
    y[i] = v;
  }
}

// One backward step of one batch row: d_pre = (dh + grad_y) act'(y).
template <typename scalar_t, Act act>
RNNKERNELS_MULTIVERSION void step_bwd(const scalar_t* __restrict__ grad_y,
                                      const scalar_t* __restrict__ y,
                                      const scalar_t* __restrict__ dh,
                                      scalar_t* __restrict__ d_pre, int64_t H) {
  for (int64_t i = 0; i < H; ++i) d_pre[i] = activation_grad<act>(dh[i] + grad_y[i], y[i]);
}

template <typename scalar_t, Act act>
void fwd_kernel(const scalar_t* gx, const scalar_t* w_hh, const scalar_t* h0,
                const std::vector<int64_t>& len, bool reverse, scalar_t* y, scalar_t* hT,
                scalar_t* gh, int64_t T, int64_t B, int64_t H, bool bf16) {
  FlushDenormals flush;
  std::memcpy(hT, h0, B * H * sizeof(scalar_t));  // the running state lives in hT
  OneBlasThread one_blas_thread(!split_step_gemm(B, H, H, sizeof(scalar_t)));
  const StepWeight<scalar_t> recurrent(w_hh, true, B, H, H, bf16);  // h W_hh^T
  for_batch_chunks(len, H * H * sizeof(scalar_t), [&](int64_t b0, int64_t b1) {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const StepRows r(len, t, b0, b1);
      recurrent.gemm(r.n(), hT + r.lo * H, H, scalar_t(0), gh + r.lo * H, H);
      const scalar_t* gx_t = gx + t * B * H;
      scalar_t* y_t = y + t * B * H;
      for_rows(b0, b1, H, [&](int64_t b_begin, int64_t b_end) {
        for (int64_t b = b_begin; b < b_end; ++b) {
          if (t < len[b])
            step_fwd<scalar_t, act>(gx_t + b * H, gh + b * H, hT + b * H, y_t + b * H, H);
          else  // past the end: y is 0, state frozen
            std::fill_n(y_t + b * H, H, scalar_t(0));
        }
      });
    }
  });
}

template <typename scalar_t, Act act>
void bwd_kernel(const scalar_t* grad_y, const scalar_t* grad_hT, const scalar_t* w_hh,
                const scalar_t* h0, const std::vector<int64_t>& len, bool reverse,
                const scalar_t* y, scalar_t* d_gx, scalar_t* d_h0, scalar_t* saved_dh, int64_t T,
                int64_t B, int64_t H, bool bf16) {
  FlushDenormals flush;
  const int64_t BH = B * H;
  std::memcpy(d_h0, grad_hT, BH * sizeof(scalar_t));  // the running dL/dh lives in d_h0
  OneBlasThread one_blas_thread(!split_step_gemm(B, H, H, sizeof(scalar_t)));
  const StepWeight<scalar_t> recurrent(w_hh, false, B, H, H, bf16);  // d_pre W_hh
  for_batch_chunks(len, H * H * sizeof(scalar_t), [&](int64_t b0, int64_t b1) {
    for (int64_t s = T - 1; s >= 0; --s) {  // the forward's visiting order, backwards
      const int64_t t = reverse ? T - 1 - s : s;
      const StepRows r(len, t, b0, b1);
      const int64_t at = t * BH;
      for_rows(b0, b1, H, [&](int64_t b_begin, int64_t b_end) {
        for (int64_t b = b_begin; b < b_end; ++b) {
          if (t < len[b]) {
            step_bwd<scalar_t, act>(grad_y + at + b * H, y + at + b * H, d_h0 + b * H,
                                    d_gx + at + b * H, H);
            continue;
          }
          std::fill_n(d_gx + at + b * H, H, scalar_t(0));  // invalid: dh passes through
          if (b >= r.lo && b < r.hi)  // inside the GEMM's rows: keep dh out of its reach
            std::memcpy(saved_dh + b * H, d_h0 + b * H, H * sizeof(scalar_t));
        }
      });
      // dh[lo:hi] = d_pre[lo:hi] W_hh
      recurrent.gemm(r.n(), d_gx + at + r.lo * H, H, scalar_t(0), d_h0 + r.lo * H, H);
      if (!r.dense)
        for (int64_t b = r.lo; b < r.hi; ++b)
          if (t >= len[b]) std::memcpy(d_h0 + b * H, saved_dh + b * H, H * sizeof(scalar_t));
    }
  });
}

// d_w_hh [H,H] = d_gx^T h_prev over all T*B rows, h_prev as steps.previous_states builds it
// (h_prev_buf [T,B,H] only for reverse with lengths).
template <typename scalar_t>
void weight_grad(const scalar_t* d_gx, const scalar_t* y, const scalar_t* h0,
                 const std::vector<int64_t>& len, bool lengths_given, bool reverse, int64_t T,
                 int64_t B, int64_t H, scalar_t* d_w_hh, scalar_t* h_prev_buf) {
  if (T * B == 0) {
    std::fill_n(d_w_hh, H * H, scalar_t(0));
    return;
  }
  const scalar_t one = 1, zero = 0;
  if (!reverse) {  // h_prev = [h0, y[0 .. T-2]]: y itself, shifted; no copy
    gemm(true, false, H, H, B, one, d_gx, H, h0, H, zero, d_w_hh, H);
    gemm(true, false, H, H, (T - 1) * B, one, d_gx + B * H, H, y, H, one, d_w_hh, H);
  } else if (!lengths_given) {  // h_prev = [y[1 .. T-1], h0]
    gemm(true, false, H, H, B, one, d_gx + (T - 1) * B * H, H, h0, H, zero, d_w_hh, H);
    gemm(true, false, H, H, (T - 1) * B, one, d_gx, H, y + B * H, H, one, d_w_hh, H);
  } else {  // h_prev[t,b] = y[t+1,b] while t+1 is valid, else h0[b]
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* src = t + 1 < len[b] ? y + ((t + 1) * B + b) * H : h0 + b * H;
        std::memcpy(h_prev_buf + (t * B + b) * H, src, H * sizeof(scalar_t));
      }
    gemm(true, false, H, H, T * B, one, d_gx, H, h_prev_buf, H, zero, d_w_hh, H);
  }
}

void check_layer(const at::Tensor& x, const at::Tensor& w_hh, const at::Tensor& h0,
                 const char* x_name) {
  TORCH_CHECK(x.dim() == 3, "rnnkernels rnn: ", x_name, " must be [T,B,H], got ", x.sizes());
  const int64_t B = x.size(1), H = x.size(2);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == H && w_hh.size(1) == H,
              "rnnkernels rnn: w_hh must be [H=", H, ",H=", H, "], got ", w_hh.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H,
              "rnnkernels rnn: h0 must be [B=", B, ",H=", H, "], got ", h0.sizes());
  check_float_cpu({&x, &w_hh, &h0}, "rnn");
}

bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> rnn_fwd(
    const at::Tensor& gx_in, const at::Tensor& w_hh_in, const at::Tensor& h0_in,
    const std::optional<at::Tensor>& lengths, bool reverse, std::string_view nonlinearity) {
  check_layer(gx_in, w_hh_in, h0_in, "gx");
  const Act act = parse_act(nonlinearity, "rnn");
  const at::ScalarType io = gx_in.scalar_type();  // bfloat16, float16: run in float (common.h)
  const at::Tensor gx = as_float(gx_in), w_hh = as_float(w_hh_in), h0 = as_float(h0_in);
  const int64_t T = gx.size(0), B = gx.size(1), H = gx.size(2);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "rnn");
  at::Tensor y = gx.new_empty({T, B, H});  // [T,B,H]
  at::Tensor hT = gx.new_empty({B, H});    // [B,H]
  at::Tensor gh = gx.new_empty({B, H});    // [B,H] scratch
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    auto kernel =
        act == Act::relu ? fwd_kernel<scalar_t, Act::relu> : fwd_kernel<scalar_t, Act::tanh>;
    kernel(gx.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), len,
           reverse, y.data_ptr<scalar_t>(), hT.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), T,
           B, H, io == at::kBFloat16);
  };
  gx.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  return {to_io(y, io), to_io(hT, io)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_bwd(
    const at::Tensor& grad_y_in, const at::Tensor& grad_hT_in, const at::Tensor& w_hh_in,
    const at::Tensor& h0_in, const std::optional<at::Tensor>& lengths, bool reverse,
    std::string_view nonlinearity, const at::Tensor& y_in) {
  check_layer(y_in, w_hh_in, h0_in, "y");
  TORCH_CHECK(grad_y_in.sizes() == y_in.sizes() && grad_hT_in.sizes() == h0_in.sizes(),
              "rnnkernels rnn: grad_y / grad_hT must match y / h0 in shape");
  check_float_cpu({&y_in, &grad_y_in, &grad_hT_in}, "rnn");
  const Act act = parse_act(nonlinearity, "rnn");
  const at::ScalarType io = y_in.scalar_type();
  const at::Tensor grad_y = as_float(grad_y_in), grad_hT = as_float(grad_hT_in);
  const at::Tensor w_hh = as_float(w_hh_in), h0 = as_float(h0_in), y = as_float(y_in);
  const int64_t T = y.size(0), B = y.size(1), H = y.size(2);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "rnn");
  const bool lengths_given = has(lengths);
  at::Tensor d_gx = y.new_empty({T, B, H});                                // [T,B,H]
  at::Tensor d_w_hh = y.new_empty({H, H});                                 // [H,H]
  at::Tensor d_h0 = y.new_empty({B, H});                                   // [B,H]
  at::Tensor saved_dh = y.new_empty({lengths_given ? B : 0, H});           // [B,H] scratch
  at::Tensor h_prev = y.new_empty({reverse && lengths_given ? T : 0, B, H});  // scratch
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    auto kernel =
        act == Act::relu ? bwd_kernel<scalar_t, Act::relu> : bwd_kernel<scalar_t, Act::tanh>;
    kernel(grad_y.data_ptr<scalar_t>(), grad_hT.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
           h0.data_ptr<scalar_t>(), len, reverse, y.data_ptr<scalar_t>(),
           d_gx.data_ptr<scalar_t>(), d_h0.data_ptr<scalar_t>(), saved_dh.data_ptr<scalar_t>(),
           T, B, H, io == at::kBFloat16);
    // the GEMM over all T*B rows threads as BLAS does (no OneBlasThread here)
    weight_grad(d_gx.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), len,
                lengths_given, reverse, T, B, H, d_w_hh.data_ptr<scalar_t>(),
                h_prev.data_ptr<scalar_t>());
  };
  y.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  return {to_io(d_gx, io), to_io(d_w_hh, io), to_io(d_h0, io)};
}

}  // namespace v0
}  // namespace rnnkernels
