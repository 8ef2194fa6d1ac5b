// Our float GEMM for x86-64: C[rows,n] = A[rows,k] op(W) (+ bias) (+ C), with op(W) packed once
// into panels of `width` columns ([k][width] each, zero-padded) that a register block walks down,
// a few rows of A at a time. Used by the step GEMMs (step_weight.h) and the input projection
// (linear.cpp). Two micro-kernels, chosen at run time (cpu_gemm):
//
// - AVX-512 (avx512f): 6 rows x 64 columns, 24 zmm accumulators of the 32, 4 panel loads and 6
//   broadcasts per 24 FMAs.
// - AVX2 + FMA: 4 rows x 24 columns, 12 ymm accumulators of the 16, 3 loads and 4 broadcasts per
//   12 FMAs.
//
// Measured on a 2-vCPU AMD EPYC Zen 4 (AVX-512 on 256-bit units, so a zmm FMA costs two ymm
// slots and the FMA peak is the same for both widths: 117 GFLOP/s per core, either one), one
// thread, GFLOP/s of repeated step GEMMs [rows,k] x [k,n] with W packed, the best of several
// blocks tried (6x64, 8x48, 12x32, 14x16, 4x96; /tmp microbenchmark, not in the repository):
//
//   rows x k x n         AVX2 4x24   AVX-512 6x64
//   16 x 256 x 1024        109-112      112
//   8 x 128 x 512          104          106
//   32 x 512 x 2048        104-108      110-112
//   1 x 256 x 512           43-44        55
//   4 x 1024 x 2048        112          115
//   4 x 64 x 256           104          115
//   2 x 128 x 384           78           91
//   3200 x 256 x 1024       94-98       110   (the input projection of T=100 B=32 H=256)
//   3200 x 1024 x 256       64          105-109
//
// So on Zen 4 the wider kernel gains little where the AVX2 one already runs at 90-95% of the
// peak, and 10-25% where it does not: one or two rows (B=1 and the last rows of a chunk, where 4
// accumulators cannot hide the FMA latency), small n, and the large input projection (fewer
// loads per FMA). Row blocks are balanced (7 rows run as 4 + 3, not 6 + 1).
//
// Intel CPUs with AVX-512 (two 512-bit FMA units on most Xeons) keep MKL's packed GEMM by
// default (step_weight.h), expected to be faster there than this kernel and not measurable here:
// an explicit choice, which RNNKERNELS_CPU_ISA overrides.
//
// bfloat16 layers (docs/design.md, "Mixed precision"): on a CPU with AVX512_BF16 their step GEMMs
// take bfloat16 operands (bf16_block: vdpbf16ps, W packed in pairs along k, A rounded per call);
// on the other paths the float kernels on the layer's weights converted to float.
//
// RNNKERNELS_CPU_ISA (read at every call, so a test can set it): unset, empty or "auto" = the
// choice above (avx512bf16 on a non-Intel CPU with AVX512_BF16); "avx512bf16" = the AVX-512 kernel
// and the bfloat16 one for bfloat16 layers; "avx512" / "avx2" = our float kernel for that ISA (an
// error where the CPU lacks it);
// "blas" = no kernel of ours (the step GEMMs use MKL's packed GEMM where libtorch exports it, else
// plain BLAS gemm; the input projection is torch's addmm). Anything else is an error. Only the
// GEMMs follow it: the pointwise loops pick their ISA by themselves (RNNKERNELS_MULTIVERSION).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "common.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>  // madvise
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RNNKERNELS_PANEL_GEMM 1
#endif

