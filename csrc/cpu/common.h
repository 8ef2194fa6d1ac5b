// What the CPU kernels of every cell share: denormal flushing, vectorisable activations, lengths,
// argument checks and the BLAS GEMM. Internal header (not installed).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define RNNKERNELS_HAVE_MXCSR 1
#endif

// The Fortran BLAS that libtorch_cpu exports (MKL on x86-64 wheels): called directly, a small
// per-step GEMM costs well under a microsecond of overhead, where at::mm costs several.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));  // MKL only; null elsewhere
}

// Runtime ISA dispatch for the pointwise step loops: GCC compiles a marked function for AVX-512,
// AVX2+FMA and baseline x86-64 and picks one at load time (an ifunc), so a portable build still
// runs wide vectors where the CPU has them. Functions it calls must be inline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNKERNELS_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNNKERNELS_MULTIVERSION
#endif

namespace rnnkernels {
inline namespace v0 {
namespace detail {

// Gradients decaying through small weights turn denormal and slow a loop ~100x: flush them to
// zero in this thread while a kernel runs, then restore the caller's mode. Create one per
// parallel_for body (pool threads have their own mode).
struct FlushDenormals {
#ifdef RNNKERNELS_HAVE_MXCSR
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// float tanh as a branch-free rational function (Eigen's coefficients, |error| < 4e-7) so step
// loops vectorise: glibc's tanhf is a scalar call of ~40 ns here. NaN passes every comparison.
inline float tanh_(float x) {
  constexpr float clamp = 7.90531110763549805f;  // beyond it p/q is 1 to float precision
  const float xc = x > clamp ? clamp : (x < -clamp ? -clamp : x), x2 = xc * xc;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const float r = xc * p / q;  // computed unconditionally so the select if-converts
  return std::fabs(x) < 0.0004f ? x : r;
}
inline double tanh_(double x) { return std::tanh(x); }  // fp64 keeps libm's accuracy

// sigmoid(x) = (1 + tanh(x/2)) / 2: vectorises with tanh_, no exp overflow for large |x|.
inline float sigmoid_(float x) { return 0.5f + 0.5f * tanh_(0.5f * x); }
inline double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Small step GEMMs run faster on one thread than split (a fork/join per step costs more than it
// saves, and stalls when the other core is busy). While alive and `one` is set, this thread's BLAS
// calls use one thread; release() (or the destructor) restores the caller's setting. MKL's sgemm_
// under a local count of 1 also sets this thread's OpenMP count (torch.get_num_threads()) to 1
// and leaves it so: that is restored too, or every later torch op on the thread ran on one.
struct OneBlasThread {
  int saved = -1, openmp_threads = -1;
  explicit OneBlasThread(bool one) {
    if (!one || !MKL_Set_Num_Threads_Local) return;
#ifdef _OPENMP
    openmp_threads = omp_get_max_threads();
#endif
    saved = MKL_Set_Num_Threads_Local(1);
  }
  void release() {
    if (saved < 0) return;
    MKL_Set_Num_Threads_Local(saved);
#ifdef _OPENMP
    omp_set_num_threads(openmp_threads);
#endif
    saved = -1;
  }
  ~OneBlasThread() { release(); }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;
};

// The rows of a batch are independent recurrences: body(b0, b1) runs every time step for the
// rows [b0, b1). With one chunk of rows per thread, each thread runs its chunk's whole time loop
// with no synchronisation between steps (a split step costs two parallel regions); the chunks
// are used only when every thread gets at least 4 rows (the AVX2 GEMM's register block) and one
// row per 64 KiB of the step GEMM's weights, which each thread then reads every step (else a
// chunk's GEMM turns bandwidth-bound). Otherwise each step is split (for_rows, StepWeight).
// Chunks end on whole register blocks and carry equal shares of the valid steps (sum of len),
// so a batch with unequal lengths keeps both threads busy to the end.
// Two threads here: LSTM T=200 B=8 H=64 forward 0.97 -> 0.54 ms, T=512 B=16 H=128 14 -> 10 ms.
template <typename F>
void for_batch_chunks(const std::vector<int64_t>& len, int64_t weight_bytes, const F& body) {
  const int64_t B = int64_t(len.size()), threads = at::get_num_threads();
  const int64_t min_rows = std::max<int64_t>(4, weight_bytes >> 16);
  if (threads < 2 || B < threads * min_rows || at::in_parallel_region()) return body(0, B);
  std::vector<int64_t> cost(B + 1, 0);  // cost[b]: valid steps of rows [0, b), each at least 1
  for (int64_t b = 0; b < B; ++b) cost[b + 1] = cost[b] + std::max<int64_t>(len[b], 1);
  std::vector<int64_t> ends(threads + 1, 0);
  ends[threads] = B;
  for (int64_t c = 1; c < threads; ++c) {  // the block boundary nearest an equal share
    const int64_t target = cost[B] * c / threads;
    int64_t end = ends[c - 1];
    while (end + 4 < B && cost[end + 4] <= target) end += 4;
    if (end + 4 < B && cost[end + 4] - target < target - cost[end]) end += 4;
    ends[c] = end;
  }
  at::parallel_for(0, threads, 1, [&](int64_t c0, int64_t c1) {
    FlushDenormals flush;  // pool threads have their own FP mode
    for (int64_t c = c0; c < c1; ++c) body(ends[c], ends[c + 1]);
  });
}

// Runs body(begin, end) over the rows [b0, b1) of one step: split over the pool when the step's
// pointwise work (row_work elements a row) repays a parallel region (microseconds), else on this
// thread, as always inside a batch chunk. Each part flushes denormals in its own thread.
template <typename F>
void for_rows(int64_t b0, int64_t b1, int64_t row_work, const F& body) {
  constexpr int64_t min_parallel_work = 16384;
  if (b1 - b0 < 2 || (b1 - b0) * row_work < min_parallel_work || at::get_num_threads() < 2 ||
      at::in_parallel_region())
    return body(b0, b1);
  const int64_t grain = std::max<int64_t>(1, min_parallel_work / 4 / row_work);
  at::parallel_for(b0, b1, grain, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    body(begin, end);
  });
}

// The rows of [b0, b1) valid at step t: [lo, hi) spans them; dense when every row in it is valid.
struct StepRows {
  int64_t lo = 0, hi = 0;
  bool dense = true;
  StepRows(const std::vector<int64_t>& len, int64_t t, int64_t b0, int64_t b1) : lo(b0), hi(b1) {
    while (lo < hi && len[lo] <= t) ++lo;
    while (hi > lo && len[hi - 1] <= t) --hi;
    for (int64_t b = lo; b < hi && dense; ++b) dense = len[b] > t;
  }
  int64_t n() const { return hi - lo; }
};

// Valid steps per sequence, clipped to [0, T]; all T when lengths is absent.
inline std::vector<int64_t> valid_lengths(const std::optional<at::Tensor>& lengths, int64_t T,
                                          int64_t B, const char* cell) {
  std::vector<int64_t> len(B, T);
  if (lengths.has_value() && lengths->defined()) {
    const at::Tensor l = lengths->contiguous();
    TORCH_CHECK(l.scalar_type() == at::kLong && l.dim() == 1 && l.size(0) == B, "rnnkernels ",
                cell, ": lengths must be int64 [B=", B, "], got ", l.scalar_type(), " ",
                l.sizes());
    TORCH_CHECK(l.device().is_cpu(), "rnnkernels ", cell, ": lengths must be on the CPU");
    const int64_t* p = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) len[b] = std::clamp<int64_t>(p[b], 0, T);
  }
  return len;
}

// Every tensor on the CPU with the dtype of the first: float32, float64, bfloat16 or float16.
inline void check_float_cpu(std::initializer_list<const at::Tensor*> tensors, const char* cell) {
  const at::ScalarType dtype = (*tensors.begin())->scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              "rnnkernels ", cell,
              " (cpp): only float32, float64, bfloat16 and float16 are supported, got ", dtype);
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), "rnnkernels ", cell, " (cpp): tensors must be on the CPU");
    TORCH_CHECK(t->scalar_type() == dtype, "rnnkernels ", cell,
                ": all tensors must share one dtype, got ", dtype, " and ", t->scalar_type());
  }
}

