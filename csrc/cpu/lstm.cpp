// LSTM layer forward/backward on CPU. See include/rnnkernels/lstm.h for the contract and
// rnnkernels/ops/lstm/README.md for the equations and the backward derivation.
//
// The GEMM limit: the recurrence is sequential in T, so each step is one BLAS GEMM for the
// recurrent product ([B,R] x [R,4H], 2*B*R*4H FLOPs; with projection one more, [B,H] x [H,P]) and
// one fused pointwise pass over [B,4H]. A layer can be no faster than T such GEMMs at the rate BLAS
// reaches for B rows; everything else here is kept O(B*H) per step with no allocations or
// dispatcher calls inside the time loop. The backward mirrors it (one pointwise pass, one GEMM
// dh_prev = d_pre W_hh per step), and its weight gradients are single GEMMs over all T*B rows.
// Only the rows some sequence still needs at a step enter its GEMMs ([lo, hi) of the valid rows),
// so packed batches cost their true length. For float the step GEMMs' weights are packed once per
// call rather than inside every step (step_weight.h: our AVX2 kernel, or MKL's packed GEMM).
// Threads: the batch rows are independent recurrences, so a batch with enough rows per thread runs
// as one chunk of rows per thread, each through the whole time loop (for_batch_chunks); otherwise
// each step is split (a large step GEMM's panels, then the pointwise pass's rows).
#include <rnnkernels/lstm.h>

#include <ATen/Parallel.h>  // no <ATen/ops/empty.h>: it adds ~5 s of compile; new_empty suffices

#include "common.h"
#include "step_weight.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace rnnkernels {
inline namespace v0 {
namespace {

using namespace detail;

#pragma GCC push_options
// FMA in the activations' polynomials (~20% off the forward pass; it also fuses the cell
// update's a*b+c, a rounding difference far inside the fp32 parity bar).
#pragma GCC optimize("fp-contract=fast")
// One valid row of a forward step. The gate arrays hold the recurrent product h_{t-1} W_hh^T on
// entry and i, f, g, o after their activations on exit; c is the running cell state.
template <typename scalar_t, bool proj>
RNNKERNELS_MULTIVERSION void row_fwd(
    const scalar_t* __restrict__ gx_i, const scalar_t* __restrict__ gx_f,
    const scalar_t* __restrict__ gx_g, const scalar_t* __restrict__ gx_o,
    scalar_t* __restrict__ gi, scalar_t* __restrict__ gf, scalar_t* __restrict__ gg,
    scalar_t* __restrict__ go, scalar_t* __restrict__ c, scalar_t* __restrict__ cell,
    scalar_t* __restrict__ h, scalar_t* __restrict__ y, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t i = sigmoid_(gx_i[j] + gi[j]);
    const scalar_t f = sigmoid_(gx_f[j] + gf[j]);
    const scalar_t g = tanh_(gx_g[j] + gg[j]);
    const scalar_t o = sigmoid_(gx_o[j] + go[j]);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    const scalar_t c_new = f * c[j] + i * g;
    c[j] = c_new;
    cell[j] = c_new;
    const scalar_t h_new = o * tanh_(c_new);
    h[j] = h_new;  // with projection: o * tanh(c), projected afterwards
    if (!proj) y[j] = h_new;
  }
}

// One valid row of a backward step. dr is dL/d(o*tanh c) (without projection dh + grad_y, as two
// arrays); dc holds dL/dc_t from later steps on entry and dL/dc_{t-1} on exit.
template <typename scalar_t, bool proj>
RNNKERNELS_MULTIVERSION void row_bwd(
    const scalar_t* __restrict__ dr_a, const scalar_t* __restrict__ dr_b,
    const scalar_t* __restrict__ gi, const scalar_t* __restrict__ gf,
    const scalar_t* __restrict__ gg, const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ cell, const scalar_t* __restrict__ c_prev,
    scalar_t* __restrict__ dc, scalar_t* __restrict__ di, scalar_t* __restrict__ df,
    scalar_t* __restrict__ dg, scalar_t* __restrict__ d_o, scalar_t* __restrict__ hidden,
    int64_t H) {
  const scalar_t one = 1;
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t dr = proj ? dr_a[j] : dr_a[j] + dr_b[j];
    const scalar_t tanh_c = tanh_(cell[j]);
    const scalar_t i = gi[j], f = gf[j], g = gg[j], o = go[j];
    const scalar_t dc_t = dc[j] + dr * o * (one - tanh_c * tanh_c);
    di[j] = dc_t * g * i * (one - i);
    df[j] = dc_t * c_prev[j] * f * (one - f);
    dg[j] = dc_t * i * (one - g * g);
    d_o[j] = dr * tanh_c * o * (one - o);
    dc[j] = dc_t * f;
    if (proj) hidden[j] = o * tanh_c;  // the projection's input, for d_w_hr
  }
}

