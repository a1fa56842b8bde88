// A flat coarse quantizer for IndexIVF* whose train() runs the whole k-means on the
// faiss-flash engine (FAISS semantics via FlashClustering).
//
//   FlashFlatQuantizer quantizer(d, nlist);          // was: IndexFlatL2 quantizer(d);
//   faiss::IndexIVFFlat index(&quantizer, d, nlist);
//   index.quantizer_trains_alone = 1;                // IVF hands the data to quantizer.train
//
// Without quantizer_trains_alone = 1 it still helps: FAISS' own k-means then calls its
// search(), which assigns on the engine (see FlashAssignIndex).
#pragma once

#include <faiss/Clustering.h>

#include "faiss_ext/FlashAssignIndex.h"

namespace faiss_flash {

struct FlashFlatQuantizer : FlashAssignIndex {
    size_t nlist = 0;
    faiss::ClusteringParameters cp; ///< used by train(), like IndexIVF::cp

    FlashFlatQuantizer(idx_t d, size_t nlist, faiss::MetricType metric = faiss::METRIC_L2);
    FlashFlatQuantizer();

    /// k-means of x into nlist centroids; the index then holds exactly those centroids.
    void train(idx_t n, const float* x) override;
};

} // namespace faiss_flash
