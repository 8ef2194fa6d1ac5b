// The recurrent GEMM of one time step, C[rows,n] = A[rows,k] op(W) + beta C, with the constant
// operand W prepared once per layer call (StepWeight). Shared by the LSTM and GRU kernels.
//
// float on x86-64 with AVX2+FMA, unless the CPU is Intel's with AVX-512: our own kernel. op(W)
// is packed into panels of 24 columns ([k][24] each, zero-padded), and a 4x24 register block (12
// ymm accumulators, 3 panel loads and 4 broadcasts per 12 FMAs) walks 4 rows of A at a time down
// each panel (the last 1-3 rows in a block of their own size); a split step (split_step_gemm)
// divides the panels over torch's pool. On the development machine (a 2-core Zen 3 EPYC) it ran
// step GEMMs 1.1-1.5x faster than MKL's packed sgemm_compute on one thread ([32,256]x[256,1024]
// 181 vs 223 us; [32,1024]x[1024,256] 178 vs 206 us; [8,64]x[64,256] 3.1 vs 4.3 us), and layer
// ops on two threads up to 1.3x faster than with MKL (LSTM T=100 B=32 H=256 forward 14-16 vs
// 17-27 ms, T=512 B=16 H=128 13.7-14.3 vs 18.3-19.1 ms; GRU backward at H=512 4% slower).
// On a 2-vCPU AMD EPYC with AVX-512 (Zen 4, whose AVX-512 runs on 256-bit units), layer ops on
// two threads ran 1.5-3x faster forward with the panels than with MKL's packed GEMM (MKL ran at
// 134 GFLOP/s in torch.addmm there; tools/cpu_layer_ops.py, the two builds alternating: LSTM
// T=100 B=32 H=256 9.6-9.7 vs 14-24 ms, T=200 B=8 H=64 0.45-0.55 vs 1.0-1.8 ms, T=512 B=16 H=128
// 7.4-9.4 vs 12-15 ms). On Intel CPUs with AVX-512 (two 512-bit FMA units on most Xeons): MKL's
// packed GEMM (sgemm_pack / sgemm_compute, exported by libtorch_cpu), expected to be faster there
// than a 256-bit kernel, not measured. Without either, or for double: plain BLAS gemm.
#pragma once

#include <ATen/Parallel.h>

#include "common.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RNNKERNELS_AVX2_GEMM 1
#endif

// MKL's packed-GEMM API, which libtorch_cpu exports for float on x86-64. Weak, so a BLAS without
// it still links (the pointers are then null and plain gemm runs).
extern "C" {
size_t sgemm_pack_get_size_(const char* identifier, const int* m, const int* n, const int* k)
    __attribute__((weak));
void sgemm_pack_(const char* identifier, const char* trans, const int* m, const int* n,
                 const int* k, const float* alpha, const float* src, const int* ld, float* dest)
    __attribute__((weak));
void sgemm_compute_(const char* transa, const char* transb, const int* m, const int* n,
                    const int* k, const float* a, const int* lda, const float* b, const int* ldb,
                    const float* beta, float* c, const int* ldc) __attribute__((weak));
}

