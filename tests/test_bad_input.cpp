// Bad input gets a clear exception and leaves the outputs untouched; nothing crashes.
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/FaissAssert.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>
#include <stdexcept>

#include "faiss_ext/FlashAssignIndex.h"
#include "faiss_ext/FlashClustering.h"
#include "faiss_ext/train_index.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

namespace {

using faiss_flash::FlashClustering;

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

FlashClustering cpu_clustering(int d, int k) {
    FlashClustering c(d, k);
    c.niter = 3;
    c.flash.backend = flash::Backend::CPU;
    return c;
}

TEST(BadInput, NanAndInfAreRejected) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        auto x = flash_test::gaussian_mixture(500, 4, 5, 1);
        x[777] = bad;
        auto c = cpu_clustering(4, 5);
        faiss::IndexFlatL2 index(4);
        EXPECT_NE(error_of([&] { c.train(500, x.data(), index); }).find("NaN"), std::string::npos);
        EXPECT_TRUE(c.centroids.empty());
        EXPECT_TRUE(c.iteration_stats.empty());
        EXPECT_EQ(index.ntotal, 0);
    }
}

TEST(BadInput, BadWeightsAreRejected) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -1.f}) {
        const auto x = flash_test::gaussian_mixture(500, 4, 5, 1);
        std::vector<float> w(500, 1.f);
        w[123] = bad;
        auto c = cpu_clustering(4, 5);
        faiss::IndexFlatL2 index(4);
        const std::string e = error_of([&] { c.train(500, x.data(), index, w.data()); });
        EXPECT_NE(e.find("weight 123"), std::string::npos) << e;
        EXPECT_TRUE(c.centroids.empty());
        // The engine's own entry point checks them too.
        std::vector<float> cen(x.begin(), x.begin() + 5 * 4);
        const auto before = cen;
        flash::LloydOptions opt;
        opt.k = 5;
        opt.niter = 3;
        opt.backend = flash::Backend::CPU;
        opt.weights = w.data();
        EXPECT_THROW(flash::run_lloyd(flash_test::host_points(x.data(), 500, 4), cen.data(), opt),
                     std::invalid_argument);
        EXPECT_EQ(cen, before);
    }
    auto c = cpu_clustering(4, 5);
    c.max_points_per_centroid = 0;
    faiss::IndexFlatL2 index(4);
    const auto x = flash_test::gaussian_mixture(500, 4, 5, 1);
    EXPECT_NE(error_of([&] { c.train(500, x.data(), index); }).find("max_points_per_centroid"), std::string::npos);
}

TEST(BadInput, FewerPointsThanCentroids) {
    const auto x = flash_test::gaussian_mixture(5, 4, 2, 2);
    auto c = cpu_clustering(4, 10);
    faiss::IndexFlatL2 index(4);
    EXPECT_NE(error_of([&] { c.train(5, x.data(), index); }).find("at least as large as number of clusters"),
              std::string::npos);
    EXPECT_TRUE(c.centroids.empty());
}

TEST(BadInput, NonPositiveK) {
    const auto x = flash_test::gaussian_mixture(50, 4, 2, 3);
    for (int k : {0, -3}) {
        FlashClustering c(4, k);
        faiss::IndexFlatL2 index(4);
        EXPECT_NE(error_of([&] { c.train(50, x.data(), index); }), "") << "k=" << k;
    }
    std::vector<float> cen(16);
    flash::LloydOptions opt;
    opt.k = 0;
    flash::Points p = flash_test::host_points(x.data(), 50, 4);
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
}

TEST(BadInput, DimensionMismatchWithIndex) {
    const auto x = flash_test::gaussian_mixture(100, 4, 2, 4);
    auto c = cpu_clustering(4, 3);
    faiss::IndexFlatL2 index(8);
    EXPECT_NE(error_of([&] { c.train(100, x.data(), index); }).find("Index dimension 8 not the same as data dimension 4"),
              std::string::npos);
}

TEST(BadInput, NullPointers) {
    auto c = cpu_clustering(4, 3);
    faiss::IndexFlatL2 index(4);
    EXPECT_NE(error_of([&] { c.train(100, nullptr, index); }).find("null"), std::string::npos);
    EXPECT_THROW(faiss_flash::train_index(nullptr, 10, nullptr), faiss::FaissException);
    flash::Points p;
    p.n = 10;
    p.d = 2;
    std::vector<float> cen(4);
    flash::LloydOptions opt;
    opt.k = 2;
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
    p.data = cen.data();
    EXPECT_THROW(flash::run_lloyd(p, nullptr, opt), std::invalid_argument);
}

