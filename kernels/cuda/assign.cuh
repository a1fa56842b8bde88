// FlashAssign launchers: fused distance + running argmin, the n x k distance matrix never
// leaves the chip. One launch covers all problems of a batch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

struct AssignArgs {
    const void* x = nullptr;          // (batch, n, d) of dtype
    const void* centroids = nullptr;  // (batch, k, d): fp32 for DType::F32, else dtype-rounded copy
    const float* cnorm = nullptr;     // (batch, k) ||c||^2 of the centroids as used in the product
    const float* xnorm = nullptr;     // (batch, n) ||x||^2 in fp32
    DType dtype = DType::F32;
    Metric metric = Metric::L2;
    int64_t batch = 1, n = 0, d = 0, k = 0;
    int32_t* labels = nullptr;        // (batch, n) out
    float* distances = nullptr;       // (batch, n) out: squared L2 (clamped at 0) or similarity
};

/// Tensor-core path for fp16 / bf16 inputs (fp32 accumulation); `variant` picks one of the
/// compiled tile configurations (0 .. assign_mma_variants(a) - 1).
void launch_assign_mma(const AssignArgs& a, int variant, cudaStream_t stream);
int assign_mma_variants(const AssignArgs& a);

/// fp32 inputs with fp32 FMA products (exact fp32 arithmetic).
void launch_assign_fp32(const AssignArgs& a, cudaStream_t stream);

/// The kernel configuration for a problem: the heuristic, or the autotuner's cached winner
/// when FLASH_AUTOTUNE=1 (see autotune.cu).
int choose_assign_variant(const AssignArgs& a, cudaStream_t stream);

/// Dispatch on dtype: the single place that chooses the assignment kernel.
inline void launch_assign(const AssignArgs& a, int variant, cudaStream_t stream) {
    if (a.dtype == DType::F32)
        launch_assign_fp32(a, stream);
    else
        launch_assign_mma(a, variant, stream);
}

} // namespace flash::cuda_engine
