// Whole-index training with the faiss-flash engine: coarse centroids (IVF) and every PQ
// sub-codebook are computed by FlashClustering with FAISS' parameters and seeds, then FAISS
// finishes its own bookkeeping (residual PQ hot start, polysemous, precomputed tables).
//
//   faiss_flash::train_index(&index, n, x);          // was: index.train(n, x);
#pragma once

#include <faiss/Index.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/ProductQuantizer.h>

#include "faiss_ext/FlashOptions.h"

namespace faiss_flash {

/// Trains IndexIVFFlat, IndexIVFPQ, IndexPQ (and any IndexIVF whose residual training
/// does not run k-means) with the engine. Throws std::invalid_argument for other types.
void train_index(faiss::Index* index, faiss::Index::idx_t n, const float* x, const FlashOptions& opt = {});

/// Coarse quantizer of an IVF index: k-means with index->cp into index->nlist centroids,
/// added to index->quantizer (which then needs no further training).
void train_ivf_quantizer(faiss::IndexIVF* index, faiss::Index::idx_t n, const float* x, const FlashOptions& opt = {});

/// All M sub-codebooks of a product quantizer, each a k-means with pq.cp (same seed for
/// every sub-quantizer, as FAISS does). x: (n, pq.d).
void train_product_quantizer(faiss::ProductQuantizer& pq, faiss::Index::idx_t n, const float* x, const FlashOptions& opt = {});

} // namespace faiss_flash