namespace rnnkernels {
inline namespace v0 {
namespace detail {

// avx512bf16: the AVX-512 kernel for float GEMMs, and bfloat16 operands (vdpbf16ps) for the step
// GEMMs of bfloat16 layers; every other path runs a bfloat16 layer's GEMMs on float operands.
enum class CpuGemm { blas, avx2, avx512, avx512bf16 };

#ifdef RNNKERNELS_PANEL_GEMM
// What the CPU runs: AVX-512 (F) and its BF16 dot product, AVX2 with FMA, or neither.
inline bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}
inline bool cpu_has_avx512bf16() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
inline bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

// The GEMM path in force: RNNKERNELS_CPU_ISA (see the top of this file), else the automatic one.
inline CpuGemm cpu_gemm() {
  const char* env = std::getenv("RNNKERNELS_CPU_ISA");
  const std::string_view forced = env ? env : "";
#ifdef RNNKERNELS_PANEL_GEMM
  static const CpuGemm automatic = [] {
    if (cpu_has_avx512()) {
      if (__builtin_cpu_is("intel")) return CpuGemm::blas;
      return cpu_has_avx512bf16() ? CpuGemm::avx512bf16 : CpuGemm::avx512;
    }
    return cpu_has_avx2() ? CpuGemm::avx2 : CpuGemm::blas;
  }();
  if (forced.empty() || forced == "auto") return automatic;
  if (forced == "avx512bf16") {
    TORCH_CHECK_VALUE(cpu_has_avx512bf16(),
                      "RNNKERNELS_CPU_ISA=avx512bf16, but this CPU has no AVX512_BF16");
    return CpuGemm::avx512bf16;
  }
  if (forced == "avx512") {
    TORCH_CHECK_VALUE(cpu_has_avx512(),
                      "RNNKERNELS_CPU_ISA=avx512, but this CPU has no AVX-512 (avx512f)");
    return CpuGemm::avx512;
  }
  if (forced == "avx2") {
    TORCH_CHECK_VALUE(cpu_has_avx2(), "RNNKERNELS_CPU_ISA=avx2, but this CPU has no AVX2 and FMA");
    return CpuGemm::avx2;
  }
#else
  if (forced.empty() || forced == "auto") return CpuGemm::blas;
  TORCH_CHECK_VALUE(forced != "avx512bf16" && forced != "avx512" && forced != "avx2",
                    "RNNKERNELS_CPU_ISA=", forced, ": this build has no x86-64 kernels");
#endif
  TORCH_CHECK_VALUE(forced == "blas",
                    "RNNKERNELS_CPU_ISA must be one of auto, avx512bf16, avx512, avx2, blas; got '",
                    forced, "'");
  return CpuGemm::blas;
}

// Whether a layer of dtype io runs its large GEMMs (input projection, weight gradients) in
// bfloat16 by torch's GEMM (oneDNN's AVX512_BF16 kernel: 162 GFLOP/s on one Zen 4 core, where
// MKL's float sgemm runs at ~90 and our float kernel at ~106): a bfloat16 layer on the
// avx512bf16 path. Elsewhere they run in float on float copies.
inline bool bf16_gemms(c10::ScalarType io) {
  return io == c10::ScalarType::BFloat16 && cpu_gemm() == CpuGemm::avx512bf16;
}

#ifdef RNNKERNELS_PANEL_GEMM
// One register block: C[R, :cols] = A[R, :k] panel[:k, :cols] + init (+ C when accumulate),
// init = the bias of the panel's columns (padded to its width) or null for 0. Without
// accumulate, C is never read (it may hold NaN).
using Block = void (*)(int64_t k, const float* a, int64_t lda, const float* panel,
                       const float* init, bool accumulate, float* c, int64_t ldc, int64_t cols);

// C[R, :cols] = acc (+ C when accumulate), for the AVX-512 blocks.
template <int R>
__attribute__((target("avx512f"))) inline void avx512_store(const __m512 (&acc)[R][4],
                                                             bool accumulate, float* c,
                                                             int64_t ldc, int64_t cols) {
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int64_t left = cols - 16 * v;
      if (left <= 0) break;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      __m512 out = acc[r][v];
      if (accumulate) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(m, cr + 16 * v));
      _mm512_mask_storeu_ps(cr + 16 * v, m, out);
    }
  }
}

