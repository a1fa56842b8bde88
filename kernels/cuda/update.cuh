// Sort-inverse centroid update on the device. Point ids are ordered by (problem, cluster),
// stably (each cluster's points in index order), then each cluster's contiguous segment is
// summed in fixed chunks of the sorted order and the chunk pieces of a cluster are added in
// order. No float atomics: the result is the same bits on every run.
//
// The ordering is a counting sort in three steps: a histogram of each tile of 512 or more
// labels (one warp per tile, its counters in shared memory, one row per tile; or counted by an
// fp16 / bf16 assignment as it writes the labels, see label_counts), a scan down each cluster's
// column of tile counts (a lane per cluster, groups of 32 clusters: every tile's write position
// for every cluster, relative to its group, and the groups' sizes), and a stable scatter that
// replays the tiles, adding the sizes of the groups before (for 256 <= k <= 2048 four warps per
// tile, each counting and then placing a quarter of it). For large batches (B * n >= 2^20)
// and very large k (the per-warp counters would not fit in shared memory) a CUB radix sort on
// ceil(log2(B * k)) bits takes its place, the cluster starts read off the sorted keys; both
// sorts are stable, so both give the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/centroid_rows.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

class SortInverseUpdate {
  public:
    /// Allocates every buffer once for problems of this shape.
    SortInverseUpdate(int64_t batch, int64_t n, int64_t d, int64_t k, cudaStream_t stream);

    /// Device bytes an instance of this shape allocates (for memory planning).
    static size_t bytes(int64_t batch, int64_t n, int64_t d, int64_t k);

    /// centroids (batch, k, d) fp32 receive the means of x (batch, n, d) per label; rows of
    /// clusters c < k_frozen are kept. counts (batch, k): weighted cluster sizes (0 = empty,
    /// its centroid row is zeroed). weights: (batch, n) device or null. prepared (norms set):
    /// each new row is also prepared for the assignment there (no separate preparation pass).
    void run(const void* x, DType dtype, const int32_t* labels, const float* weights, int64_t k_frozen,
             float* centroids, float* counts, cudaStream_t stream, const CentroidCopies& prepared = {},
             bool labels_counted = false);

    /// The tile histogram an fp16 / bf16 assignment may fill as it writes the labels
    /// (AssignArgs::tile_counts; then run with labels_counted): (batch, count_tiles(), k) rows
    /// of count_tile() points, zero between runs. Null where this instance sorts by radix, or
    /// with FLASH_LABEL_COUNTS=0 (the histogram kernel then counts).
    uint32_t* label_counts() const { return counted_ ? hist_.get() : nullptr; }
    int64_t count_tile() const { return tile_; }
    int64_t count_tiles() const { return counting_ ? (n_ + tile_ - 1) / tile_ : 0; }

    /// Sharded / streaming form, one problem (batch 1) of rows <= n points: adds each
    /// cluster's float sum (the same chunked order as run) to sums (k, d), its weight to
    /// wsums (k) and its size to counts (k), all device memory.
    void accumulate(const void* x, DType dtype, int64_t rows, const int32_t* labels, const float* weights, double* sums,
                    double* wsums, unsigned long long* counts, cudaStream_t stream);

    /// Plain (unweighted) cluster sizes of the last run, (batch, k).
    const uint32_t* sizes() const { return sizes_.get(); }

  private:
    // Orders the first `rows` labels of each problem (rows <= n) and writes the chunk pieces
    // (counted: the counting sort's histogram is already filled, see label_counts).
    void sort_and_sum(const void* x, DType dtype, int64_t rows, const int32_t* labels, const float* weights,
                      cudaStream_t stream, bool counted = false);

    int64_t batch_, n_, d_, k_;
    int sms_;                                  // of the device (the chunk sums' load width)
    bool counting_;                            // counting sort (else CUB radix sort)
    bool counted_ = false;                     // counting: labels counted by the assignment (FLASH_LABEL_COUNTS)
    bool quarters_ = false;                    // counting: four warps per scatter tile (FLASH_SCATTER_QUARTERS)
    int64_t tile_ = 0;                         // points per histogram tile (counting sort)
    int end_bit_ = 0;                          // radix-sort key bits
    DeviceBuffer<uint32_t> hist_;              // (batch, tiles, k) counts, scanned in place, zeroed by the scatter
    DeviceBuffer<uint32_t> group_sizes_;       // (batch, ceil(k / 32)) points per group of 32 clusters
    DeviceBuffer<uint32_t> keys_in_, ids_in_;  // radix-sort inputs
    DeviceBuffer<uint32_t> keys_, ids_;        // sorted cluster ids and point ids
    DeviceBuffer<uint32_t> starts_, sizes_;    // (batch, k) first sorted position and size per cluster
    DeviceBuffer<float> head_, headw_;         // per chunk: the sum of the cluster open at its start
    DeviceBuffer<float> startp_, startw_;      // per cluster: its piece in the chunk it starts inside
    DeviceBuffer<unsigned char> temp_;
    size_t temp_bytes_ = 0;
};

}  // namespace flash::cuda_engine
