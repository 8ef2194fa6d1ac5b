// rnnkernels: the fp32 FMA rate of this machine's cores (csrc/cpu/peak.cpp), the ceiling the
// benchmark reports kernels' GFLOP/s against.
#pragma once

#include <cstdint>

namespace rnnkernels {
inline namespace v0 {

// FLOP/s of `rounds` rounds of 12 independent vector-FMA chains on every thread of torch's pool
// at once (AVX-512, else AVX2+FMA); 0 where the CPU has neither. 10^6 rounds take ~1-10 ms.
double fma_rate(int64_t rounds);

}  // namespace v0
}  // namespace rnnkernels
