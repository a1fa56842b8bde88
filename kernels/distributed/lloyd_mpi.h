// k-means over MPI ranks: each rank owns a shard of the points (its own file slice or
// memory), assigns it locally (CPU or CUDA engine), and one all-reduce per iteration combines
// the per-cluster sums, counts and objective. Every rank ends with the same centroids.
// Subsampling and initialisation pick the same global rows as faiss::Clustering would on
// the concatenation of the shards in rank order.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash::distributed {

struct MpiKmeansOptions {
    LloydOptions lloyd;              ///< k, niter, metric, spherical, weights (local), backend...
    int seed = 1234;                 ///< as faiss::ClusteringParameters::seed
    int max_points_per_centroid = 256;
    /// (k, d) initial centroids, identical on every rank; null: FAISS' random rows.
    const float* init_centroids = nullptr;
};

/// local: this rank's (n_local, d) shard in host memory (batch 1); centroids: (k, d) out.
/// Returns the global per-iteration stats (same on every rank).
std::vector<IterationStats> run_kmeans(MPI_Comm comm, const Points& local, float* centroids,
                                       const MpiKmeansOptions& opt);

} // namespace flash::distributed