// AVX-512: R = 1..6 rows x 64 columns. The accumulators are an array that the unrolled loops
// keep in registers; R is a template argument so blocks of fewer rows (B=1, a chunk's last rows)
// do not pay for 6.
template <int R>
__attribute__((target("avx512f"))) void avx512_block(int64_t k, const float* a, int64_t lda,
                                                     const float* panel, const float* init,
                                                     bool accumulate, float* c, int64_t ldc,
                                                     int64_t cols) {
  static_assert(R >= 1 && R <= 6);
  constexpr int V = 4, W = 16 * V;
  __m512 acc[R][V];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[r][v] = init ? _mm512_load_ps(init + 16 * v) : _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const float* p = panel + i * W;
    __m512 b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) b[v] = _mm512_load_ps(p + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + i]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
    }
  }
  avx512_store<R>(acc, accumulate, c, ldc, cols);
}

// bfloat16 operands, for vdpbf16ps (AVX512_BF16), which adds the products of a pair of bfloat16
// to each float lane: A's rows and the panels hold pairs along k as 32-bit words (low half the
// even k), odd k padded with 0; k2 = the pairs. The block walks 6 rows x 64 columns as the float
// one, two k a step: half the instructions (Zen 4 runs vdpbf16ps at the FMA's rate).
template <int R>
__attribute__((target("avx512f,avx512bf16"))) void bf16_block(int64_t k2, const float* a_words,
                                                               int64_t lda, const float* panel,
                                                               const float* init, bool accumulate,
                                                               float* c, int64_t ldc,
                                                               int64_t cols) {
  static_assert(R >= 1 && R <= 6);
  constexpr int V = 4, W = 16 * V;
  const auto* a = reinterpret_cast<const int*>(a_words);
  __m512 acc[R][V];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[r][v] = init ? _mm512_load_ps(init + 16 * v) : _mm512_setzero_ps();
  for (int64_t i = 0; i < k2; ++i) {
    const float* p = panel + i * W;
    __m512bh b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) b[v] = (__m512bh)_mm512_load_si512(p + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(a[r * lda + i]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
  avx512_store<R>(acc, accumulate, c, ldc, cols);
}

// out[0, (n+1)/2) = x[0, n) rounded to bfloat16 (to nearest even) as pairs along n (the layout
// of bf16_block's A and panels), the last pair padded with 0 for odd n.
__attribute__((target("avx512f,avx512bf16"))) inline void bf16_pairs(const float* x, int64_t n,
                                                                      float* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512(out + i / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16),
                                                                  _mm512_loadu_ps(x + i)));
  if (i == n) return;
  const int64_t left = n - i, words = (left + 1) / 2;
  auto mask = [](int64_t m) { return m >= 16 ? __mmask16(0xffff) : __mmask16((1u << m) - 1); };
  const __m512 lo = _mm512_maskz_loadu_ps(mask(left), x + i);
  const __m512 hi = _mm512_maskz_loadu_ps(mask(std::max<int64_t>(left - 16, 0)), x + i + 16);
  _mm512_mask_storeu_epi32(out + i / 2, mask(words), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// The panel words of k-pair i2 for `cols` (<= 16) columns: W[2 i2][j] in the low half, W[2 i2 +
// 1][j] (0 where hi is null: odd k) in the high half. lo, hi: the two rows of W [k,n] at the
// panel's column.
__attribute__((target("avx512f,avx512bf16"))) inline void bf16_pairs_of_rows(const float* lo,
                                                                              const float* hi,
                                                                              int64_t cols,
                                                                              float* out) {
  const __mmask16 m = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  const __m512 l = _mm512_maskz_loadu_ps(m, lo);
  const __m512 h = hi ? _mm512_maskz_loadu_ps(m, hi) : _mm512_setzero_ps();
  const __m512i lw = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(l));
  const __m512i hw = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(h));
  _mm512_mask_storeu_epi32(out, m, _mm512_or_si512(lw, _mm512_slli_epi32(hw, 16)));
}

