// Incremental refresh of a trained IVF index whose data has drifted.
//
// A full retrain runs k-means from random rows (cp.niter iterations, often nredo > 1) and
// re-adds everything. A refresh warm-starts the coarse centroids from the current ones, runs
// a few Lloyd iterations (FlashClustering, FAISS semantics) on a sample of old + new vectors,
// swaps the quantizer's centroids and rebuilds the inverted lists:
//
//   faiss_flash::RefreshOptions opt;                 // niter = 5
//   auto st = faiss_flash::refresh_ivf(&index, n, x, ids, opt);  // index now holds x
//
// The vectors already in the index are dropped (the caller passes the whole set to hold in
// x; the default) or kept (keep_existing, IndexIVFFlat: read back exactly from the inverted
// lists, with their ids, and x holds only the new vectors). Rows given only as a training
// sample (train_extra) shape the centroids without being added.
#pragma once

#include <faiss/IndexIVF.h>

#include "faiss_ext/FlashOptions.h"

namespace faiss_flash {

struct RefreshOptions {
    int niter = 5;                  ///< warm-start Lloyd iterations
    faiss::Index::idx_t max_train = 0; ///< training sample size; 0: cp.max_points_per_centroid * nlist
    int seed = 1234;                ///< sample selection and FlashClustering seed
    /// false: the index is reset and holds exactly x; true: the index keeps the vectors it
    /// holds (IndexIVFFlat only: their codes are the vectors) and x is added to them.
    bool keep_existing = false;
    /// Extra training rows (n_train_extra, d) host fp32, used for the k-means only (e.g. a
    /// sample of old vectors when keep_existing is false and the old data is not re-added).
    faiss::Index::idx_t n_train_extra = 0;
    const float* train_extra = nullptr;
    /// Before iterating, move up to max_rebalance centroids from clusters under half the
    /// mean size to split clusters over twice the mean size (FAISS' split rule). Lloyd alone
    /// cannot spread centroids into a dense region that appeared far from them. 0: off
    /// (then the refresh is exactly FAISS' k-means started from the current centroids).
    /// Costs one extra assignment pass over the sample. -1: nlist / 4.
    faiss::Index::idx_t max_rebalance = -1;
    /// Rebalance this many times, the niter iterations shared between the rounds (each round
    /// adds one assignment pass). Ignored without rebalancing.
    int rebalance_rounds = 1;
    bool verbose = false;
    /// Also compute the objective of the refreshed centroids on the training sample (one
    /// more assignment pass, about the cost of an iteration); otherwise obj_after is NaN.
    bool objective_after = false;
    FlashOptions flash;
};

struct RefreshStats {
    faiss::Index::idx_t n_train = 0; ///< rows the k-means ran on
    faiss::Index::idx_t ntotal = 0;  ///< vectors in the index afterwards
    double obj_before = 0;  ///< objective of the old centroids on the training sample
    double obj_after = 0;   ///< same for the refreshed centroids (NaN unless objective_after)
    double mean_shift = 0;  ///< mean L2 distance between old and refreshed centroids
    faiss::Index::idx_t n_rebalanced = 0; ///< centroids moved by the rebalancing step
    double kmeans_s = 0;    ///< seconds: gathering the sample + warm-started k-means
    double rebuild_s = 0;   ///< seconds: swapping the quantizer + re-adding the vectors
                            ///< (coarse assignment on the engine when the quantizer is flat)
};

/// Refreshes `index` (trained, quantizer holding nlist centroids) with n vectors x (n, d)
/// host fp32 (n may be 0 when keep_existing) and their ids (null: sequential ids, as
/// IndexIVF::add gives). Throws std::invalid_argument for bad arguments (untrained index,
/// keep_existing on a non-Flat IVF, ids with an array direct map, too few training rows).
RefreshStats refresh_ivf(faiss::IndexIVF* index, faiss::Index::idx_t n, const float* x,
                         const faiss::Index::idx_t* ids = nullptr, const RefreshOptions& opt = {});

} // namespace faiss_flash
