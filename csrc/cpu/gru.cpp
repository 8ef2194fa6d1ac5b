// GRU layer forward/backward on CPU. See include/rnnkernels/gru.h for the contract and
// rnnkernels/ops/gru/README.md for the equations and the backward derivation.
//
// The GEMM limit: each step needs h_{t-1} W_hh^T, a [B,H] x [H,3H] GEMM (2*B*3H*H FLOPs), and
// the backward another of the same size plus dW_hh over all T*B rows; the rest is O(B*H)
// pointwise work. So per step: ONE GEMM into a [B,3H] buffer (over the rows still valid at that
// step only; its weights packed once per call, step_weight.h), then ONE fused pointwise pass over
// [B,H] (b_hh added there). Threads as in lstm.cpp: one chunk of batch rows per thread through the
// whole time loop when every thread gets enough rows, else each step split. No allocation or
// dispatcher call inside the time loop. The backward keeps d_gh's n columns (d_n * r) for all
// steps beside d_gx (its r, z columns) and forms dW_hh = d_gh^T h_prev after the loop with GEMMs
// over all T*B rows (y shifted is h_prev in the forward direction); db_hh is summed per batch row
// in double, then over rows in a fixed order: deterministic for a fixed thread count.
#include <rnnkernels/gru.h>

#include <ATen/Parallel.h>  // no <ATen/ops/empty.h>: it adds ~5 s of compile; new_empty suffices

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

// One forward step of one batch row (H units). gh = h_{t-1} W_hh^T without the bias.
template <typename scalar_t, bool bias>
RNNKERNELS_MULTIVERSION void step_fwd(const scalar_t* __restrict__ gx,    // [3H]
                                      const scalar_t* __restrict__ gh,    // [3H]
                                      const scalar_t* __restrict__ b_hh,  // [3H]
                                      scalar_t* __restrict__ h,           // [H] in/out
                                      scalar_t* __restrict__ y,           // [H]
                                      scalar_t* __restrict__ gates,       // [3H]
                                      scalar_t* __restrict__ hn,          // [H]
                                      int64_t H) {
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t h_r = bias ? gh[i] + b_hh[i] : gh[i];
    const scalar_t h_z = bias ? gh[H + i] + b_hh[H + i] : gh[H + i];
    const scalar_t h_n = bias ? gh[2 * H + i] + b_hh[2 * H + i] : gh[2 * H + i];
    const scalar_t r = sigmoid_(gx[i] + h_r);
    const scalar_t z = sigmoid_(gx[H + i] + h_z);
    const scalar_t n = tanh_(gx[2 * H + i] + r * h_n);
    const scalar_t h_new = (scalar_t(1) - z) * n + z * h[i];
    gates[i] = r;
    gates[H + i] = z;
    gates[2 * H + i] = n;
    hn[i] = h_n;
    h[i] = h_new;
    y[i] = h_new;
  }
}

// One backward step of one batch row. dh holds dL/dh_t (without grad_y) on entry and
// dh_t * z on exit (the GEMM adds d_gh W_hh); d_b_rows accumulates d_gh for db_hh.
template <typename scalar_t, bool bias>
RNNKERNELS_MULTIVERSION void step_bwd(const scalar_t* __restrict__ grad_y,  // [H]
                                      const scalar_t* __restrict__ gates,   // [3H]
                                      const scalar_t* __restrict__ hn,      // [H]
                                      const scalar_t* __restrict__ h_prev,  // [H]
                                      scalar_t* __restrict__ dh,            // [H] in/out
                                      scalar_t* __restrict__ d_gx,          // [3H]
                                      scalar_t* __restrict__ d_gh,          // [3H]
                                      scalar_t* __restrict__ d_hn,          // [H]
                                      double* __restrict__ d_b_rows,        // [3H]
                                      int64_t H) {
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t r = gates[i], z = gates[H + i], n = gates[2 * H + i];
    const scalar_t dh_t = dh[i] + grad_y[i];
    const scalar_t d_n = dh_t * (scalar_t(1) - z) * (scalar_t(1) - n * n);
    const scalar_t d_r = d_n * hn[i] * r * (scalar_t(1) - r);
    const scalar_t d_z = dh_t * (h_prev[i] - n) * z * (scalar_t(1) - z);
    const scalar_t d_hn_i = d_n * r;
    d_gx[i] = d_r;
    d_gx[H + i] = d_z;
    d_gx[2 * H + i] = d_n;
    d_gh[i] = d_r;
    d_gh[H + i] = d_z;
    d_gh[2 * H + i] = d_hn_i;
    d_hn[i] = d_hn_i;
    dh[i] = dh_t * z;
    if (bias) {
      d_b_rows[i] += double(d_r);
      d_b_rows[H + i] += double(d_z);
      d_b_rows[2 * H + i] += double(d_hn_i);
    }
  }
}

