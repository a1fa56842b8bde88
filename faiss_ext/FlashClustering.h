// faiss::Clustering with the Lloyd iterations on the faiss-flash engine.
//
// Same parameters, same semantics as FAISS 1.7.3 (subsampling, initialisation, nredo,
// empty-cluster splitting, spherical, int_centroids, frozen_centroids, update_index,
// given centroids, iteration_stats, verbose lines, errors). With the CPU engine and the
// same seed the centroids are bit-identical to faiss::Clustering except where a point is
// at an exact tie. The assignment is always exact (a flat search), whatever `index` is;
// `index` only supplies the metric and receives the final centroids, as in FAISS.
#pragma once

#include <faiss/Clustering.h>

#include "faiss_ext/FlashOptions.h"

namespace faiss_flash {

struct FlashClustering : faiss::Clustering {
    FlashOptions flash;

    FlashClustering(int d, int k);
    FlashClustering(int d, int k, const faiss::ClusteringParameters& cp);

    void train(idx_t n, const float* x, faiss::Index& index, const float* x_weights = nullptr) override;

    /// Same, for fp16 / bf16 (or fp32) data, host or device memory, as described by `x`
    /// (x.batch must be 1). Subsampling and initialisation follow FAISS on the raw rows.
    void train_points(const flash::Points& x, faiss::Index& index, const float* x_weights = nullptr);
};

} // namespace faiss_flash
