// k-means over MPI ranks: each rank owns a shard of the points (its own file slice or
// memory), assigns it locally (CPU or CUDA engine), and one all-reduce per iteration combines
// the per-cluster sums, counts and objective. Every rank ends with the same centroids.
// Subsampling and initialisation pick the same global rows as faiss::Clustering would on
// the concatenation of the shards in rank order.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash::distributed {

struct MpiKmeansOptions {
    /// k, niter, metric, spherical, int_centroids, k_frozen, weights (local: one per row of
    /// this rank's shard), backend, cuda_device, post_process, on_iteration, checkpoint_path,
    /// checkpoint_every, stop_on_sigint. Everything but weights, cuda_device, on_iteration and
    /// checkpoint_path's value must be the same on every rank, post_process included (it sets
    /// the centroids). Checked across ranks: d, k, niter, metric, spherical, int_centroids,
    /// k_frozen, seed, max_points_per_centroid, whether init_centroids and checkpoint_path are
    /// given, checkpoint_every, stop_on_sigint; not checked: backend, fp32_mode,
    /// transfer_dtype, post_process.
    /// Checkpoints: rank 0 writes to its checkpoint_path every checkpoint_every iterations, at
    /// the end and when stopped; a run that finds one of the same run (the same shards in the
    /// same ranks, options and initial centroids; else std::invalid_argument) resumes from it
    /// on every rank, to the same centroids as an uninterrupted run. stop_on_sigint: as in
    /// flash::run_lloyd, SIGINT (or flash::request_stop, e.g. from the caller's handler of
    /// another signal) stops the run; a request on any rank stops every rank after the current
    /// iteration, checkpoint written, with flash::Interrupted. A request made before the call
    /// is dropped when it starts, unless another stoppable run of the process is in progress.
    LloydOptions lloyd;
    int seed = 1234;                   ///< as faiss::ClusteringParameters::seed
    int max_points_per_centroid = 256; ///< > 0; as faiss::ClusteringParameters
    /// (k, d) initial centroids, identical on every rank; null: FAISS' random rows. Either
    /// way they are post-processed (spherical, int_centroids) before the first iteration,
    /// as faiss::Clustering does.
    const float* init_centroids = nullptr;
};

/// Thrown by a collective call on the ranks that did not fail themselves when another
/// rank did (bad shard, NaN/Inf, out of memory, GPU error...). The failing ranks throw
/// their own exception; every rank leaves the call, none is left waiting.
struct RankFailed : std::runtime_error {
    RankFailed(int rank, const std::string& what) : std::runtime_error(what), failed_rank(rank) {}
    int failed_rank; ///< the lowest rank that failed; what() includes its message
};

/// local: this rank's (n_local, d) shard in host memory (batch 1; n_local may be 0);
/// centroids: (k, d) out. Collective over comm. Returns the global per-iteration stats
/// (same on every rank). When the whole training set is k points, they are the centroids
/// (no iteration, one stats entry with imbalance 1), as in faiss::Clustering.
/// Errors are collective: std::invalid_argument (bad arguments, ranks disagreeing on an
/// option, NaN/Inf in the data) or std::runtime_error on the rank(s) where they arise,
/// RankFailed on the others.
std::vector<IterationStats> run_kmeans(MPI_Comm comm, const Points& local, float* centroids,
                                       const MpiKmeansOptions& opt);

/// Runs step on this rank, then agrees with every rank of comm (collective): if step threw
/// on any rank, every rank throws (the failing ones their own exception, the others
/// RankFailed). For a caller's own per-rank work (reading a shard) before run_kmeans.
void run_collectively(MPI_Comm comm, const std::function<void()>& step);

} // namespace flash::distributed
