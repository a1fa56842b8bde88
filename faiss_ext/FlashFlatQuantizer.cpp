#include "faiss_ext/FlashFlatQuantizer.h"

#include "faiss_ext/FlashClustering.h"

namespace faiss_flash {

FlashFlatQuantizer::FlashFlatQuantizer(idx_t d, size_t nlist, faiss::MetricType metric)
        : FlashAssignIndex(d, metric), nlist(nlist) {}

FlashFlatQuantizer::FlashFlatQuantizer() = default;

void FlashFlatQuantizer::train(idx_t n, const float* x) {
    FlashClustering clus(int(d), int(nlist), cp);
    clus.flash = flash;
    reset();
    clus.train(n, x, *this); // leaves exactly the nlist centroids in this index
    is_trained = true;
}

} // namespace faiss_flash
