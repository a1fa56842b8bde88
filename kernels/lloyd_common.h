// Host-side pieces shared by every engine: input validation, FAISS' empty-cluster split
// rule and the imbalance factor.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash {

/// Throws std::invalid_argument naming the problem (null pointer, bad shape, k <= 0,
/// n < k unless !require_n_ge_k (assignment only), k_frozen out of range, niter < 0).
void validate_problem(const Points& x, const float* centroids, int64_t k, int niter, int64_t k_frozen,
                      bool require_n_ge_k = true);
/// Throws FAISS' std::invalid_argument for n training points and k clusters unless n >= k.
void check_enough_points(int64_t n, int64_t k);
/// The part of validate_problem that does not look at the points' rows (d, dtype, centroids,
/// k, niter, k_frozen): for a shard that may be empty.
void validate_run(int64_t d, DType dtype, const float* centroids, int64_t k, int niter, int64_t k_frozen);

/// Throws std::invalid_argument if fp32/fp16/bf16 host data holds NaN or Inf.
void check_finite_host(const Points& x);
/// Throws std::invalid_argument when a host weight is NaN, infinite or negative (it names the
/// first such weight); null weights pass.
void check_weights_host(const float* weights, int64_t count);

/// Size in bytes of one element of the dtype.
size_t dtype_size(DType t);

/// FAISS 1.7.3's rule for empty clusters (Clustering.cpp, split_clusters), bit for bit.
/// counts: (k - k_frozen) weighted sizes of the non-frozen clusters, updated in place;
/// centroids: (k, d), the non-frozen ones (rows k_frozen..k-1) are modified.
/// n: number of training points. Returns the number of splits.
int split_empty_clusters(int64_t d, int64_t k, int64_t n, int64_t k_frozen, float* counts, float* centroids);

/// Centroids from reduced cluster sums (sharded and distributed engines), as FAISS computes
/// them: row c >= k_frozen = float(sums[c]) * (1 / float(weights[c])), zeros where the
/// weight is 0; counts receives the k - k_frozen weights of the non-frozen clusters (the
/// input of split_empty_clusters). Frozen rows are left as they are.
void centroids_from_sums(const double* sums, const double* weights, int64_t k, int64_t d, int64_t k_frozen,
                         float* centroids, float* counts);

/// k * sum(h^2) / (sum h)^2, h the number of points per cluster (unweighted).
double imbalance_factor(const int64_t* labels, int64_t n, int64_t k);

/// Same from a histogram of k counts.
double imbalance_from_counts(const int64_t* counts, int64_t k);

/// The flag set by flash::request_stop() (and by the SIGINT handler of stop_on_sigint runs).
bool stop_requested();
void clear_stop_request();

/// faiss::rand_perm(perm, n, seed) of FAISS 1.7.3: a Fisher-Yates shuffle driven by
/// std::mt19937(seed) with i2 = i + rng() % (n - i).
std::vector<int64_t> faiss_rand_perm(int64_t n, int64_t seed);

/// Checkpoints taken inside one engine call (the GPU engines, which set up once per call: the
/// points' upload, pinning, buffers): `save` is called after every `every` iterations of the
/// call, not after its last (the caller saves the end), with the host centroids (batch, k, d)
/// and the stats of the call's iterations so far. Empty: no checkpoints.
struct CheckpointHook {
    int every = 0;
    std::function<void(int done, const float* centroids, const std::vector<std::vector<IterationStats>>& stats)> save;
    bool due(int64_t done, int64_t niter) const { return save && every > 0 && done % every == 0 && done < niter; }
};

/// Seconds on a monotonic clock.
double wall_seconds();

} // namespace flash
