#include "faiss_ext/FlashAssignIndex.h"

#include <faiss/impl/FaissAssert.h>

#include <limits>

namespace faiss_flash {

FlashAssignIndex::FlashAssignIndex(idx_t d, faiss::MetricType metric) : faiss::IndexFlat(d, metric) {}

FlashAssignIndex::FlashAssignIndex() = default;

void FlashAssignIndex::search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels,
                              const faiss::SearchParameters* params) const {
    const bool engine_metric = metric_type == faiss::METRIC_L2 || metric_type == faiss::METRIC_INNER_PRODUCT;
    if (k != 1 || params != nullptr || !engine_metric) {
        faiss::IndexFlat::search(n, x, k, distances, labels, params);
        return;
    }
    if (n == 0) return;
    FAISS_THROW_IF_NOT_MSG(x != nullptr, "faiss-flash: search queries are a null pointer");
    if (ntotal == 0) { // FAISS' convention for an empty index
        const float none = metric_type == faiss::METRIC_L2 ? std::numeric_limits<float>::infinity()
                                                           : -std::numeric_limits<float>::infinity();
        for (idx_t i = 0; i < n; i++) {
            if (distances) distances[i] = none;
            if (labels) labels[i] = -1;
        }
        return;
    }
    flash::Points p;
    p.data = x;
    p.n = n;
    p.d = d;
    flash::assign_nearest(p, get_xb(), ntotal,
                          metric_type == faiss::METRIC_L2 ? flash::Metric::L2 : flash::Metric::InnerProduct, labels,
                          distances, flash.backend, flash.cuda_device);
}

} // namespace faiss_flash
