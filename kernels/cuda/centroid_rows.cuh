// Centroid rows as the assignment kernels read them, prepared by one warp per row. The same
// function serves the preparation kernel, the update's finish (which prepares each row it has
// just written) and the empty-cluster split (the two rows it changes), so a row prepared by any
// of them has the same bits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

/// Where prepared rows go: for fp16 / bf16 points a rounded copy in `lowp` (rows, d); norms of
/// the values used in the product (the rounded ones for fp16 / bf16). norms null: no preparation.
struct CentroidCopies {
    DType dtype = DType::F32;
    void* lowp = nullptr;
    float* norms = nullptr;
};

/// Row r of the fp32 centroids, whose d values are at `row` (in global or shared memory), into
/// `out`, by the 32 lanes of the calling warp.
__device__ __forceinline__ void prepare_centroid_row(const float* row, int64_t r, int64_t d, const CentroidCopies& out,
                                                     int lane) {
    float s = 0.f;
    for (int64_t j = lane; j < d; j += 32) {
        float v = row[j];
        if (out.dtype == DType::F16) {
            const __half h = __float2half_rn(v);
            static_cast<__half*>(out.lowp)[r * d + j] = h;
            v = __half2float(h);
        } else if (out.dtype == DType::BF16) {
            const __nv_bfloat16 h = __float2bfloat16_rn(v);
            static_cast<__nv_bfloat16*>(out.lowp)[r * d + j] = h;
            v = __bfloat162float(h);
        }
        s = fmaf(v, v, s);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) out.norms[r] = s;
}

} // namespace flash::cuda_engine
