// The fp32 FMA rate of this machine's cores: the ceiling of any fp32 kernel here, which the
// benchmark reports every provider's GFLOP/s against ("% peak", rnnkernels/bench/measure.py).
// A large matmul is no such ceiling: MKL's sgemm runs at 95-150 GFLOP/s on a 2-vCPU Zen 4 whose
// cores do ~117 GFLOP/s each, and torch's own LSTM (oneDNN) reads 119% of MKL's rate there.
//
// Each thread of torch's pool runs 12 independent chains of vector FMAs held in registers (an FMA
// has a latency of 4 cycles on Zen 4 and Intel cores, with 2 FMA pipes: 8 chains keep both busy),
// widest ISA first: AVX-512, else AVX2+FMA, else 0 (no FMA unit to measure).
#include <rnnkernels/peak.h>

#include <ATen/Parallel.h>

#include <chrono>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace rnnkernels {
inline namespace v0 {
namespace {

constexpr int64_t kChains = 12;

#if defined(__x86_64__) && defined(__GNUC__)
// The chains' FMAs: n rounds of 12 FMAs of 16 floats. Named accumulators, not an array, so that
// they stay in registers (see panel_block in step_weight.h). Returns their sum so none is dead.
__attribute__((target("avx512f"))) float chains_avx512(int64_t n) {
  const __m512 m = _mm512_set1_ps(0.999999f), k = _mm512_set1_ps(1e-6f);
  // distinct starts: equal chains would be one chain to the compiler (common subexpressions)
  __m512 a0 = _mm512_set1_ps(1.f), a1 = _mm512_set1_ps(1.01f), a2 = _mm512_set1_ps(1.02f),
         a3 = _mm512_set1_ps(1.03f), a4 = _mm512_set1_ps(1.04f), a5 = _mm512_set1_ps(1.05f),
         a6 = _mm512_set1_ps(1.06f), a7 = _mm512_set1_ps(1.07f), a8 = _mm512_set1_ps(1.08f),
         a9 = _mm512_set1_ps(1.09f), a10 = _mm512_set1_ps(1.1f), a11 = _mm512_set1_ps(1.11f);
  for (int64_t i = 0; i < n; ++i) {
    a0 = _mm512_fmadd_ps(a0, m, k), a1 = _mm512_fmadd_ps(a1, m, k);
    a2 = _mm512_fmadd_ps(a2, m, k), a3 = _mm512_fmadd_ps(a3, m, k);
    a4 = _mm512_fmadd_ps(a4, m, k), a5 = _mm512_fmadd_ps(a5, m, k);
    a6 = _mm512_fmadd_ps(a6, m, k), a7 = _mm512_fmadd_ps(a7, m, k);
    a8 = _mm512_fmadd_ps(a8, m, k), a9 = _mm512_fmadd_ps(a9, m, k);
    a10 = _mm512_fmadd_ps(a10, m, k), a11 = _mm512_fmadd_ps(a11, m, k);
  }
  const __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

// As chains_avx512, 8 floats a vector.
__attribute__((target("avx2,fma"))) float chains_avx2(int64_t n) {
  const __m256 m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-6f);
  __m256 a0 = _mm256_set1_ps(1.f), a1 = _mm256_set1_ps(1.01f), a2 = _mm256_set1_ps(1.02f),
         a3 = _mm256_set1_ps(1.03f), a4 = _mm256_set1_ps(1.04f), a5 = _mm256_set1_ps(1.05f),
         a6 = _mm256_set1_ps(1.06f), a7 = _mm256_set1_ps(1.07f), a8 = _mm256_set1_ps(1.08f),
         a9 = _mm256_set1_ps(1.09f), a10 = _mm256_set1_ps(1.1f), a11 = _mm256_set1_ps(1.11f);
  for (int64_t i = 0; i < n; ++i) {
    a0 = _mm256_fmadd_ps(a0, m, k), a1 = _mm256_fmadd_ps(a1, m, k);
    a2 = _mm256_fmadd_ps(a2, m, k), a3 = _mm256_fmadd_ps(a3, m, k);
    a4 = _mm256_fmadd_ps(a4, m, k), a5 = _mm256_fmadd_ps(a5, m, k);
    a6 = _mm256_fmadd_ps(a6, m, k), a7 = _mm256_fmadd_ps(a7, m, k);
    a8 = _mm256_fmadd_ps(a8, m, k), a9 = _mm256_fmadd_ps(a9, m, k);
    a10 = _mm256_fmadd_ps(a10, m, k), a11 = _mm256_fmadd_ps(a11, m, k);
  }
  alignas(32) float out[8];
  _mm256_store_ps(out, _mm256_add_ps(
                           _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                         _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
                           _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
  float sum = 0;
  for (float x : out) sum += x;
  return sum;
}
#endif

}  // namespace

// FLOP/s of `rounds` rounds of the chains on every thread of torch's pool at once (one
// parallel_for chunk per thread); 0 where the CPU has no FMA unit this measures.
double fma_rate(int64_t rounds) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  float (*chains)(int64_t) = __builtin_cpu_supports("avx512f") ? chains_avx512
                             : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                 ? chains_avx2
                                 : nullptr;
  if (!chains) return 0;
  const int64_t lanes = chains == chains_avx512 ? 16 : 8, threads = at::get_num_threads();
  volatile float sink = 0;
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) sink = sink + chains(rounds);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                             .count();
  return 2.0 * kChains * lanes * rounds * threads / seconds;
#else
  (void)rounds;
  return 0;
#endif
}

}  // namespace v0
}  // namespace rnnkernels
