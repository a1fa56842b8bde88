// CPU sort-inverse centroid update: counting sort of point ids by cluster, then one
// reduction per contiguous segment. Sums run in increasing point order, as in FAISS'
// compute_centroids, so the result is deterministic and bit-identical to FAISS.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash::cpu {

/// Stable counting sort of point ids by label.
/// order: (n) point ids grouped by cluster, increasing within a cluster;
/// offsets: (k + 1), cluster c owns order[offsets[c] .. offsets[c + 1]).
void sort_by_cluster(const int64_t* labels, int64_t n, int64_t k, std::vector<int64_t>& order,
                     std::vector<int64_t>& offsets);

/// New centroids for clusters k_frozen..k-1 from x (n, d) of dtype and its labels;
/// rows 0..k_frozen-1 of centroids (k, d) are left untouched. counts receives the
/// (k - k_frozen) weighted sizes of the non-frozen clusters, as FAISS' hassign.
/// Empty clusters get a zero row (to be split afterwards).
void update_centroids(const void* x, DType dtype, int64_t n, int64_t d, const int64_t* labels,
                      const float* weights, int64_t k, int64_t k_frozen, float* centroids, float* counts);

} // namespace flash::cpu
