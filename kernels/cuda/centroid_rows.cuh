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
/// shift (fp16 / bf16 only, may be null): how far each prepared row moved, the L2 distance from
/// the rounded row it replaces in lowp to the new one, rounded up, written to shift[r] (or, with
/// add_shift, added to it: the empty-cluster split moves rows the update has already moved,
/// and the sum bounds the whole move). See AssignArgs::shift.
struct CentroidCopies {
    DType dtype = DType::F32;
    void* lowp = nullptr;
    float* norms = nullptr;
    float* shift = nullptr;
    bool add_shift = false;
};

/// Row r of the centroids into `out` from its d fp32 values at `row` (global or shared memory:
/// the same bits), by the 32 lanes of the calling warp.
__device__ __forceinline__ void prepare_centroid_row_from(const float* row, int64_t r, int64_t d,
                                                          const CentroidCopies& out, int lane) {
    const bool moved = out.shift && out.dtype != DType::F32;
    float s = 0.f, m = 0.f; // ||new||^2, ||new - old||^2
    // U elements per lane at a time, every load before any store (a store between them would
    // keep the next loads from issuing: the row may alias the copy as far as the compiler knows).
    constexpr int U = 4;
    for (int64_t j0 = lane; j0 < d; j0 += 32 * U) {
        float v[U], old[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t j = j0 + 32 * u;
            v[u] = j < d ? row[j] : 0.f;
            old[u] = 0.f;
            if (moved && j < d) {
                if (out.dtype == DType::F16)
                    old[u] = __half2float(static_cast<const __half*>(out.lowp)[r * d + j]);
                else
                    old[u] = __bfloat162float(static_cast<const __nv_bfloat16*>(out.lowp)[r * d + j]);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t j = j0 + 32 * u;
            if (j >= d) break;
            float x = v[u];
            if (out.dtype == DType::F16) {
                const __half h = __float2half_rn(x);
                static_cast<__half*>(out.lowp)[r * d + j] = h;
                x = __half2float(h);
            } else if (out.dtype == DType::BF16) {
                const __nv_bfloat16 h = __float2bfloat16_rn(x);
                static_cast<__nv_bfloat16*>(out.lowp)[r * d + j] = h;
                x = __bfloat162float(h);
            }
            s = fmaf(x, x, s);
            if (moved) m = fmaf(x - old[u], x - old[u], m); // (the difference of two fp16 / bf16 values: exact)
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        s += __shfl_xor_sync(0xffffffffu, s, off);
        if (moved) m += __shfl_xor_sync(0xffffffffu, m, off);
    }
    if (lane == 0) {
        out.norms[r] = s;
        if (moved) { // rounded up, with 2^-14 for the sum's rounding (d * 2^-24 at most)
            const float dist = __fmul_ru(__fsqrt_ru(m), 1.f + 0x1p-14f);
            out.shift[r] = out.add_shift ? __fadd_ru(out.shift[r], dist) : dist;
        }
    }
}

/// Row r of the fp32 centroids c (rows of d) into `out`, by the 32 lanes of the calling warp.
__device__ __forceinline__ void prepare_centroid_row(const float* c, int64_t r, int64_t d, const CentroidCopies& out,
                                                     int lane) {
    prepare_centroid_row_from(c + r * d, r, d, out, lane);
}

} // namespace flash::cuda_engine