namespace rnnkernels {
inline namespace v0 {
namespace detail {

// Whether a step GEMM C[rows,n] = A[rows,k] op(W) is worth splitting over threads: from 2 MFLOP
// (below, a parallel region per step costs more than it saves: T=200 B=8 H=64 forward 1.4 -> 0.9
// ms on one thread), or when W exceeds 512 KiB (a core's L2 here), for then the split lets each
// core keep its share of W in its own L2 across steps where one core would stream all of W from
// L3 every step (2 threads, T=100, B=1 H=256 forward: LSTM 1.7-2.1 -> 1.5 ms, GRU 1.3-1.5 -> 1.1
// ms; at B=1 H=128, W in L2, the split was slower: 0.44 -> 0.56 ms). The Numba kernels keep the
// same policy with a threshold set separately, a FLOP count alone (MIN_THREADED_STEP_FLOPS in
// rnnkernels/ops/numba_jit.py).
inline bool split_step_gemm(int64_t rows, int64_t n, int64_t k, int64_t element_bytes) {
  return 2 * rows * n * k >= 2000000 || n * k * element_bytes > (512 << 10);
}

#ifdef RNNKERNELS_AVX2_GEMM
constexpr int64_t kPanel = 24;  // columns of op(W) per packed panel

// C[R, cols] = A[R, :k] panel[:k, :cols] + beta C, R = 1..4 rows, cols <= 24. beta == 0 never
// reads C (it may hold NaN). The accumulators are named, row by row, not an array: GCC kept an
// array of them on the stack, storing it every iteration (half the speed). R is a template
// argument so a step with fewer than 4 rows left (B=1 inference, a batch's last rows) does not
// pay for 4: its unused accumulators and FMAs compile away.
template <int R>
__attribute__((target("avx2,fma"))) inline void panel_block(int64_t k, const float* a,
                                                            int64_t lda, const float* panel,
                                                            float* c, int64_t ldc, float beta,
                                                            int64_t cols) {
  static_assert(R >= 1 && R <= 4);
  const float* a0 = a;
  const float* a1 = a + (R > 1 ? lda : 0);
  const float* a2 = a + (R > 2 ? 2 * lda : 0);
  const float* a3 = a + (R > 3 ? 3 * lda : 0);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
         c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  for (int64_t i = 0; i < k; ++i) {
    const float* p = panel + i * kPanel;
    const __m256 b0 = _mm256_load_ps(p), b1 = _mm256_load_ps(p + 8), b2 = _mm256_load_ps(p + 16);
    __m256 x = _mm256_broadcast_ss(a0 + i);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    c02 = _mm256_fmadd_ps(x, b2, c02);
    if constexpr (R > 1) {
      x = _mm256_broadcast_ss(a1 + i);
      c10 = _mm256_fmadd_ps(x, b0, c10);
      c11 = _mm256_fmadd_ps(x, b1, c11);
      c12 = _mm256_fmadd_ps(x, b2, c12);
    }
    if constexpr (R > 2) {
      x = _mm256_broadcast_ss(a2 + i);
      c20 = _mm256_fmadd_ps(x, b0, c20);
      c21 = _mm256_fmadd_ps(x, b1, c21);
      c22 = _mm256_fmadd_ps(x, b2, c22);
    }
    if constexpr (R > 3) {
      x = _mm256_broadcast_ss(a3 + i);
      c30 = _mm256_fmadd_ps(x, b0, c30);
      c31 = _mm256_fmadd_ps(x, b1, c31);
      c32 = _mm256_fmadd_ps(x, b2, c32);
    }
  }
  alignas(32) float out[4][kPanel];
  _mm256_store_ps(out[0], c00), _mm256_store_ps(out[0] + 8, c01), _mm256_store_ps(out[0] + 16, c02);
  _mm256_store_ps(out[1], c10), _mm256_store_ps(out[1] + 8, c11), _mm256_store_ps(out[1] + 16, c12);
  _mm256_store_ps(out[2], c20), _mm256_store_ps(out[2] + 8, c21), _mm256_store_ps(out[2] + 16, c22);
  _mm256_store_ps(out[3], c30), _mm256_store_ps(out[3] + 8, c31), _mm256_store_ps(out[3] + 16, c32);
  for (int64_t r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    if (beta == 0)
      std::copy_n(out[r], cols, cr);
    else
      for (int64_t j = 0; j < cols; ++j) cr[j] = out[r][j] + beta * cr[j];
  }
}

// panel_block<R> for R = 1..4 (index 0 unused).
using PanelBlock = void (*)(int64_t, const float*, int64_t, const float*, float*, int64_t, float,
                            int64_t);
constexpr PanelBlock kBlocks[5] = {nullptr, panel_block<1>, panel_block<2>, panel_block<3>,
                                   panel_block<4>};

// AVX2 and FMA, but not Intel's AVX-512: where panel_block beat MKL (see the top of this file).
inline bool use_panel_gemm() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           !(__builtin_cpu_supports("avx512f") && __builtin_cpu_is("intel"));
  }();
  return yes;
}
#endif

// A step GEMM's constant operand: row-major C[rows,n] = A[rows,k] op(W) + beta C, op(W) = W^T
// (W [n,k]) or W (W [k,n]), rows <= max_rows; W is prepared once per layer call.
template <typename scalar_t>
class StepWeight {
 public:
  StepWeight(const scalar_t* w, bool trans, int64_t max_rows, int64_t n, int64_t k)
      : w_(w), trans_(trans), n_(n), k_(k) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (max_rows * n * k == 0) return;
#ifdef RNNKERNELS_AVX2_GEMM
      if (use_panel_gemm()) {
        const int64_t panels = (n + kPanel - 1) / kPanel;
        panels_ = static_cast<float*>(std::aligned_alloc(64, panels * k * kPanel * 4 + 64));
        if (panels_) {
          pack_panels(w, trans, panels);
          return;
        }
      }
#endif
      if (!sgemm_pack_get_size_ || !sgemm_pack_ || !sgemm_compute_) return;
      const int N = int(n), M = int(max_rows), K = int(k), LD = int(trans ? k : n);
      const char id = 'A', t = trans ? 'T' : 'N';  // column-major: C^T = op(W)^T A^T: W is "A"
      const float one = 1;
      const size_t bytes = (sgemm_pack_get_size_(&id, &N, &M, &K) + 63) / 64 * 64;
      mkl_packed_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (mkl_packed_) sgemm_pack_(&id, &t, &N, &M, &K, &one, w, &LD, mkl_packed_);
    }
  }
  ~StepWeight() {
    std::free(panels_);
    std::free(mkl_packed_);
  }
  StepWeight(const StepWeight&) = delete;
  StepWeight& operator=(const StepWeight&) = delete;

  void gemm(int64_t rows, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
            int64_t ldc) const {
    if (rows == 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
#ifdef RNNKERNELS_AVX2_GEMM
      if (panels_) {
        panel_gemm(rows, a, lda, beta, c, ldc);
        return;
      }
#endif
      if (mkl_packed_) {  // the packed operand does not depend on the row count
        const char p = 'P', t = 'N';
        const int N = int(n_), M = int(rows), K = int(k_), LD = int(trans_ ? k_ : n_),
                  LDA = int(lda), LDC = int(ldc);
        sgemm_compute_(&p, &t, &N, &M, &K, mkl_packed_, &LD, a, &LDA, &beta, c, &LDC);
        return;
      }
    }
    detail::gemm(false, trans_, rows, n_, k_, scalar_t(1), a, lda, w_, trans_ ? k_ : n_, beta, c,
                 ldc);
  }

 private:
