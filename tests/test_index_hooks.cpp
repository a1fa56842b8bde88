// FAISS training through each faiss-flash hook gives the same quality as stock FAISS:
// recall@10 at nprobe = 16 within 0.01 (IVF-Flat, IVF-PQ), and PQ reconstruction error.
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "faiss_ext/FlashAssignIndex.h"
#include "faiss_ext/FlashFlatQuantizer.h"
#include "faiss_ext/train_index.h"
#include "test_data.h"

namespace {

using idx_t = faiss::Index::idx_t;
constexpr int d = 32, nlist = 64, nq = 200, topk = 10;
constexpr int64_t nb = 20000;

struct Data {
    std::vector<float> xb, xq;
    std::vector<int64_t> gt;
    Data() {
        xb = flash_test::gaussian_mixture(nb, d, 200, 101, 2.0f);
        xq = flash_test::gaussian_mixture(nq, d, 200, 101, 2.0f); // same centres, other points
        faiss::IndexFlatL2 exact(d);
        exact.add(nb, xb.data());
        std::vector<float> dis(nq * topk);
        std::vector<idx_t> lab(nq * topk);
        exact.search(nq, xq.data(), topk, dis.data(), lab.data());
        gt.assign(lab.begin(), lab.end());
    }
};

const Data& data() {
    static const Data dt;
    return dt;
}

double recall(faiss::IndexIVF& index) {
    const auto& dt = data();
    index.add(nb, dt.xb.data());
    index.nprobe = 16;
    std::vector<float> dis(nq * topk);
    std::vector<idx_t> lab(nq * topk);
    index.search(nq, dt.xq.data(), topk, dis.data(), lab.data());
    return flash_test::recall_at(dt.gt, std::vector<int64_t>(lab.begin(), lab.end()), nq, topk);
}

faiss_flash::FlashOptions cpu() {
    faiss_flash::FlashOptions o;
    o.backend = flash_test::test_backend();
    return o;
}

// Builds an IVF index (flat or PQ), trains it with `train`, returns recall@10.
double ivf_recall(bool pq, const std::function<void(faiss::IndexIVF&, faiss::Index*&)>& setup,
                  const std::function<void(faiss::IndexIVF&)>& train) {
    faiss::Index* quantizer = new faiss::IndexFlatL2(d);
    std::unique_ptr<faiss::IndexIVF> index;
    faiss::Index* q = quantizer;
    if (pq)
        index.reset(new faiss::IndexIVFPQ(q, d, nlist, 8, 8));
    else
        index.reset(new faiss::IndexIVFFlat(q, d, nlist));
    index->own_fields = true;
    setup(*index, index->quantizer);
    train(*index);
    return recall(*index);
}

void no_setup(faiss::IndexIVF&, faiss::Index*&) {}
void faiss_train(faiss::IndexIVF& i) { i.train(nb, data().xb.data()); }

class IvfHooks : public testing::TestWithParam<bool> {};

TEST_P(IvfHooks, RecallMatchesStockFaiss) {
    const bool pq = GetParam();
    const double stock = ivf_recall(pq, no_setup, faiss_train);
    EXPECT_GT(stock, pq ? 0.3 : 0.8) << "the data should make IVF work";

    // Hook 1: the assignment index of FAISS' own k-means.
    const double hook_assign = ivf_recall(
            pq,
            [](faiss::IndexIVF& i, faiss::Index*&) {
                auto* a = new faiss_flash::FlashAssignIndex(d);
                a->flash = cpu();
                i.clustering_index = a; // the one changed line
            },
            faiss_train);
    // Hook 2: a quantizer that trains alone with our k-means.
    const double hook_quantizer = ivf_recall(
            pq,
            [](faiss::IndexIVF& i, faiss::Index*& q) {
                delete q;
                auto* fq = new faiss_flash::FlashFlatQuantizer(d, nlist);
                fq->flash = cpu();
                q = fq;
                i.quantizer_trains_alone = 1;
            },
            faiss_train);
    // Hook 3: whole-index training.
    const double hook_train = ivf_recall(pq, no_setup, [](faiss::IndexIVF& i) {
        faiss_flash::train_index(&i, nb, data().xb.data(), cpu());
    });
    EXPECT_NEAR(hook_assign, stock, 0.01);
    EXPECT_NEAR(hook_quantizer, stock, 0.01);
    EXPECT_NEAR(hook_train, stock, 0.01);
}

INSTANTIATE_TEST_SUITE_P(FlatAndPQ, IvfHooks, testing::Values(false, true),
                         [](const testing::TestParamInfo<bool>& p) { return p.param ? "IVFPQ" : "IVFFlat"; });

double pq_error(faiss::IndexPQ& index) {
    const auto& dt = data();
    std::vector<uint8_t> codes(nb * index.pq.code_size);
    index.pq.compute_codes(dt.xb.data(), codes.data(), nb);
    std::vector<float> rec(nb * d);
    index.pq.decode(codes.data(), rec.data(), nb);
    double err = 0;
    for (size_t i = 0; i < rec.size(); i++) err += double(rec[i] - dt.xb[i]) * (rec[i] - dt.xb[i]);
    return err;
}

TEST(PqHooks, CodebooksMatchStockFaiss) {
    const auto& dt = data();
    faiss::IndexPQ stock(d, 8, 6);
    stock.train(nb, dt.xb.data());

    faiss::IndexPQ via_train(d, 8, 6);
    faiss_flash::train_index(&via_train, nb, dt.xb.data(), cpu());

    faiss::IndexPQ via_assign(d, 8, 6);
    faiss_flash::FlashAssignIndex assign(d / 8);
    assign.flash = cpu();
    via_assign.pq.assign_index = &assign; // the one changed line
    via_assign.train(nb, dt.xb.data());

    const double e0 = pq_error(stock);
    EXPECT_NEAR(pq_error(via_train), e0, 0.01 * e0);
    EXPECT_NEAR(pq_error(via_assign), e0, 0.01 * e0);
    // Bit-identical codebooks on the CPU engine: same seeds, same sums.
    if (flash_test::test_backend() == flash::Backend::CPU) {
        EXPECT_EQ(stock.pq.centroids, via_train.pq.centroids);
    }
}

TEST(IvfHooks, QuantizerAlreadyTrainedIsKept) {
    const auto& dt = data();
    faiss::IndexFlatL2 q(d);
    faiss::IndexIVFFlat index(&q, d, nlist);
    faiss_flash::train_index(&index, nb, dt.xb.data(), cpu());
    std::vector<float> before(q.get_xb(), q.get_xb() + nlist * d);
    index.is_trained = false;
    faiss_flash::train_index(&index, nb, dt.xb.data(), cpu());
    EXPECT_EQ(before, std::vector<float>(q.get_xb(), q.get_xb() + nlist * d));
}

} // namespace