template <typename scalar_t>
void fwd_kernel(const scalar_t* gx, const scalar_t* w_hh, const scalar_t* b_hh,
                const scalar_t* h0, const std::vector<int64_t>& len, bool reverse, scalar_t* y,
                scalar_t* hT, scalar_t* gates, scalar_t* hn, scalar_t* gh, int64_t T, int64_t B,
                int64_t H, bool save, bool bf16) {
  FlushDenormals flush;
  const int64_t G = 3 * H;
  std::memcpy(hT, h0, B * H * sizeof(scalar_t));  // the running state lives in hT
  OneBlasThread one_blas_thread(!split_step_gemm(B, G, H, sizeof(scalar_t)));
  const StepWeight<scalar_t> recurrent(w_hh, true, B, G, H, bf16);  // h W_hh^T
  auto step = b_hh ? step_fwd<scalar_t, true> : step_fwd<scalar_t, false>;
  for_batch_chunks(len, G * H * sizeof(scalar_t), [&](int64_t b0, int64_t b1) {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const StepRows r(len, t, b0, b1);
      // gh[lo:hi] = h[lo:hi] W_hh^T   [rows, 3H]
      recurrent.gemm(r.n(), hT + r.lo * H, H, scalar_t(0), gh + r.lo * G, G);
      const scalar_t* gx_t = gx + t * B * G;
      const int64_t kept_t = save ? t : 0;  // without save, every step's gates and hn in one
      scalar_t *y_t = y + t * B * H, *gates_t = gates + kept_t * B * G, *hn_t = hn + kept_t * B * H;
      for_rows(b0, b1, G, [&](int64_t b_begin, int64_t b_end) {
        for (int64_t b = b_begin; b < b_end; ++b) {
          if (t < len[b]) {
            step(gx_t + b * G, gh + b * G, b_hh, hT + b * H, y_t + b * H, gates_t + b * G,
                 hn_t + b * H, H);
          } else {  // past the end: outputs 0, state frozen
            std::fill_n(y_t + b * H, H, scalar_t(0));
            std::fill_n(gates_t + b * G, G, scalar_t(0));
            std::fill_n(hn_t + b * H, H, scalar_t(0));
          }
        }
      });
    }
  });
}

