// Small per-iteration device steps of the CUDA Lloyd loop, each one launch for the batch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/centroid_rows.cuh"
#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

/// ||x_i||^2 in fp32 for the (rows, d) matrix x of dtype.
void launch_row_norms(const void* x, DType dtype, int64_t rows, int64_t d, float* norms, cudaStream_t s);

/// Centroids as the assignment kernel reads them: for fp16 / bf16 a rounded copy in
/// `lowp`; norms of what is used in the product (rounded values for fp16 / bf16).
void launch_prepare_centroids(const float* centroids, int64_t rows, int64_t d, DType dtype, void* lowp, float* norms,
                              cudaStream_t s);

/// The per-iteration stats history on the device: rows of row_bytes (at least batch * (2
/// doubles + 1 int), a multiple of 8), [objective (batch doubles) | imbalance (batch doubles) |
/// nsplit (batch ints)]. The split kernel, the iteration's last, fills row cursor[0] and moves
/// the cursor on (cursor[1]: its blocks done), so that a captured graph replays it with no copy
/// per iteration. Zero the cursor before the first iteration.
struct StatsHistory {
    unsigned char* rows = nullptr;
    size_t row_bytes = 0;
    const double* obj = nullptr; // (batch) the iteration's objective (written before the split kernel runs)
    unsigned* cursor = nullptr;  // (2)
};

/// Uploads the split's table of the generator's first draws to the current device (once per
/// device; call before launch_split_empty_clusters, outside any graph capture).
void prepare_split_draws();

/// FAISS' empty-cluster split for each problem, on the device (its mt19937 stream included).
/// counts: (batch, k) weighted sizes; sizes: (batch, k) plain sizes (required). Writes the iteration's
/// stats row of `stats`: the objective copied from stats.obj, FAISS' imbalance factor of the
/// sizes (before the split, as FAISS reports it), the number of splits. prepared (norms set):
/// the rows a split changes are prepared again there.
void launch_split_empty_clusters(float* centroids, float* counts, int64_t batch, int64_t k, int64_t d, int64_t k_frozen,
                                 int64_t n, const uint32_t* sizes, const StatsHistory& stats, cudaStream_t s,
                                 const CentroidCopies& prepared = {});

/// spherical: L2-normalise rows; int_centroids: round to nearest.
void launch_post_process(float* centroids, int64_t rows, int64_t d, bool spherical, bool int_centroids,
                         cudaStream_t s);

/// Doubles of workspace launch_objective needs for up to batch problems of up to n rows; zero it
/// once before the first use (the kernels leave it ready for the next launch, whatever its n).
int64_t stats_workspace_size(int64_t batch, int64_t n);

/// obj[b] = sum of distances of problem b (double, fixed order: partial sums of 8192 distances
/// spread over the chip, added in order by the problem's last block).
void launch_objective(const float* dist, int64_t batch, int64_t n, double* workspace, double* obj, cudaStream_t s);

/// Split fp32 rows for the tensor-core fp32 path, batch problems of `rows` rows: each value v
/// of problem b is scaled by 2^split_scale_exponent(max_abs[b]) (max_abs[b] >= every |v| of
/// the problem), then dst row r = [fp16(v) | fp16(v - fp16(v))], each part zero-padded from d
/// to width (dst is (batch * rows, 2 * width) fp16). Also each row's rounding residual
/// ||v - fp16(v)|| in the unscaled units (the filter pass's certificate, AssignArgs::xres / cres):
/// per row into res_rows (batch * rows) and / or the problem's largest into res_max (batch);
/// either may be null.
void launch_split_fp32(const float* src, int64_t batch, int64_t rows, int64_t d, int64_t width, const float* max_abs,
                       void* dst, float* res_rows, float* res_max, cudaStream_t s);

/// dst (batch * rows, d) fp16 = src values of problem b scaled by 2^split_scale_exponent(max_abs[b]).
void launch_scale_to_half(const float* src, int64_t batch, int64_t rows, int64_t d, const float* max_abs, void* dst,
                          cudaStream_t s);

/// out (batch, k) = norms scaled by 2^(split_scale_exponent(xmax[b]) + split_scale_exponent(cmax[b])).
void launch_scaled_norms(const float* norms, int64_t batch, int64_t k, const float* xmax, const float* cmax, float* out,
                         cudaStream_t s);

/// out[b] = max |v| over the count values of problem b (src is (batch, count)).
void launch_max_abs(const float* src, int64_t batch, int64_t count, float* out, cudaStream_t s);

/// cmax[b] = max_j sqrt(norms[b * k + j]).
void launch_max_norm(const float* norms, int64_t batch, int64_t k, float* cmax, cudaStream_t s);

/// Sets *flag to 1 if x holds NaN or Inf.
void launch_check_finite(const void* x, DType dtype, int64_t count, int* flag, cudaStream_t s);

} // namespace flash::cuda_engine