// AVX2 + FMA: R = 1..4 rows x 24 columns. The accumulators are named, row by row, not an array:
// GCC kept an array of them on the stack, storing it every iteration (half the speed).
template <int R>
__attribute__((target("avx2,fma"))) void avx2_block(int64_t k, const float* a, int64_t lda,
                                                    const float* panel, const float* init,
                                                    bool accumulate, float* c, int64_t ldc,
                                                    int64_t cols) {
  static_assert(R >= 1 && R <= 4);
  constexpr int64_t W = 24;
  const float* a0 = a;
  const float* a1 = a + (R > 1 ? lda : 0);
  const float* a2 = a + (R > 2 ? 2 * lda : 0);
  const float* a3 = a + (R > 3 ? 3 * lda : 0);
  const __m256 i0 = init ? _mm256_load_ps(init) : _mm256_setzero_ps();
  const __m256 i1 = init ? _mm256_load_ps(init + 8) : _mm256_setzero_ps();
  const __m256 i2 = init ? _mm256_load_ps(init + 16) : _mm256_setzero_ps();
  __m256 c00 = i0, c01 = i1, c02 = i2, c10 = i0, c11 = i1, c12 = i2, c20 = i0, c21 = i1, c22 = i2,
         c30 = i0, c31 = i1, c32 = i2;
  for (int64_t i = 0; i < k; ++i) {
    const float* p = panel + i * W;
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
  alignas(32) float out[4][W];
  _mm256_store_ps(out[0], c00), _mm256_store_ps(out[0] + 8, c01), _mm256_store_ps(out[0] + 16, c02);
  _mm256_store_ps(out[1], c10), _mm256_store_ps(out[1] + 8, c11), _mm256_store_ps(out[1] + 16, c12);
  _mm256_store_ps(out[2], c20), _mm256_store_ps(out[2] + 8, c21), _mm256_store_ps(out[2] + 16, c22);
  _mm256_store_ps(out[3], c30), _mm256_store_ps(out[3] + 8, c31), _mm256_store_ps(out[3] + 16, c32);
  for (int64_t r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    if (accumulate)
      for (int64_t j = 0; j < cols; ++j) cr[j] += out[r][j];
    else
      std::copy_n(out[r], cols, cr);
  }
}

// A micro-kernel: its panel width, its largest row block and its blocks for 1..max_rows rows.
struct MicroKernel {
  int64_t width, max_rows;
  Block blocks[7];  // blocks[R] for R rows; [0] unused
};
inline constexpr MicroKernel kAvx512{64,
                                     6,
                                     {nullptr, avx512_block<1>, avx512_block<2>, avx512_block<3>,
                                      avx512_block<4>, avx512_block<5>, avx512_block<6>}};
inline constexpr MicroKernel kAvx512Bf16{64,
                                         6,
                                         {nullptr, bf16_block<1>, bf16_block<2>, bf16_block<3>,
                                          bf16_block<4>, bf16_block<5>, bf16_block<6>}};
inline constexpr MicroKernel kAvx2{
    24, 4, {nullptr, avx2_block<1>, avx2_block<2>, avx2_block<3>, avx2_block<4>, nullptr, nullptr}};

// Memory of packed operands, kept by each thread between calls (its kKeep largest recent
// buffers): a fresh buffer costs a page fault per 4 KiB page (4096 for a 16 MB packed W at
// H=1024) whenever the allocator returned it to the system; a kept one none (0 faults a call,
// measured). Large buffers ask for transparent huge pages (fewer faults and TLB misses where the
// system grants them on request). The memory stays with the thread until it exits (at most kKeep
// buffers; one over kKeepBytes is not kept).
class PanelMemory {
 public:
  // At least `bytes` (bytes is updated to the buffer's size, which release takes back).
  static float* acquire(size_t& bytes) { return cache().take(bytes); }
  static void release(float* p, size_t bytes) { cache().give(p, bytes); }

 private:
  static constexpr size_t kKeep = 3, kKeepBytes = size_t(256) << 20, kHuge = size_t(2) << 20;
  struct Buffer {
    float* p;
    size_t bytes;
  };
  Buffer kept_[kKeep] = {};
  static PanelMemory& cache() {
    thread_local PanelMemory memory;
    return memory;
  }
  float* take(size_t& bytes) {
    Buffer* best = nullptr;  // the smallest kept buffer that fits
    for (Buffer& b : kept_)
      if (b.p && b.bytes >= bytes && (!best || b.bytes < best->bytes)) best = &b;
    if (best) {
      bytes = best->bytes;
      return std::exchange(*best, Buffer{}).p;
    }
    const size_t align = bytes >= kHuge ? kHuge : 64, rounded = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    TORCH_CHECK(p, "rnnkernels: out of memory for a ", bytes, "-byte packed GEMM operand");
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: ignore a refusal
#endif
    bytes = rounded;
    return static_cast<float*>(p);
  }
  void give(float* p, size_t bytes) {
    Buffer* slot = nullptr;  // an empty slot, else the smallest kept buffer if smaller than p
    for (Buffer& b : kept_)
      if (!b.p || !slot || (slot->p && b.bytes < slot->bytes)) slot = &b;
    if (bytes > kKeepBytes || (slot->p && slot->bytes >= bytes)) return std::free(p);
    std::free(slot->p);
    *slot = Buffer{p, bytes};
  }
  ~PanelMemory() {
    for (Buffer& b : kept_) std::free(b.p);
  }
};

// out[q * ldo + r] = in[r * ldi + q] for an 8x8 block (AVX: 8 loads, 24 shuffles, 8 stores).
__attribute__((target("avx2"))) inline void transpose8x8(const float* in, int64_t ldi, float* out,
                                                          int64_t ldo) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * ldi);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// op(W) (and a bias) packed for one micro-kernel. op(W) = W^T with W [n,k] (trans), else W