#pragma GCC pop_options
// hidden = o * tanh(c) for a row past its end (o is 0 there; kept as a product so NaN in a frozen
// cell propagates into d_w_hr exactly as the oracle's).
template <typename scalar_t>
RNNKERNELS_MULTIVERSION void row_hidden(const scalar_t* __restrict__ go,
                                        const scalar_t* __restrict__ cell,
                                        scalar_t* __restrict__ hidden, int64_t H) {
  for (int64_t j = 0; j < H; ++j) hidden[j] = go[j] * tanh_(cell[j]);
}

// out = a + b over n elements (called for valid rows; the caller zero-fills rows past their end).
template <typename scalar_t>
RNNKERNELS_MULTIVERSION void row_add(const scalar_t* __restrict__ a,
                                     const scalar_t* __restrict__ b, scalar_t* __restrict__ out,
                                     int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = a[j] + b[j];
}

// Runs pass.steps<proj>(recurrent, projection, b0, b1) over the batch chunks (for_batch_chunks),
// the step GEMMs' weights prepared once for all of them: the forward (Fwd) multiplies by W_hh^T
// ([B,R] x [R,4H]) and W_hr^T ([B,H] x [H,P]), the backward (Bwd) by W_hh and W_hr.
template <bool proj, typename Pass>
void run_chunks(const Pass& pass, bool forward) {
  using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(pass.w_hh)>>;
  const int64_t B = pass.B, H = pass.H, R = pass.R, G = 4 * H;
  FlushDenormals flush;
  const OneBlasThread one_blas_thread(!split_step_gemm(B, G, R, sizeof(scalar_t)));
  const StepWeight<scalar_t> recurrent(pass.w_hh, forward, B, forward ? G : R, forward ? R : G,
                                       pass.bf16);
  const StepWeight<scalar_t> projection(pass.w_hr, forward, proj ? B : 0, forward ? R : H,
                                        forward ? H : R, pass.bf16);
  for_batch_chunks(pass.len, G * R * sizeof(scalar_t), [&](int64_t b0, int64_t b1) {
    pass.template steps<proj>(recurrent, projection, b0, b1);
  });
}

template <typename scalar_t>
struct Fwd {
  const scalar_t *gx, *w_hh, *w_hr, *h0, *c0;
  scalar_t *y, *h, *c, *gates, *cells, *r;  // h = hT, c = cT (running state); r [B,H] scratch
  const std::vector<int64_t>& len;
  int64_t T, B, H, R;
  bool reverse, save;  // save: gates and cells kept for every step, else one step's, reused
  bool bf16;           // a bfloat16 layer: bfloat16 step GEMM operands where the CPU has them

  int64_t slot(int64_t t) const { return save ? t : 0; }  // where step t's gates and cells go

