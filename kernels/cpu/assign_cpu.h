// CPU FlashAssign: BLAS products on (point tile x centroid tile) blocks with a running
// argmin per point; memory stays O(tile), the n x k distance matrix never exists.
#pragma once

#include <cstdint>

#include "kernels/flash_kmeans.h"

namespace flash::cpu {

/// x: (n, d) of dtype, host. centroids: (k, d) fp32. labels, distances: (n), either may
/// be null. L2: squared distance ||x||^2 + ||c||^2 - 2 x.c clamped at 0, argmin;
/// inner product: x.c, argmax. Ties go to the lowest centroid index.
void assign_blocked(const void* x, DType dtype, int64_t n, int64_t d, const float* centroids,
                    int64_t k, Metric metric, int64_t* labels, float* distances);

/// Squared L2 norms of the rows of an (n, d) fp32 matrix, accumulated in double.
void row_norms_sq(const float* x, int64_t n, int64_t d, float* norms);

} // namespace flash::cpu
