// Entry points of the CUDA engine, called by kernels/engine.cpp after validation.
// Plain C++ types only: compiled by the host compiler on CPU-only builds too, where
// kernels/cuda_unavailable.cpp provides the definitions.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/flash_kmeans.h"
#include "kernels/lloyd_common.h"

namespace flash::cuda_engine {

/// Number of visible CUDA devices (0 when none, or when the driver is absent).
int device_count();

/// Whether the in-memory engine (run_lloyd) has room on `device` for these host points and
/// its buffers (estimate against the free memory, less a margin); tf32: fp32 points in
/// Fp32Mode::TF32 (a scaled fp16 copy instead of the exact path's split rows).
bool fits_in_memory(const Points& x, int64_t k, int device, bool tf32);

/// Lloyd iterations on the GPU; see flash::run_lloyd. The input is already validated
/// (shapes, k, niter); x may live on the host or on a device.
std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt,
                                                   const CheckpointHook& checkpoint = {});

/// See flash::assign_nearest.
void assign_nearest(const Points& x, const float* centroids, int64_t k, Metric metric,
                    int64_t* labels, float* distances, int cuda_device);

/// One pass of a Lloyd iteration over host points sharded across GPUs (opt.cuda_devices, or
/// the single device of opt.cuda_device) and, where they do not fit, streamed from host
/// memory in pieces of opt.stream_piece_rows rows (see flash::Streaming): per cluster the
/// sums of the assigned points, their weights and counts, and the objective. Buffers and the
/// resident rows are set up once by the constructor; each run() is one pass.
class PartialSums {
  public:
    /// x: host points (validated); opt: k, metric, weights, fp32_mode and the placement
    /// options (cuda_devices, streaming, device_memory_limit, transfer_dtype,
    /// stream_piece_rows, pin_host_data).
    PartialSums(const Points& x, const LloydOptions& opt);
    ~PartialSums();
    PartialSums(const PartialSums&) = delete;
    PartialSums& operator=(const PartialSums&) = delete;

    /// centroids: (batch, k, d) fp32 host. Out (host): sums (batch, k, d), wsums (batch, k)
    /// (weighted sizes), sizes (batch, k) (plain counts), obj (batch) (sum of the distances
    /// or similarities of every point to its centroid). Sums are added in a fixed order.
    void run(const float* centroids, double* sums, double* wsums, int64_t* sizes, double* obj);

    /// Placement and the timings of the last run() (per-iteration fields).
    Placement placement() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace flash::cuda_engine
