// A flat index whose k = 1 search runs on the faiss-flash engine. Drop it in as
// IndexIVF::clustering_index or ProductQuantizer::assign_index: FAISS's own k-means then
// assigns points with our fused engine (exact; ties to the lowest index).
#pragma once

#include <faiss/IndexFlat.h>

#include "faiss_ext/FlashOptions.h"

namespace faiss_flash {

struct FlashAssignIndex : faiss::IndexFlat {
    FlashOptions flash;

    explicit FlashAssignIndex(idx_t d, faiss::MetricType metric = faiss::METRIC_L2);
    FlashAssignIndex();

    /// k == 1 runs on the engine; other k fall back to faiss::IndexFlat::search.
    void search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels,
                const faiss::SearchParameters* params = nullptr) const override;
};

} // namespace faiss_flash