// [k,n]; ld is W's row stride. Packing is split over torch's pool from 128 KiB of panels. W^T is
// packed by 8x8 transposes (a scalar loop writing a panel column at a time ran at ~5 GB/s,
// 0.18 ms for a 1 MB W, as long as a 100-row GEMM with it); W by row copies. With bf16 (isa
// avx512bf16 only), W rounded to bfloat16 pairs for bf16_block: gemm() then takes A as pairs too
// (bf16_pairs), its k the pairs.
class PackedPanels {
 public:
  PackedPanels(CpuGemm isa, const float* w, bool trans, int64_t ld, int64_t n, int64_t k,
               const float* bias = nullptr, bool bf16 = false)
      : mk_(bf16 ? kAvx512Bf16 : isa == CpuGemm::avx2 ? kAvx2 : kAvx512),
        n_(n),
        k_(bf16 ? (k + 1) / 2 : k),
        k_in_(k) {
    TORCH_CHECK(!bf16 || isa == CpuGemm::avx512bf16,
                "rnnkernels: bfloat16 panels need the avx512bf16 GEMM path");
    k = k_;  // the panels' rows: k, or its pairs
    const int64_t width = mk_.width, panels = this->panels();
    const int64_t panel_floats = k * width, bias_floats = bias ? panels * width : 0;
    bytes_ = size_t(panels * panel_floats + bias_floats) * 4 + 64;
    data_ = PanelMemory::acquire(bytes_);
    if (bias) {
      bias_ = data_ + panels * panel_floats;
      std::fill_n(bias_, bias_floats, 0.f);
      std::copy_n(bias, n, bias_);
    }
    const int64_t grain =
        std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, panel_floats));
    at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t col = p * width, cols = std::min(width, n - col);
        if (cols < width) std::fill_n(data_ + p * panel_floats, panel_floats, 0.f);
        if (bf16)
          pack_bf16(w, trans, ld, col, cols, data_ + p * panel_floats);
        else if (trans)
          pack_transposed(w + col * ld, ld, cols, data_ + p * panel_floats);
      }
      if (bf16) return;
      // W [k,n]: panel row i is columns [col, col + cols) of row i of W. 16 rows of W at a time
      // across the panels: one panel at a time down all k rows read W ld floats apart (a new
      // page every row for large W: 4.6 ms for a 16 MB W).
      for (int64_t i0 = 0; !trans && i0 < k; i0 += 16)
        for (int64_t p = begin; p < end; ++p) {
          const int64_t col = p * width, cols = std::min(width, n - col);
          for (int64_t i = i0; i < std::min(i0 + 16, k); ++i)
            std::copy_n(w + i * ld + col, cols, data_ + p * panel_floats + i * width);
        }
    });
  }
  ~PackedPanels() { PanelMemory::release(data_, bytes_); }
  PackedPanels(const PackedPanels&) = delete;
  PackedPanels& operator=(const PackedPanels&) = delete;

  int64_t panels() const { return (n_ + mk_.width - 1) / mk_.width; }
  int64_t max_rows() const { return mk_.max_rows; }  // rows of the largest register block

  // C[rows, columns of panels [p0, p1)] = A op(W) (+ bias) (+ C): panel by panel, each walked
  // down by balanced row blocks (7 rows as 4 + 3, not 6 + 1), A's rows re-read from cache.
  void gemm(int64_t p0, int64_t p1, int64_t rows, const float* a, int64_t lda, bool accumulate,
            float* c, int64_t ldc) const {
    const int64_t width = mk_.width, blocks = (rows + mk_.max_rows - 1) / mk_.max_rows;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t col = p * width, cols = std::min(width, n_ - col);
      const float* panel = data_ + col * k_;
      const float* init = bias_ ? bias_ + col : nullptr;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t r0 = rows * b / blocks, r1 = rows * (b + 1) / blocks;
        mk_.blocks[r1 - r0](k_, a + r0 * lda, lda, panel, init, accumulate, c + r0 * ldc + col,
                            ldc, cols);
      }
    }
  }

 private:
  // panel[i * width + j] = w[j * ld + i] for j < cols (rows of W), i < k: whole 8x8 blocks by
  // transposes, the edges one by one.
  void pack_transposed(const float* w, int64_t ld, int64_t cols, float* panel) const {
    const int64_t width = mk_.width, k8 = k_ / 8 * 8, cols8 = cols / 8 * 8;
    for (int64_t j = 0; j < cols8; j += 8) {
      for (int64_t i = 0; i < k8; i += 8)
        transpose8x8(w + j * ld + i, ld, panel + i * width + j, width);
      for (int64_t i = k8; i < k_; ++i)
        for (int64_t jj = j; jj < j + 8; ++jj) panel[i * width + jj] = w[jj * ld + i];
    }
    for (int64_t j = cols8; j < cols; ++j)
      for (int64_t i = 0; i < k_; ++i) panel[i * width + j] = w[j * ld + i];
  }

  // The panel of columns [col, col + cols) in bfloat16 pairs along k (bf16_block's layout).
  __attribute__((target("avx512f,avx512bf16"))) void pack_bf16(const float* w, bool trans,
                                                               int64_t ld, int64_t col,
                                                               int64_t cols, float* panel) const {
    const int64_t width = mk_.width;
    if (trans) {  // a row of W at a time into pairs, then down the panel's column
      std::vector<float> pairs(k_ + 16);
      for (int64_t j = 0; j < cols; ++j) {
        bf16_pairs(w + (col + j) * ld, k_in_, pairs.data());
        for (int64_t i = 0; i < k_; ++i) panel[i * width + j] = pairs[i];
      }
      return;
    }
    for (int64_t i = 0; i < k_; ++i) {  // W [k,n]: rows 2i and 2i + 1, 16 columns at a time
      const float* lo = w + 2 * i * ld + col;
      const float* hi = 2 * i + 1 < k_in_ ? lo + ld : nullptr;
      for (int64_t j = 0; j < cols; j += 16)
        bf16_pairs_of_rows(lo + j, hi ? hi + j : nullptr, std::min<int64_t>(16, cols - j),
                           panel + i * width + j);
    }
  }

  const MicroKernel& mk_;
  int64_t n_, k_, k_in_;  // k_: the panels' rows (k, or its pairs), k_in_: W's k
  size_t bytes_;
  float* data_ = nullptr;  // the panels, then the padded bias
  float* bias_ = nullptr;
};

#endif

}  // namespace detail
}  // namespace v0
}  // namespace rnnkernels
