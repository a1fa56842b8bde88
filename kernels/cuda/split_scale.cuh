// The power-of-two scale of the fp32 split (AssignArgs::xsplit): a problem's values are
// multiplied by 2^e before the split into two fp16 parts, e chosen from their largest
// magnitude m so that m * 2^e lies in [2^13, 2^14): the parts stay in fp16's range with room,
// and the relative precision is fp16's 11 bits per part instead of bf16's 8. The split kernels
// and the assignment's epilogue both call this, so they agree on e.
#pragma once

#include <cmath>

namespace flash::cuda_engine {

/// e for a largest magnitude m, clamped to [-60, 60] (m of 0, NaN or Inf: 0). Values of a
/// magnitude that the clamp leaves out of range overflow or underflow in fp16; the error
/// bound (its absolute term) or a NaN then sends their points to the exact re-check.
__host__ __device__ inline int split_scale_exponent(float m) {
    if (!(m > 0.f) || !(m <= 3.4e38f)) return 0;
    int e = 0;
    frexpf(m, &e); // m in [2^(e - 1), 2^e)
    const int s = 14 - e;
    return s < -60 ? -60 : (s > 60 ? 60 : s);
}

} // namespace flash::cuda_engine
