// Entry points of the CUDA engine, called by kernels/engine.cpp after validation.
// Plain C++ types only: compiled by the host compiler on CPU-only builds too, where
// kernels/cuda_unavailable.cpp provides the definitions.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

/// Number of visible CUDA devices (0 when none, or when the driver is absent).
int device_count();

/// Lloyd iterations on the GPU; see flash::run_lloyd. The input is already validated
/// (shapes, k, niter); x may live on the host or on a device.
std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt);

/// See flash::assign_nearest.
void assign_nearest(const Points& x, const float* centroids, int64_t k, Metric metric,
                    int64_t* labels, float* distances, int cuda_device);

} // namespace flash::cuda_engine
