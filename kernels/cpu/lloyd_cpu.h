// The CPU engine's Lloyd loop (assign -> objective -> update -> split -> post-process).
#pragma once

#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash::cpu {

/// See flash::run_lloyd; input already validated, x in host memory.
std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt);

/// Built-in post-processing of (k, d) centroids: spherical L2-normalisation, rounding.
void post_process_centroids(float* centroids, int64_t k, int64_t d, bool spherical, bool int_centroids);

} // namespace flash::cpu
