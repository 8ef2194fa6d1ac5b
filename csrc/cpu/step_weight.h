// The recurrent GEMM of one time step, C[rows,n] = A[rows,k] op(W) + beta C, with the constant
// operand W prepared once per layer call (StepWeight). Shared by the LSTM and GRU kernels.
//
// float, by the GEMM path in force (cpu_gemm, panel_gemm.h: RNNKERNELS_CPU_ISA, else by CPU):
// - AVX-512 (not Intel's) or AVX2+FMA: our kernel (panel_gemm.h). op(W) is packed into panels of
//   64 (AVX-512) or 24 (AVX2) columns, walked down by register blocks of up to 6 or 4 rows; a
//   split step (split_step_gemm) divides the panels over torch's pool.
// - Intel with AVX-512 (two 512-bit FMA units on most Xeons), or RNNKERNELS_CPU_ISA=blas: MKL's
//   packed GEMM (sgemm_pack / sgemm_compute, exported by libtorch_cpu), expected to be faster there
//   than our kernel: an explicit choice, not measured (no such CPU here).
// - Otherwise, and for double: plain BLAS gemm.
// - A bfloat16 layer on the avx512bf16 path: bf16_block (vdpbf16ps), ~205 GFLOP/s on one Zen 4
//   core: LSTM T=100 B=32 H=256 forward 12.7 ms, against 18.5 on the float avx512 kernel (one
//   thread, CPU time).
// Measured history. The AVX2 panels on a 2-core Zen 3 EPYC ran step GEMMs 1.1-1.5x faster than
// MKL's packed sgemm_compute on one thread ([32,256]x[256,1024] 181 vs 223 us; [32,1024]x
// [1024,256] 178 vs 206 us; [8,64]x[64,256] 3.1 vs 4.3 us), layer ops on two threads up to 1.3x
// faster (LSTM T=100 B=32 H=256 forward 14-16 vs 17-27 ms; GRU backward at H=512 4% slower). On
// a 2-vCPU AMD EPYC Zen 4 (AVX-512 on 256-bit units), layer ops on two threads ran 1.5-3x faster
// forward with the AVX2 panels than with MKL's packed GEMM (LSTM T=100 B=32 H=256 9.6-9.7 vs
// 14-24 ms, T=200 B=8 H=64 0.45-0.55 vs 1.0-1.8 ms, T=512 B=16 H=128 7.4-9.4 vs 12-15 ms). The
// AVX-512 kernel then took the Zen 4 layer ops (one thread, CPU time, min of 3 alternating runs,
// tools/cpu_layer_ops.py's shapes; LSTM forward / backward, ms) from the AVX2 panels': T=100 B=32
// H=256 19.9 / 37.5 -> 18.7 / 36.9; T=512 B=16 H=128 15.5 / 27.3 -> 14.6 / 26.4; T=50 B=64
// H=512 73.6 / 138 -> 66.5 / 134; T=100 B=1 H=256 1.45 / 2.07 -> 1.27 / 1.79; T=100 B=4 H=1024
// 43.7 / 80.2 -> 36.4 / 76.8; T=200 B=8 H=64 0.75 / 1.27 -> 0.68 / 1.17 (the new build with the
// AVX2 kernel forced: forwards 19.2, 14.9, 68.3, 1.39, 41.7, 0.73: part of the gain is the
// faster packing of panel_gemm.h, the most at H=1024). The GEMM now runs at ~107 GFLOP/s of the
// core's 117 (FMA peak); the rest of a forward step is the pointwise pass (16% of the layer at
// H=256, 26% at H=128), bound by its memory traffic (gx in, gates, cells and y out: 3.1-3.4 ns an
// element streaming, 1.9 hot). Fusing it into the GEMM's sweep would save only the re-read of the
// step's gates from L2 (not tried).
#pragma once

#include <ATen/Parallel.h>

#include "common.h"
#include "panel_gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <vector>


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
// same policy with constants of their own (MIN_SPLIT_STEP_FLOPS, SPLIT_WEIGHT_BYTES in
// rnnkernels/ops/numba_jit.py).
inline bool split_step_gemm(int64_t rows, int64_t n, int64_t k, int64_t element_bytes) {
  return 2 * rows * n * k >= 2000000 || n * k * element_bytes > (512 << 10);
}

// A step GEMM's constant operand: row-major C[rows,n] = A[rows,k] op(W) + beta C, op(W) = W^T
// (W [n,k]) or W (W [k,n]), rows <= max_rows, beta 0 or 1; W is prepared once per layer call,
// for the GEMM path in force (cpu_gemm). bf16: a bfloat16 layer's (W holds bfloat16 values),
// whose GEMMs take bfloat16 operands on the avx512bf16 path (A rounded to bfloat16 at each call,
// W once: bf16_block, panel_gemm.h) and float ones on the others.
template <typename scalar_t>
class StepWeight {
 public:
  StepWeight(const scalar_t* w, bool trans, int64_t max_rows, int64_t n, int64_t k,
             bool bf16 = false)
      : w_(w), trans_(trans), n_(n), k_(k) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (max_rows * n * k == 0) return;
      const CpuGemm isa = cpu_gemm();
#ifdef RNNKERNELS_PANEL_GEMM
      if (isa != CpuGemm::blas) {
        bf16_ = bf16 && isa == CpuGemm::avx512bf16;
        panels_ =
            std::make_unique<PackedPanels>(isa, w, trans, trans ? k : n, n, k, nullptr, bf16_);
        return;
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
  ~StepWeight() { std::free(mkl_packed_); }
  StepWeight(const StepWeight&) = delete;
  StepWeight& operator=(const StepWeight&) = delete;

  void gemm(int64_t rows, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
            int64_t ldc) const {
    if (rows == 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
#ifdef RNNKERNELS_PANEL_GEMM
      if (panels_) {  // a large step splits the panels over the pool
        const bool accumulate = beta != 0;
        const int64_t panels = panels_->panels();
        if (bf16_) {  // A's rows as bfloat16 pairs, in this thread's buffer (rows x k/2 words)
          const int64_t pairs = (k_ + 1) / 2;
          thread_local std::vector<float> a_pairs;
          if (int64_t(a_pairs.size()) < rows * pairs + 16) a_pairs.resize(rows * pairs + 16);
          for (int64_t r = 0; r < rows; ++r) bf16_pairs(a + r * lda, k_, &a_pairs[r * pairs]);
          a = a_pairs.data();
          lda = pairs;
        }
        if (!split_step_gemm(rows, n_, k_, sizeof(float)) || at::get_num_threads() < 2) {
          panels_->gemm(0, panels, rows, a, lda, accumulate, c, ldc);
          return;
        }
        at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
          FlushDenormals flush;
          panels_->gemm(begin, end, rows, a, lda, accumulate, c, ldc);
        });
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
  const scalar_t* w_;
  bool trans_;
  int64_t n_, k_;
#ifdef RNNKERNELS_PANEL_GEMM
  std::unique_ptr<PackedPanels> panels_;  // our kernels (panel_gemm.h)
  bool bf16_ = false;                     // its panels hold bfloat16 pairs
#endif
  float* mkl_packed_ = nullptr;  // MKL's packed operand
};

}  // namespace detail
}  // namespace v0
}  // namespace rnnkernels
