// Lloyd loop of the CUDA engine for host points sharded over several GPUs and/or streamed
// from host memory: the device pass (cuda_engine::PartialSums) returns per-cluster sums,
// the host finishes each iteration as FAISS does (means, empty-cluster split, stats,
// post-processing).
#pragma once

#include <vector>

#include "kernels/flash_kmeans.h"
#include "kernels/lloyd_common.h"

namespace flash {

/// True when run_lloyd on CUDA should take the sharded / streaming path for these host points:
/// several devices, forced streaming, a memory cap, a transfer dtype, or (Streaming::Auto)
/// points that do not fit on the device with the in-memory engine's buffers.
bool wants_sharded_run(const Points& x, const LloydOptions& opt);

/// See flash::run_lloyd; input validated, x in host memory, CUDA engine available.
std::vector<std::vector<IterationStats>> run_lloyd_sharded(const Points& x, float* centroids, const LloydOptions& opt,
                                                           const CheckpointHook& checkpoint = {});

} // namespace flash