TEST(BadInput, BadShapesAndOptions) {
    std::vector<float> x(40), cen(8);
    flash::Points p = flash_test::host_points(x.data(), 10, 4);
    flash::LloydOptions opt;
    opt.k = 2;
    opt.backend = flash::Backend::CPU;
    opt.niter = -1;
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
    opt.niter = 1;
    opt.k_frozen = 3;
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
    opt.k_frozen = 0;
    p.d = 0;
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
    p.d = 4;
    p.batch = 0;
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
}

TEST(BadInput, InputCentroidsNotMultipleOfD) {
    const auto x = flash_test::gaussian_mixture(200, 4, 2, 5);
    auto c = cpu_clustering(4, 3);
    c.centroids.resize(5);
    faiss::IndexFlatL2 index(4);
    EXPECT_NE(error_of([&] { c.train(200, x.data(), index); }).find("multiple of dimension"), std::string::npos);
}

TEST(BadInput, UnsupportedIndexTypeForTrainIndex) {
    const auto x = flash_test::gaussian_mixture(200, 4, 2, 6);
    faiss::IndexFlatL2 flat(4);
    EXPECT_THROW(faiss_flash::train_index(&flat, 200, x.data()), std::invalid_argument);
}

TEST(BadInput, CudaRequestedWithoutDevice) {
    if (flash::cuda_available()) GTEST_SKIP() << "a CUDA device is present: nothing to check here";
    const auto x = flash_test::gaussian_mixture(200, 4, 2, 7);
    auto c = cpu_clustering(4, 3);
    c.flash.backend = flash::Backend::CUDA;
    faiss::IndexFlatL2 index(4);
    EXPECT_NE(error_of([&] { c.train(200, x.data(), index); }).find("CUDA"), std::string::npos);
    flash::Points p = flash_test::host_points(x.data(), 200, 4);
    p.device = 0; // claims device memory
    std::vector<float> cen(12);
    flash::LloydOptions opt;
    opt.k = 3;
    EXPECT_THROW(flash::run_lloyd(p, cen.data(), opt), std::invalid_argument);
}

TEST(BadInput, AssignIndexOnEmptyIndexFollowsFaiss) {
    faiss_flash::FlashAssignIndex index(4);
    std::vector<float> q(8, 1.0f), dis(2, 0);
    std::vector<faiss::Index::idx_t> lab(2, 5);
    index.search(2, q.data(), 1, dis.data(), lab.data());
    EXPECT_EQ(lab[0], -1);
    EXPECT_TRUE(std::isinf(dis[0]));
}

} // namespace

namespace {

// The several-GPU / streaming options are checked before any engine runs (CPU builds too).
TEST(BadInput, PlacementOptionsAreChecked) {
    const auto x = flash_test::gaussian_mixture(200, 4, 3, 9);
    std::vector<float> c(x.begin(), x.begin() + 5 * 4);
    const auto before = c;
    auto run = [&](auto&& edit, flash::Points p) {
        flash::LloydOptions o;
        o.k = 5;
        o.niter = 2;
        o.backend = flash::Backend::CPU;
        edit(o);
        return error_of([&] { flash::run_lloyd(p, c.data(), o); });
    };
    const auto pts = flash_test::host_points(x.data(), 200, 4);
    EXPECT_NE(run([](auto& o) { o.cuda_devices = {0, -2}; }, pts).find("cuda_devices"), std::string::npos);
    EXPECT_NE(run([](auto& o) { o.device_memory_limit = -1; }, pts).find("device_memory_limit"), std::string::npos);
    EXPECT_NE(run([](auto& o) { o.stream_piece_rows = -3; }, pts).find("stream_piece_rows"), std::string::npos);
    std::vector<uint16_t> half(200 * 4, 0x3c00);
    const auto hp = flash_test::host_points(half.data(), 200, 4, flash::DType::F16);
    EXPECT_NE(run([](auto& o) { o.transfer_dtype = flash::DType::BF16; }, hp).find("transfer_dtype"), std::string::npos);
    EXPECT_EQ(c, before) << "a refused run wrote centroids";
}

} // namespace