  template <bool proj>
  void rows(int64_t t, int64_t b_begin, int64_t b_end) const {
    const int64_t G = 4 * H;
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t at_g = (slot(t) * B + b) * G, at_h = (slot(t) * B + b) * H;
      scalar_t* g = gates + at_g;
      if (t < len[b]) {
        const scalar_t* x = gx + (t * B + b) * G;
        row_fwd<scalar_t, proj>(x, x + H, x + 2 * H, x + 3 * H, g, g + H, g + 2 * H, g + 3 * H,
                                c + b * H, cells + at_h, proj ? r + b * H : h + b * R,
                                y + (t * B + b) * R, H);
      } else {  // past the end: gates 0, cell frozen, y 0 (with projection: after its GEMM)
        std::fill_n(g, G, scalar_t(0));
        std::memcpy(cells + at_h, c + b * H, H * sizeof(scalar_t));
        if (!proj) std::fill_n(y + (t * B + b) * R, R, scalar_t(0));
      }
    }
  }

  template <bool proj>
  void run() const {
    std::memcpy(h, h0, B * R * sizeof(scalar_t));
    std::memcpy(c, c0, B * H * sizeof(scalar_t));
    run_chunks<proj>(*this, true);
  }

  // Every step for the rows [b0, b1).
  template <bool proj>
  void steps(const StepWeight<scalar_t>& recurrent, const StepWeight<scalar_t>& projection,
             int64_t b0, int64_t b1) const {
    const int64_t G = 4 * H;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const StepRows rows_t(len, t, b0, b1);
      const int64_t lo = rows_t.lo, n = rows_t.n();
      scalar_t* g_t = gates + slot(t) * B * G;  // [B,4H]
      scalar_t* y_t = y + t * B * R;      // [B,R]
      recurrent.gemm(n, h + lo * R, R, scalar_t(0), g_t + lo * G, G);  // gx added pointwise
      for_rows(b0, b1, G, [&](int64_t begin, int64_t end) { rows<proj>(t, begin, end); });
      if (proj) {
        projection.gemm(n, r + lo * H, H, scalar_t(0), y_t + lo * R, R);  // h_t = r_t W_hr^T
        for (int64_t b = b0; b < b1; ++b) {
          if (t < len[b])
            std::memcpy(h + b * R, y_t + b * R, R * sizeof(scalar_t));
          else
            std::fill_n(y_t + b * R, R, scalar_t(0));
        }
      }
    }
  }
};

template <typename scalar_t>
struct Bwd {
  const scalar_t *grad_y, *w_hh, *w_hr, *h0, *c0, *y, *gates, *cells;
  scalar_t *d_gx, *dh, *dc;  // dh = d_h0, dc = d_c0 (running gradients)
  scalar_t *dh_t, *hidden;   // projection only: [T,B,P] dL/dh_t, [T,B,H] o*tanh(c_t)
  scalar_t *dr, *dh_next;    // scratch [B,H] dL/d(o*tanh c) (projection), [B,R] sparse steps
  const std::vector<int64_t>& len;
  int64_t T, B, H, R;
  bool reverse;
  bool bf16;  // a bfloat16 layer: bfloat16 step GEMM operands where the CPU has them

  template <bool proj>
  void rows(int64_t t, const scalar_t* c_prev, int64_t b_begin, int64_t b_end) const {
    const int64_t G = 4 * H;
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t at_g = (t * B + b) * G, at_h = (t * B + b) * H;
      const scalar_t* g = gates + at_g;
      scalar_t* d = d_gx + at_g;
      if (t < len[b]) {
        const scalar_t* a = proj ? dr + b * H : dh + b * R;
        const scalar_t* gy = proj ? nullptr : grad_y + (t * B + b) * R;
        row_bwd<scalar_t, proj>(a, gy, g, g + H, g + 2 * H, g + 3 * H, cells + at_h,
                                c_prev + b * H, dc + b * H, d, d + H, d + 2 * H, d + 3 * H,
                                proj ? hidden + at_h : nullptr, H);
      } else {  // past the end: no gradient; dh, dc pass through
        std::fill_n(d, G, scalar_t(0));
        if (proj) row_hidden(g + 3 * H, cells + at_h, hidden + at_h, H);
      }
    }
  }

  template <bool proj>
  void run() const {
    run_chunks<proj>(*this, false);
  }

  // Every step, backwards, for the rows [b0, b1).
  template <bool proj>
  void steps(const StepWeight<scalar_t>& recurrent, const StepWeight<scalar_t>& projection,
             int64_t b0, int64_t b1) const {
    const int64_t G = 4 * H;
    for (int64_t s = T - 1; s >= 0; --s) {  // the forward's visiting order, backwards
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t t_prev = reverse ? t + 1 : t - 1;
      const scalar_t* c_prev = t_prev < 0 || t_prev >= T ? c0 : cells + t_prev * B * H;
      const StepRows rows_t(len, t, b0, b1);
      const int64_t lo = rows_t.lo, n = rows_t.n();
      if (proj) {
        scalar_t* dh_tt = dh_t + t * B * R;  // [B,P]
        for (int64_t b = b0; b < b1; ++b) {
          if (t < len[b])
            row_add(dh + b * R, grad_y + (t * B + b) * R, dh_tt + b * R, R);
          else
            std::fill_n(dh_tt + b * R, R, scalar_t(0));
        }
        projection.gemm(n, dh_tt + lo * R, R, scalar_t(0), dr + lo * H, H);  // dr = dh_t W_hr
      }
      for_rows(b0, b1, G, [&](int64_t begin, int64_t end) { rows<proj>(t, c_prev, begin, end); });
      // dh_{t-1} = d_pre W_hh for the valid rows; the others keep theirs.
      scalar_t* out = rows_t.dense ? dh : dh_next;
      recurrent.gemm(n, d_gx + (t * B + lo) * G, G, scalar_t(0), out + lo * R, R);
      if (!rows_t.dense)
        for (int64_t b = lo; b < rows_t.hi; ++b)
          if (t < len[b]) std::memcpy(dh + b * R, dh_next + b * R, R * sizeof(scalar_t));
    }
  }
};