#ifdef RNNKERNELS_AVX2_GEMM
  // op(W) into the panels, split over the pool from 128 KiB of panels. Reads follow W's rows:
  // reading a column of W^T across 24 rows k floats apart (the old loop order) thrashed L1 when
  // k * 4 bytes is a multiple of 4 KiB, and packing a 4096 x 1024 W took 9.6 ms, 40% of an LSTM
  // layer at T=100 B=1 H=1024.
  void pack_panels(const float* w, bool trans, int64_t panels) {
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (k_ * kPanel));
    at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        float* panel = panels_ + p * k_ * kPanel;  // [k][24]
        const int64_t col = p * kPanel, cols = std::min(kPanel, n_ - col);
        if (cols < kPanel) std::fill_n(panel, k_ * kPanel, 0.f);
        if (trans) {  // W [n,k]: panel column j is row col + j of W
          for (int64_t j = 0; j < cols; ++j) {
            const float* row = w + (col + j) * k_;
            for (int64_t i = 0; i < k_; ++i) panel[i * kPanel + j] = row[i];
          }
        } else {  // W [k,n]: panel row i is columns [col, col + cols) of row i of W
          for (int64_t i = 0; i < k_; ++i) std::copy_n(w + i * n_ + col, cols, panel + i * kPanel);
        }
      }
    });
  }

  // Panels in order, 4 rows at a time down each; a large step splits the panels over the pool.
  void panel_gemm(int64_t rows, const float* a, int64_t lda, float beta, float* c,
                  int64_t ldc) const {
    const int64_t panels = (n_ + kPanel - 1) / kPanel;
    auto body = [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t col = p * kPanel, cols = std::min(kPanel, n_ - col);
        for (int64_t r = 0; r < rows; r += 4)
          kBlocks[std::min<int64_t>(4, rows - r)](k_, a + r * lda, lda, panels_ + col * k_,
                                                  c + r * ldc + col, ldc, beta, cols);
      }
    };
    if (!split_step_gemm(rows, n_, k_, sizeof(float)) || at::get_num_threads() < 2) {
      body(0, panels);
      return;
    }
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      FlushDenormals flush;
      body(begin, end);
    });
  }
#endif

  const scalar_t* w_;
  bool trans_;
  int64_t n_, k_;
  float* panels_ = nullptr;      // our packed panels (AVX2 without AVX-512)
  float* mkl_packed_ = nullptr;  // MKL's packed operand
};

}  // namespace detail
}  // namespace v0
}  // namespace rnnkernels