template <typename scalar_t>
void bwd_kernel(const scalar_t* grad_y, const scalar_t* grad_hT, const scalar_t* w_hh,
                bool bias, const scalar_t* h0, const std::vector<int64_t>& len, bool reverse,
                const scalar_t* y, const scalar_t* gates, const scalar_t* hn, scalar_t* d_gx,
                scalar_t* d_w_hh, scalar_t* d_b_hh, scalar_t* d_h0, scalar_t* d_hn,
                scalar_t* d_gh, scalar_t* h_prev_buf, scalar_t* saved_dh, int64_t T, int64_t B,
                int64_t H, bool bf16, bool w_hh_grad) {
  FlushDenormals flush;
  const int64_t G = 3 * H, BH = B * H;
  std::vector<double> d_b_rows(bias ? B * G : 0, 0.0);  // [B,3H] per-row sums of d_gh
  std::memcpy(d_h0, grad_hT, BH * sizeof(scalar_t));    // the running dL/dh lives in d_h0
  auto step = bias ? step_bwd<scalar_t, true> : step_bwd<scalar_t, false>;
  OneBlasThread one_blas_thread(!split_step_gemm(B, G, H, sizeof(scalar_t)));
  const StepWeight<scalar_t> recurrent(w_hh, false, B, H, G, bf16);  // d_gh W_hh
  for_batch_chunks(len, G * H * sizeof(scalar_t), [&](int64_t b0, int64_t b1) {
    for (int64_t s = T - 1; s >= 0; --s) {  // the forward's visiting order, backwards
      const int64_t t = reverse ? T - 1 - s : s;
      const StepRows r(len, t, b0, b1);
      const int64_t at = t * BH;
      for_rows(b0, b1, G, [&](int64_t b_begin, int64_t b_end) {
        for (int64_t b = b_begin; b < b_end; ++b) {
          scalar_t* d_gx_tb = d_gx + (at + b * H) * 3;
          if (t >= len[b]) {  // invalid step: zero gradients, dh passes through
            std::fill_n(d_gx_tb, G, scalar_t(0));
            std::fill_n(d_hn + at + b * H, H, scalar_t(0));
            if (b >= r.lo && b < r.hi) {  // inside the GEMM's rows: keep dh out of its reach
              std::fill_n(d_gh + b * G, G, scalar_t(0));
              std::memcpy(saved_dh + b * H, d_h0 + b * H, H * sizeof(scalar_t));
            }
            continue;
          }
          const bool first = reverse ? t == len[b] - 1 : t == 0;  // the sequence's first step
          const scalar_t* h_prev =
              first ? h0 + b * H : y + (reverse ? at + BH : at - BH) + b * H;
          step(grad_y + at + b * H, gates + (at + b * H) * 3, hn + at + b * H, h_prev,
               d_h0 + b * H, d_gx_tb, d_gh + b * G, d_hn + at + b * H,
               bias ? d_b_rows.data() + b * G : nullptr, H);
        }
      });
      // dh[lo:hi] = dh_t * z + d_gh[lo:hi] W_hh
      recurrent.gemm(r.n(), d_gh + r.lo * G, G, scalar_t(1), d_h0 + r.lo * H, H);
      if (!r.dense)
        for (int64_t b = r.lo; b < r.hi; ++b)
          if (t >= len[b]) std::memcpy(d_h0 + b * H, saved_dh + b * H, H * sizeof(scalar_t));
    }
  });
  one_blas_thread.release();  // the GEMMs over all T*B rows thread
  // d_w_hh = d_gh^T h_prev over all T*B rows, h_prev as steps.previous_states builds it; d_gh is
  // d_gx in its r, z columns and d_hn in its n columns.
  auto d_w_hh_from = [&](const scalar_t* h_prev, int64_t row_begin, int64_t rows_, scalar_t beta) {
    gemm(true, false, 2 * H, H, rows_, scalar_t(1), d_gx + row_begin * G, G, h_prev, H, beta,
         d_w_hh, H);
    gemm(true, false, H, H, rows_, scalar_t(1), d_hn + row_begin * H, H, h_prev, H, beta,
         d_w_hh + 2 * H * H, H);
  };
  if (!w_hh_grad) {  // the caller's (gru_bwd: a bfloat16 GEMM)
  } else if (T * B == 0) {
    std::fill_n(d_w_hh, G * H, scalar_t(0));
  } else if (!reverse) {  // h_prev = [h0; y[:-1]]
    d_w_hh_from(h0, 0, B, scalar_t(0));
    if (T > 1) d_w_hh_from(y, B, (T - 1) * B, scalar_t(1));
  } else {  // h_prev[t] = y[t+1] where the sequence is still valid at t+1, else h0
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* src = t + 1 < len[b] ? y + (t + 1) * BH + b * H : h0 + b * H;
        std::memcpy(h_prev_buf + t * BH + b * H, src, H * sizeof(scalar_t));
      }
    d_w_hh_from(h_prev_buf, 0, T * B, scalar_t(0));
  }
  if (bias) {  // sum over rows in a fixed order
    std::vector<double> total(G, 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < G; ++j) total[j] += d_b_rows[b * G + j];
    for (int64_t j = 0; j < G; ++j) d_b_hh[j] = scalar_t(total[j]);
  }
}