template <typename scalar_t>
void weight_grads(const scalar_t* d_gx, const scalar_t* y, const scalar_t* h0,
                  const std::vector<int64_t>& len, bool lengths_given, bool reverse, int64_t T,
                  int64_t B, int64_t H, int64_t R, scalar_t* d_w_hh, scalar_t* h_prev) {
  const int64_t G = 4 * H, TB = T * B;
  if (TB == 0) {
    std::fill_n(d_w_hh, G * R, scalar_t(0));
    return;
  }
  const scalar_t one = 1, zero = 0;
  if (!reverse) {  // h_prev = [h0, y[0 .. T-2]]: y itself, shifted; no copy
    gemm(true, false, G, R, B, one, d_gx, G, h0, R, zero, d_w_hh, R);
    gemm(true, false, G, R, (T - 1) * B, one, d_gx + B * G, G, y, R, one, d_w_hh, R);
  } else if (!lengths_given) {  // h_prev = [y[1 .. T-1], h0]
    gemm(true, false, G, R, B, one, d_gx + (T - 1) * B * G, G, h0, R, zero, d_w_hh, R);
    gemm(true, false, G, R, (T - 1) * B, one, d_gx, G, y + B * R, R, one, d_w_hh, R);
  } else {  // h_prev[t,b] = y[t+1,b] while t+1 is valid, else h0[b] (steps.previous_states)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* src = t + 1 < len[b] ? y + ((t + 1) * B + b) * R : h0 + b * R;
        std::memcpy(h_prev + (t * B + b) * R, src, R * sizeof(scalar_t));
      }
    gemm(true, false, G, R, TB, one, d_gx, G, h_prev, R, zero, d_w_hh, R);
  }
}

// Shapes: gx [T,B,4H], w_hh [4H,R], w_hr [R,H] or none (then R = H), h0 [B,R], c0 [B,H].
void check_layer(const at::Tensor& x, int64_t G_of_x, const at::Tensor& w_hh,
                 const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                 const at::Tensor& c0) {
  TORCH_CHECK(x.dim() == 3, "rnnkernels lstm: expected a 3-D [T,B,...] tensor, got ", x.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == x.size(1), "rnnkernels lstm: c0 must be [B=",
              x.size(1), ",H], got ", c0.sizes());
  const int64_t B = x.size(1), H = c0.size(1);
  TORCH_CHECK(G_of_x < 0 || G_of_x == 4 * H, "rnnkernels lstm: gx must be [T,B,4H=", 4 * H,
              "], got ", x.sizes());
  const bool proj = w_hr.has_value() && w_hr->defined();
  const int64_t R = proj ? w_hr->size(0) : H;
  if (proj)
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H, "rnnkernels lstm: w_hr must be [P,H=",
                H, "], got ", w_hr->sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == R,
              "rnnkernels lstm: w_hh must be [4H=", 4 * H, ",R=", R, "], got ", w_hh.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == R,
              "rnnkernels lstm: h0 must be [B=", B, ",R=", R, "], got ", h0.sizes());
  check_float_cpu({&x, &w_hh, &h0, &c0}, "lstm");
  if (proj) check_float_cpu({&x, &*w_hr}, "lstm");
}

