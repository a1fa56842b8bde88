// Sort-inverse centroid update on the device: sort point ids by (problem, cluster) with a
// stable radix sort on ceil(log2(B * k)) key bits, sum each cluster's contiguous segment in
// chunks of consecutive points, then add the chunk partials of each cluster in order. No
// float atomics: the result is the same bits on every run.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

class SortInverseUpdate {
  public:
    /// Allocates every buffer once for problems of this shape.
    SortInverseUpdate(int64_t batch, int64_t n, int64_t d, int64_t k, cudaStream_t stream);

    /// centroids (batch, k, d) fp32 receive the means of x (batch, n, d) per label; rows of
    /// clusters c < k_frozen are kept. counts (batch, k): weighted cluster sizes (0 = empty,
    /// its centroid row is zeroed). weights: (batch, n) device or null.
    void run(const void* x, DType dtype, const int32_t* labels, const float* weights, int64_t k_frozen,
             float* centroids, float* counts, cudaStream_t stream);

    /// Sharded / streaming form, one problem (batch 1) of rows <= n points: adds each
    /// cluster's float sum (the same chunked order as run) to sums (k, d), its weight to
    /// wsums (k) and its size to counts (k), all device memory.
    void accumulate(const void* x, DType dtype, int64_t rows, const int32_t* labels, const float* weights,
                    double* sums, double* wsums, unsigned long long* counts, cudaStream_t stream);

    /// Plain (unweighted) cluster sizes of the last run, (batch, k).
    const uint32_t* sizes() const { return sizes_.get(); }

  private:
    // Sorts the first `total` labels and writes the chunk partial sums.
    void segment_sums(const void* x, DType dtype, int64_t total, const int32_t* labels, const float* weights,
                      cudaStream_t stream);

    int64_t batch_, n_, d_, k_;
    int end_bit_;
    int64_t max_chunks_;
    DeviceBuffer<uint32_t> keys_in_, keys_out_, ids_in_, ids_out_;
    DeviceBuffer<uint32_t> sizes_, offsets_, nchunks_, chunk_start_;
    DeviceBuffer<float> partial_, wpartial_;
    DeviceBuffer<unsigned char> temp_;
    size_t temp_bytes_ = 0;
};

} // namespace flash::cuda_engine
