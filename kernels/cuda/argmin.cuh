// (value, index) pairs compared lexicographically: the tie-breaking contract shared by every
// kernel (ties go to the lowest centroid index).
#pragma once

#include <cfloat>
#include <climits>

namespace flash::cuda_engine {

struct Best {
    float v;
    int i;
};

__device__ __forceinline__ Best best_init() { return {FLT_MAX, INT_MAX}; }

__device__ __forceinline__ bool before(float v, int i, const Best& b) { return v < b.v || (v == b.v && i < b.i); }

__device__ __forceinline__ void merge(Best& a, const Best& b) {
    if (before(b.v, b.i, a)) a = b;
}

/// Merges the pairs of `width` consecutive lanes (a power of two <= 32) with shuffles.
template <int WIDTH>
__device__ __forceinline__ Best merge_lanes(Best b) {
#pragma unroll
    for (int off = 1; off < WIDTH; off <<= 1) {
        Best o;
        o.v = __shfl_xor_sync(0xffffffffu, b.v, off);
        o.i = __shfl_xor_sync(0xffffffffu, b.i, off);
        merge(b, o);
    }
    return b;
}

} // namespace flash::cuda_engine