// bfloat16 and float16 layers (docs/design.md, "Mixed precision") run the float kernels: their
// tensors are converted to float at the op boundary (as_float; exact, both types being subsets
// of float), the kernels accumulate, keep the state and do every pointwise step in float, and
// the outputs are rounded back (to_io). The GEMMs read the converted weights, except for the
// bfloat16 step GEMMs on a CPU with AVX512_BF16, which take bfloat16 operands (step_weight.h).
// What this costs over kernels that read and write the half type in place: one float copy of each
// input (gx: [T,B,G] x 4 bytes, transient) and a float output rounded once: measured on the same
// GEMM path (avx512), LSTM T=100 B=32 H=256 forward, one Zen 4 thread, 19.1-20.2 ms in bf16
// against 18.5-18.9 on float tensors (CPU time), so a fused conversion would gain ~5%.
inline bool is_half(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }
inline at::Tensor as_float(const at::Tensor& t) {
  return (is_half(t.scalar_type()) ? t.to(at::kFloat) : t).contiguous();
}
// The activations a forward saves for its backward (gates, cells) are float in a half layer:
// rounding them would put a half type's error into every gradient (their memory: 4 bytes an
// element where the half type's would be 2, e.g. LSTM 5H floats per step and row).
inline void check_saved_float(std::initializer_list<const at::Tensor*> saved, at::ScalarType io,
                              const char* what) {
  const at::ScalarType expected = is_half(io) ? at::kFloat : io;
  for (const at::Tensor* t : saved)
    TORCH_CHECK(t->scalar_type() == expected && t->device().is_cpu(), "rnnkernels ", what,
                " must be ", expected, " CPU tensors for a ", io,
                " layer, as the forward returns them; got ", t->scalar_type());
}
// h_prev [T,B,R] in y's dtype: the state each step started from, as steps.previous_states
// builds it: forward y shifted one step down with h0 first; reverse y shifted up, h0 where a
// sequence starts (its last valid step). Rows past a sequence's end get some state; their
// gradients are zero.
inline at::Tensor previous_states(const at::Tensor& y, const at::Tensor& h0,
                                  const std::vector<int64_t>& len, bool reverse) {
  const int64_t T = y.size(0), B = y.size(1), bytes = y.size(2) * y.element_size();
  at::Tensor h_prev = y.new_empty(y.sizes());
  const char *src_y = static_cast<const char*>(y.data_ptr()),
             *src_h0 = static_cast<const char*>(h0.data_ptr());
  char* out = static_cast<char*>(h_prev.data_ptr());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const bool from_h0 = reverse ? t + 1 >= len[b] : t == 0;
      const int64_t from = reverse ? t + 1 : t - 1;
      const char* src = from_h0 ? src_h0 + b * bytes : src_y + (from * B + b) * bytes;
      std::memcpy(out + (t * B + b) * bytes, src, bytes);
    }
  return h_prev;
}

// A kernel's output in the layer's dtype `io` (no copy where it is the kernels' own).
inline at::Tensor to_io(const at::Tensor& t, at::ScalarType io) {
  return t.scalar_type() == io ? t : t.to(io);
}

// Row-major C[m,n] = alpha * op(A) op(B) + beta * C, op(X) = X^T when trans_X; lda/ldb/ldc are
// row strides. (Column-major BLAS computing C^T = op(B)^T op(A)^T.)
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  if (m == 0 || n == 0) return;
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int M = int(m), N = int(n), K = int(k), LDA = int(lda), LDB = int(ldb), LDC = int(ldc);
  sgemm_(&tb, &ta, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
}
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                 double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int M = int(m), N = int(n), K = int(k), LDA = int(lda), LDB = int(ldb), LDC = int(ldc);
  dgemm_(&tb, &ta, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
}

}  // namespace detail
}  // namespace v0
}  // namespace rnnkernels