at::Tensor as_float(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? detail::as_float(*t) : at::Tensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd(
    const at::Tensor& gx_in, const at::Tensor& w_hh_in, const std::optional<at::Tensor>& w_hr_in,
    const at::Tensor& h0_in, const at::Tensor& c0_in, const std::optional<at::Tensor>& lengths,
    bool reverse, bool save) {
  TORCH_CHECK(gx_in.dim() == 3, "rnnkernels lstm: gx must be [T,B,4H], got ", gx_in.sizes());
  check_layer(gx_in, gx_in.size(2), w_hh_in, w_hr_in, h0_in, c0_in);
  const bool proj = w_hr_in.has_value() && w_hr_in->defined();
  const at::ScalarType io = gx_in.scalar_type();  // bfloat16, float16: run in float (common.h)
  const at::Tensor gx = as_float(gx_in), w_hh = as_float(w_hh_in);
  const at::Tensor h0 = as_float(h0_in), c0 = as_float(c0_in), w_hr = as_float(w_hr_in);
  const int64_t T = gx.size(0), B = gx.size(1), H = c0.size(1), R = h0.size(1);
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "lstm");
  at::Tensor y = gx.new_empty({T, B, R});          // [T,B,R]
  at::Tensor hT = gx.new_empty({B, R});            // [B,R]
  at::Tensor cT = gx.new_empty({B, H});            // [B,H]
  const int64_t kept = save ? T : 1;                  // steps whose gates and cells are kept
  at::Tensor gates = gx.new_empty({kept, B, 4 * H});  // [T,B,4H]
  at::Tensor cells = gx.new_empty({kept, B, H});      // [T,B,H]
  at::Tensor r = gx.new_empty({proj ? B : 0, H});  // [B,H] o*tanh(c) before the projection
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const Fwd<scalar_t> f{gx.data_ptr<scalar_t>(),
                          w_hh.data_ptr<scalar_t>(),
                          proj ? w_hr.data_ptr<scalar_t>() : nullptr,
                          h0.data_ptr<scalar_t>(),
                          c0.data_ptr<scalar_t>(),
                          y.data_ptr<scalar_t>(),
                          hT.data_ptr<scalar_t>(),
                          cT.data_ptr<scalar_t>(),
                          gates.data_ptr<scalar_t>(),
                          cells.data_ptr<scalar_t>(),
                          r.data_ptr<scalar_t>(),
                          len,
                          T,
                          B,
                          H,
                          R,
                          reverse,
                          save,
                          io == at::kBFloat16};
    proj ? f.template run<true>() : f.template run<false>();
  };
  gx.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  if (!save)  // the activations with 0 steps (float, as kept: lstm.h)
    return {to_io(y, io), to_io(hT, io), to_io(cT, io), gx.new_empty({0, B, 4 * H}),
            gx.new_empty({0, B, H})};
  return {to_io(y, io), to_io(hT, io), to_io(cT, io), gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd(
    const at::Tensor& grad_y_in, const at::Tensor& grad_hT_in, const at::Tensor& grad_cT_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& w_hr_in, const at::Tensor& h0_in,
    const at::Tensor& c0_in, const std::optional<at::Tensor>& lengths, bool reverse,
    const at::Tensor& y_in, const at::Tensor& gates_in, const at::Tensor& cells_in) {
  check_layer(y_in, -1, w_hh_in, w_hr_in, h0_in, c0_in);
  const bool proj = w_hr_in.has_value() && w_hr_in->defined();
  const int64_t T = y_in.size(0), B = y_in.size(1), H = c0_in.size(1), R = h0_in.size(1);
  TORCH_CHECK(y_in.size(2) == R && gates_in.sizes() == at::IntArrayRef({T, B, 4 * H}) &&
                  cells_in.sizes() == at::IntArrayRef({T, B, H}),
              "rnnkernels lstm: y / gates / cells must be [T,B,R] / [T,B,4H] / [T,B,H] as "
              "lstm_fwd returns them, got ",
              y_in.sizes(), " ", gates_in.sizes(), " ", cells_in.sizes());
  TORCH_CHECK(grad_y_in.sizes() == y_in.sizes() && grad_hT_in.sizes() == h0_in.sizes() &&
                  grad_cT_in.sizes() == c0_in.sizes(),
              "rnnkernels lstm: grad_y / grad_hT / grad_cT must match y / h0 / c0 in shape");
  check_float_cpu({&y_in, &grad_y_in, &grad_hT_in, &grad_cT_in}, "lstm");
  const at::ScalarType io = y_in.scalar_type();
  check_saved_float({&gates_in, &cells_in}, io, "lstm: gates and cells");
  const at::Tensor grad_y = as_float(grad_y_in), grad_hT = as_float(grad_hT_in);
  const at::Tensor grad_cT = as_float(grad_cT_in), w_hh = as_float(w_hh_in);
  const at::Tensor w_hr = as_float(w_hr_in);
  const at::Tensor h0 = as_float(h0_in), c0 = as_float(c0_in), y = as_float(y_in);
  const at::Tensor gates = gates_in.contiguous(), cells = cells_in.contiguous();
  const std::vector<int64_t> len = valid_lengths(lengths, T, B, "lstm");
  const bool bf16 = bf16_gemms(io);  // the weight gradients by a bfloat16 GEMM
  const bool lengths_given = lengths.has_value() && lengths->defined();
  at::Tensor d_gx = y.new_empty({T, B, 4 * H});                // [T,B,4H]
  at::Tensor d_w_hh = y.new_empty({4 * H, R});                 // [4H,R]
  at::Tensor d_w_hr = proj ? y.new_empty({R, H}) : y.new_empty({0});  // [P,H]
  at::Tensor d_h0 = y.new_empty({B, R});                       // [B,R]
  at::Tensor d_c0 = y.new_empty({B, H});                       // [B,H]
  at::Tensor dh_t = y.new_empty({proj ? T : 0, B, R});         // [T,B,P] dL/dh_t
  at::Tensor hidden = y.new_empty({proj ? T : 0, B, H});       // [T,B,H] o*tanh(c_t)
  at::Tensor dr = y.new_empty({proj ? B : 0, H});              // [B,H]
  at::Tensor dh_next = y.new_empty({B, R});                    // [B,R]
  at::Tensor h_prev = y.new_empty({reverse && lengths_given ? T : 0, B, R});  // [T,B,R]
  d_h0.copy_(grad_hT);
  d_c0.copy_(grad_cT);
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const Bwd<scalar_t> b{grad_y.data_ptr<scalar_t>(),
                          w_hh.data_ptr<scalar_t>(),
                          proj ? w_hr.data_ptr<scalar_t>() : nullptr,
                          h0.data_ptr<scalar_t>(),
                          c0.data_ptr<scalar_t>(),
                          y.data_ptr<scalar_t>(),
                          gates.data_ptr<scalar_t>(),
                          cells.data_ptr<scalar_t>(),
                          d_gx.data_ptr<scalar_t>(),
                          d_h0.data_ptr<scalar_t>(),
                          d_c0.data_ptr<scalar_t>(),
                          dh_t.data_ptr<scalar_t>(),
                          hidden.data_ptr<scalar_t>(),
                          dr.data_ptr<scalar_t>(),
                          dh_next.data_ptr<scalar_t>(),
                          len,
                          T,
                          B,
                          H,
                          R,
                          reverse,
                          io == at::kBFloat16};
    proj ? b.template run<true>() : b.template run<false>();
    if (bf16) return;  // the weight gradients below, in bfloat16
    FlushDenormals flush;
    weight_grads(d_gx.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), len,
                 lengths_given, reverse, T, B, H, R, d_w_hh.data_ptr<scalar_t>(),
                 h_prev.data_ptr<scalar_t>());
    if (proj) {  // d_w_hr = dh_t^T (o * tanh c) over all T*B rows
      if (T * B == 0)
        d_w_hr.zero_();
      else
        gemm(true, false, R, H, T * B, scalar_t(1), dh_t.data_ptr<scalar_t>(), R,
             hidden.data_ptr<scalar_t>(), H, scalar_t(0), d_w_hr.data_ptr<scalar_t>(), H);
    }
  };
  y.scalar_type() == at::kFloat ? run(float{}) : run(double{});
  const at::Tensor d_gx_io = to_io(d_gx, io);
  if (bf16) {  // by torch's bfloat16 GEMM, on d_gx rounded (bf16_gemms, panel_gemm.h)
    const at::Tensor h_prev = previous_states(y_in.contiguous(), h0_in.contiguous(), len, reverse);
    d_w_hh = d_gx_io.view({T * B, 4 * H}).t().mm(h_prev.view({T * B, R}));
    if (proj)  // d_w_hr = dh_t^T (o * tanh c) over all T*B rows
      d_w_hr = to_io(dh_t, io).view({T * B, R}).t().mm(to_io(hidden, io).view({T * B, H}));
  }
  return {d_gx_io, to_io(d_w_hh, io), to_io(d_w_hr, io), to_io(d_h0, io), to_io(d_c0, io)};
}

}  // namespace v0
}  // namespace rnnkernels
