#include "faiss_ext/train_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/utils/random.h>
#include <faiss/utils/utils.h>

#include <cstdio>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "faiss_ext/FlashClustering.h"

namespace faiss_flash {

using idx_t = faiss::Index::idx_t;

namespace {

// Restores a product quantizer's training settings when it goes out of scope.
struct HotStartGuard {
    faiss::ProductQuantizer& pq;
    faiss::ProductQuantizer::train_type_t type;
    int niter;
    explicit HotStartGuard(faiss::ProductQuantizer& q) : pq(q), type(q.train_type), niter(q.cp.niter) {
        // FAISS' own pq.train then keeps the codebooks we computed (0 iterations).
        pq.train_type = faiss::ProductQuantizer::Train_hot_start;
        pq.cp.niter = 0;
    }
    ~HotStartGuard() {
        pq.train_type = type;
        pq.cp.niter = niter;
    }
};

bool engine_trains(const faiss::ProductQuantizer& pq) {
    return pq.train_type == faiss::ProductQuantizer::Train_default ||
           pq.train_type == faiss::ProductQuantizer::Train_hot_start;
}

} // namespace

void train_ivf_quantizer(faiss::IndexIVF* index, idx_t n, const float* x, const FlashOptions& opt) {
    FAISS_THROW_IF_NOT_MSG(index != nullptr && index->quantizer != nullptr, "faiss-flash: IVF index without quantizer");
    FAISS_THROW_IF_NOT_MSG(x != nullptr, "faiss-flash: training data is a null pointer");
    faiss::Index* q = index->quantizer;
    if (q->is_trained && q->ntotal == idx_t(index->nlist)) {
        if (index->verbose) printf("IVF quantizer does not need training.\n");
        return;
    }
    // Same three modes as faiss::Level1Quantizer::train_q1.
    if (index->quantizer_trains_alone == 1) {
        q->train(n, x);
        q->verbose = index->verbose;
        FAISS_THROW_IF_NOT_MSG(q->ntotal == idx_t(index->nlist), "nlist not consistent with quantizer size");
        return;
    }
    FlashClustering clus(int(index->d), int(index->nlist), index->cp);
    clus.flash = opt;
    if (index->quantizer_trains_alone == 0) {
        q->reset();
        if (index->clustering_index) {
            clus.train(n, x, *index->clustering_index);
            q->add(index->nlist, clus.centroids.data());
        } else {
            clus.train(n, x, *q);
        }
        q->is_trained = true;
    } else if (index->quantizer_trains_alone == 2) {
        faiss::IndexFlat assigner(index->d, index->metric_type);
        clus.train(n, x, assigner);
        q->train(index->nlist, clus.centroids.data());
        q->add(index->nlist, clus.centroids.data());
    } else {
        FAISS_THROW_FMT("faiss-flash: unknown quantizer_trains_alone=%d", int(index->quantizer_trains_alone));
    }
}

// All M sub-problems share n, the seed and therefore FAISS' subsample and initial rows, so
// they run as one batched problem (one engine call, one launch per phase on the GPU). The
// result equals M separate FlashClustering runs. Settings that need per-problem host work
// (nredo, spherical / integer post-processing, hot start, verbose) take that path instead.
void train_product_quantizer(faiss::ProductQuantizer& pq, idx_t n, const float* x, const FlashOptions& opt) {
    FAISS_THROW_IF_NOT_MSG(x != nullptr, "faiss-flash: training data is a null pointer");
    if (!engine_trains(pq)) { // hypercube / shared initialisations: FAISS' own path
        pq.train(n, x);
        return;
    }
    const size_t M = pq.M, dsub = pq.dsub, ksub = pq.ksub;
    const faiss::ClusteringParameters& cp = pq.cp;
    const bool batched = cp.nredo == 1 && !cp.spherical && !cp.int_centroids && !pq.verbose && !cp.verbose &&
                         pq.train_type == faiss::ProductQuantizer::Train_default && idx_t(ksub) < n &&
                         cp.max_points_per_centroid > 1;
    if (!batched) {
        std::vector<float> slice(size_t(n) * dsub);
        for (size_t m = 0; m < M; m++) {
            for (idx_t i = 0; i < n; i++) memcpy(&slice[i * dsub], x + i * pq.d + m * dsub, sizeof(float) * dsub);
            FlashClustering clus(int(dsub), int(ksub), cp);
            clus.flash = opt;
            if (pq.train_type == faiss::ProductQuantizer::Train_hot_start)
                clus.centroids.assign(pq.get_centroids(m, 0), pq.get_centroids(m, 0) + dsub * ksub);
            if (pq.verbose) clus.verbose = true;
            faiss::IndexFlatL2 index(dsub);
            clus.train(n, slice.data(), index);
            pq.set_params(clus.centroids.data(), int(m));
        }
        return;
    }
    FAISS_THROW_IF_NOT_FMT(n >= idx_t(ksub),
                           "Number of training points (%ld) should be at least as large as number of clusters (%zd)",
                           long(n), ksub);
    // Rows used for training, as FlashClustering / faiss::Clustering choose them.
    std::vector<int> rows;
    if (n > idx_t(ksub) * cp.max_points_per_centroid) {
        std::vector<int> perm(n);
        faiss::rand_perm(perm.data(), n, cp.seed);
        rows.assign(perm.begin(), perm.begin() + ksub * cp.max_points_per_centroid);
    } else {
        if (n < idx_t(ksub) * cp.min_points_per_centroid)
            fprintf(stderr, "WARNING clustering %ld points to %zd centroids: please provide at least %ld training points\n",
                    long(n), ksub, long(idx_t(ksub) * cp.min_points_per_centroid));
        rows.resize(n);
        for (idx_t i = 0; i < n; i++) rows[i] = int(i);
    }
    const idx_t nt = idx_t(rows.size());
    std::vector<int> init(nt);
    faiss::rand_perm(init.data(), nt, cp.seed + 1);

    // (M, nt, dsub) training slices and (M, ksub, dsub) initial centroids.
    std::vector<float> xs(M * nt * dsub), cen(M * ksub * dsub);
    for (size_t m = 0; m < M; m++) {
        float* xm = xs.data() + m * nt * dsub;
        for (idx_t i = 0; i < nt; i++) memcpy(xm + i * dsub, x + size_t(rows[i]) * pq.d + m * dsub, sizeof(float) * dsub);
        for (size_t c = 0; c < ksub; c++)
            memcpy(cen.data() + (m * ksub + c) * dsub, xm + size_t(init[c]) * dsub, sizeof(float) * dsub);
    }
    flash::Points p;
    p.data = xs.data();
    p.batch = idx_t(M);
    p.n = nt;
    p.d = idx_t(dsub);
    flash::LloydOptions lo;
    lo.k = idx_t(ksub);
    lo.niter = cp.niter;
    apply_engine_options(opt, lo);
    flash::run_lloyd(p, cen.data(), lo);
    for (size_t m = 0; m < M; m++) pq.set_params(cen.data() + m * ksub * dsub, int(m));
}

void train_index(faiss::Index* index, idx_t n, const float* x, const FlashOptions& opt) {
    FAISS_THROW_IF_NOT_MSG(index != nullptr, "faiss-flash: index is a null pointer");
    FAISS_THROW_IF_NOT_MSG(x != nullptr, "faiss-flash: training data is a null pointer");
    FAISS_THROW_IF_NOT_FMT(n > 0, "faiss-flash: need training points, got n=%ld", long(n));

    if (auto* pqi = dynamic_cast<faiss::IndexPQ*>(index)) {
        train_product_quantizer(pqi->pq, n, x, opt);
        HotStartGuard keep(pqi->pq);
        pqi->train(n, x); // polysemous training etc.
        return;
    }
    auto* ivf = dynamic_cast<faiss::IndexIVF*>(index);
    if (!ivf)
        throw std::invalid_argument("faiss-flash: train_index supports IndexIVF* and IndexPQ, not this index type");

    train_ivf_quantizer(ivf, n, x, opt);

    if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(ivf)) {
        faiss::ProductQuantizer& pq = ivfpq->pq;
        if (engine_trains(pq)) {
            // The PQ training set exactly as IndexIVFPQ::train_residual_o builds it.
            size_t nt = n;
            const float* xt = faiss::fvecs_maybe_subsample(ivf->d, &nt, pq.cp.max_points_per_centroid * pq.ksub, x,
                                                           ivf->verbose, pq.cp.seed);
            std::unique_ptr<const float[]> del_xt(xt == x ? nullptr : xt);
            std::vector<float> residuals;
            const float* trainset = xt;
            if (ivfpq->by_residual) {
                std::vector<idx_t> assign(nt);
                ivf->quantizer->assign(nt, xt, assign.data());
                residuals.resize(nt * ivf->d);
                for (size_t i = 0; i < nt; i++)
                    ivf->quantizer->compute_residual(xt + i * ivf->d, residuals.data() + i * ivf->d, assign[i]);
                trainset = residuals.data();
            }
            train_product_quantizer(pq, idx_t(nt), trainset, opt);
            HotStartGuard keep(pq);
            ivf->train(n, x);
            return;
        }
    }
    ivf->train(n, x); // the quantizer is trained: FAISS only does its residual bookkeeping
}

} // namespace faiss_flash