void check_layer(const at::Tensor& x, int64_t gates, const at::Tensor& w_hh,
                 const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                 const char* x_name) {
  TORCH_CHECK(h0.dim() == 2, "rnnkernels gru: h0 must be [B,H], got ", h0.sizes());
  const int64_t B = h0.size(0), H = h0.size(1);
  TORCH_CHECK(x.dim() == 3 && x.size(1) == B && x.size(2) == gates * H, "rnnkernels gru: ",
              x_name, " must be [T,B=", B, ",", gates * H, "], got ", x.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H && w_hh.size(1) == H,
              "rnnkernels gru: w_hh must be [3H=", 3 * H, ",H=", H, "], got ", w_hh.sizes());
  if (b_hh.has_value() && b_hh->defined()) {
    TORCH_CHECK(b_hh->dim() == 1 && b_hh->size(0) == 3 * H, "rnnkernels gru: b_hh must be [3H=",
                3 * H, "], got ", b_hh->sizes());
    check_float_cpu({&x, &w_hh, &h0, &*b_hh}, "gru");
  } else {
    check_float_cpu({&x, &w_hh, &h0}, "gru");
  }
}

bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_fwd(
    const at::Tensor& gx_in, const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_hh_in,
    const at::Tensor& h0_in, const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  check_layer(gx_in, 3, w_hh_in, b_hh_in, h0_in, "gx");
  const at::ScalarType io = gx_in.scalar_type();  // bfloat16, float16: run in float (common.h)
  const at::Tensor gx = as_float(gx_in), w_hh = as_float(w_hh_in), h0 = as_float(h0_in);
  const at::Tensor b_hh = has(b_hh_in) ? as_float(*b_hh_in) : at::Tensor();
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "gru");
  at::Tensor y = gx.new_empty({T, B, H});          // [T,B,H]
  at::Tensor hT = gx.new_empty({B, H});            // [B,H]
  const int64_t kept = save ? T : 1;                  // steps whose gates and hn are kept
  at::Tensor gates = gx.new_empty({kept, B, 3 * H});  // [T,B,3H]
  at::Tensor hn = gx.new_empty({kept, B, H});         // [T,B,H]
  at::Tensor gh = gx.new_empty({B, 3 * H});        // [B,3H] scratch
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    fwd_kernel<scalar_t>(gx.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                         b_hh.defined() ? b_hh.data_ptr<scalar_t>() : nullptr,
                         h0.data_ptr<scalar_t>(), len, reverse, y.data_ptr<scalar_t>(),
                         hT.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                         hn.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), T, B, H, save,
                         io == at::kBFloat16);
  };
  gx.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  if (!save)  // the activations with 0 steps (float, as kept: gru.h)
    return {to_io(y, io), to_io(hT, io), gx.new_empty({0, B, 3 * H}), gx.new_empty({0, B, H})};
  return {to_io(y, io), to_io(hT, io), gates, hn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bwd(
    const at::Tensor& grad_y_in, const at::Tensor& grad_hT_in, const at::Tensor& w_hh_in,
    const std::optional<at::Tensor>& b_hh_in, const at::Tensor& h0_in,
    const std::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& y_in,
    const at::Tensor& gates_in, const at::Tensor& hn_in) {
  check_layer(y_in, 1, w_hh_in, b_hh_in, h0_in, "y");
  const at::ScalarType io = y_in.scalar_type();
  check_saved_float({&gates_in, &hn_in}, io, "gru: gates and hn");
  TORCH_CHECK(gates_in.dim() == 3 && gates_in.size(0) == y_in.size(0) &&
                  gates_in.size(1) == y_in.size(1) && gates_in.size(2) == 3 * y_in.size(2),
              "rnnkernels gru: gates must be [T,B,3H] as gru_fwd returns them, got ",
              gates_in.sizes());
  const at::IntArrayRef state = h0_in.sizes();
  const std::vector<int64_t> seq{gates_in.size(0), state[0], state[1]};
  for (const at::Tensor* t : {&grad_y_in, &y_in, &hn_in})
    TORCH_CHECK(t->sizes() == at::IntArrayRef(seq), "rnnkernels gru: grad_y, y, hn must be ",
                at::IntArrayRef(seq), ", got ", t->sizes());
  TORCH_CHECK(grad_hT_in.sizes() == state, "rnnkernels gru: grad_hT must be ", state, ", got ",
              grad_hT_in.sizes());
  check_float_cpu({&y_in, &grad_y_in, &grad_hT_in}, "gru");
  const at::Tensor grad_y = as_float(grad_y_in), grad_hT = as_float(grad_hT_in);
  const at::Tensor w_hh = as_float(w_hh_in), h0 = as_float(h0_in), y = as_float(y_in);
  const at::Tensor gates = gates_in.contiguous(), hn = hn_in.contiguous();
  const bool bias = has(b_hh_in);
  const bool bf16 = bf16_gemms(io);  // d_w_hh by a bfloat16 GEMM
  const int64_t T = y.size(0), B = y.size(1), H = y.size(2);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "gru");
  at::Tensor d_gx = y.new_empty({T, B, 3 * H});                  // [T,B,3H]
  at::Tensor d_w_hh = y.new_empty({3 * H, H});                   // [3H,H]
  at::Tensor d_b_hh = y.new_empty({bias ? 3 * H : 0});           // [3H] or [0]
  at::Tensor d_h0 = y.new_empty({B, H});                         // [B,H]
  at::Tensor d_hn = y.new_empty({T, B, H});                      // [T,B,H] scratch
  at::Tensor d_gh = y.new_empty({B, 3 * H});                     // [B,3H] scratch
  at::Tensor h_prev = y.new_empty({reverse ? T : 0, B, H});      // [T,B,H] scratch
  at::Tensor saved_dh = y.new_empty({has(lengths) ? B : 0, H});  // [B,H] scratch
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    bwd_kernel<scalar_t>(grad_y.data_ptr<scalar_t>(), grad_hT.data_ptr<scalar_t>(),
                         w_hh.data_ptr<scalar_t>(), bias, h0.data_ptr<scalar_t>(), len, reverse,
                         y.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                         hn.data_ptr<scalar_t>(), d_gx.data_ptr<scalar_t>(),
                         d_w_hh.data_ptr<scalar_t>(), d_b_hh.data_ptr<scalar_t>(),
                         d_h0.data_ptr<scalar_t>(), d_hn.data_ptr<scalar_t>(), d_gh.data_ptr<scalar_t>(),
                         h_prev.data_ptr<scalar_t>(), saved_dh.data_ptr<scalar_t>(), T, B, H,
                         io == at::kBFloat16, !bf16);
  };
  y.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  const at::Tensor d_gx_io = to_io(d_gx, io);
  if (bf16) {  // d_w_hh = d_gh^T h_prev, d_gh = d_gx's r, z columns and d_hn, rounded
    at::Tensor d_gh_all = d_gx_io.clone();
    d_gh_all.narrow(2, 2 * H, H).copy_(d_hn);
    const at::Tensor h_prev_io =
        previous_states(y_in.contiguous(), h0_in.contiguous(), len, reverse);
    d_w_hh = d_gh_all.view({T * B, 3 * H}).t().mm(h_prev_io.view({T * B, H}));
  }
  return {d_gx_io, to_io(d_w_hh, io), to_io(d_b_hh, io), to_io(d_h0, io)};
}

}  // namespace v0
}  // namespace rnnkernels
