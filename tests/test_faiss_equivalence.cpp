// FlashClustering (CPU engine) against faiss::Clustering 1.7.3: same seed, same subsample
// and init, so the centroids must be bit-identical wherever no point sits at a tie.
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "faiss_ext/FlashClustering.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

namespace {

using faiss_flash::FlashClustering;

struct Pair {
    faiss::Clustering ref;
    FlashClustering ours;
    Pair(int d, int k, const faiss::ClusteringParameters& cp) : ref(d, k, cp), ours(d, k, cp) {
        ours.flash.backend = flash::Backend::CPU;
    }
};

void expect_bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
    ASSERT_EQ(a.size(), b.size());
    size_t diff = 0;
    for (size_t i = 0; i < a.size(); i++) diff += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    EXPECT_EQ(diff, 0u) << "centroid entries that differ in at least one bit";
}

// Objectives agree to float rounding of ||x||^2 + ||c||^2 - 2 x.c, whose error scales
// with the squared norms, not with the (possibly tiny) distances themselves.
double norm_scale(const std::vector<float>& x) {
    double s = 0;
    for (float v : x) s += double(v) * v;
    return s;
}

void expect_same_stats(const faiss::Clustering& ref, const faiss::Clustering& ours, double scale) {
    ASSERT_EQ(ref.iteration_stats.size(), ours.iteration_stats.size());
    for (size_t i = 0; i < ref.iteration_stats.size(); i++) {
        const auto& a = ref.iteration_stats[i];
        const auto& b = ours.iteration_stats[i];
        EXPECT_NEAR(a.obj, b.obj, 1e-5 * std::fabs(a.obj) + 1e-6 * scale) << "iteration " << i;
        EXPECT_DOUBLE_EQ(a.imbalance_factor, b.imbalance_factor) << "iteration " << i;
        EXPECT_EQ(a.nsplit, b.nsplit) << "iteration " << i;
    }
}

void run_both(int64_t n, int d, int k, const faiss::ClusteringParameters& cp, uint64_t seed,
              const float* weights = nullptr, bool ip = false) {
    SCOPED_TRACE("data seed " + std::to_string(seed));
    const auto x = flash_test::gaussian_mixture(n, d, 2 * k, seed);
    Pair p(d, k, cp);
    faiss::IndexFlat i1(d, ip ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2);
    faiss::IndexFlat i2(d, ip ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2);
    p.ref.train(n, x.data(), i1, weights);
    p.ours.train(n, x.data(), i2, weights);
    expect_bit_identical(p.ref.centroids, p.ours.centroids);
    expect_same_stats(p.ref, p.ours, norm_scale(x));
    ASSERT_EQ(i1.ntotal, i2.ntotal);
    EXPECT_EQ(std::memcmp(i1.get_xb(), i2.get_xb(), sizeof(float) * d * k), 0) << "index holds other centroids";
}

TEST(FaissEquivalence, GaussianNoSubsampling) {
    faiss::ClusteringParameters cp;
    cp.niter = 15;
    run_both(5000, 32, 50, cp, 11);
}

TEST(FaissEquivalence, GaussianWithSubsampling) {
    faiss::ClusteringParameters cp;
    cp.niter = 10;
    cp.max_points_per_centroid = 40; // 20 * 40 = 800 < 3000: FAISS subsamples
    run_both(3000, 17, 20, cp, 12);
}

TEST(FaissEquivalence, ForcedEmptyClustersAreSplitIdentically) {
    // Many clusters and few points, and half of the initial centroids given far from every
    // point: their clusters start empty and FAISS' split rule fills them. The initial centroids
    // are distinct (duplicated rows would make some identical and put points on exact ties,
    // which a BLAS kernel with FMA (OpenBLAS Haswell, Zen) resolves by rounding that depends on
    // the product call's shape, FAISS' as much as ours: DESIGN's exception to bit identity).
    const int d = 8, k = 64;
    const int64_t n = 300;
    const auto x = flash_test::gaussian_mixture(n, d, 4, 13, 10.0f);
    faiss::ClusteringParameters cp;
    cp.niter = 10;
    cp.min_points_per_centroid = 1;
    Pair p(d, k, cp);
    std::vector<float> c0(size_t(k) * d);
    for (int j = 0; j < k; j++)
        for (int t = 0; t < d; t++)
            c0[j * d + t] = j < k / 2 ? x[(j * 9) * d + t] : x[((j - k / 2) * 9) * d + t] + 1000.f + float(j);
    p.ref.centroids = c0;
    p.ours.centroids = c0;
    faiss::IndexFlatL2 i1(d), i2(d);
    p.ref.train(n, x.data(), i1);
    p.ours.train(n, x.data(), i2);
    int total_splits = 0;
    for (const auto& s : p.ref.iteration_stats) total_splits += s.nsplit;
    EXPECT_GE(total_splits, k / 2) << "the far centroids should start empty";
    expect_bit_identical(p.ref.centroids, p.ours.centroids);
    expect_same_stats(p.ref, p.ours, norm_scale(x));
}

TEST(FaissEquivalence, WeightedPoints) {
    const int64_t n = 4000;
    std::vector<float> w(n);
    for (int64_t i = 0; i < n; i++) w[i] = 0.25f + float(i % 7);
    faiss::ClusteringParameters cp;
    cp.niter = 8;
    run_both(n, 24, 30, cp, 14, w.data());
}

TEST(FaissEquivalence, WeightedWithSubsampling) {
    const int64_t n = 3000;
    std::vector<float> w(n);
    for (int64_t i = 0; i < n; i++) w[i] = 1.0f + float(i % 3);
    faiss::ClusteringParameters cp;
    cp.niter = 6;
    cp.max_points_per_centroid = 50;
    run_both(n, 16, 25, cp, 15, w.data());
}

TEST(FaissEquivalence, InnerProductSpherical) {
    faiss::ClusteringParameters cp;
    cp.niter = 10;
    cp.spherical = true;
    run_both(3000, 32, 20, cp, 16, nullptr, /*ip=*/true);
}

TEST(FaissEquivalence, NredoKeepsSameBest) {
    faiss::ClusteringParameters cp;
    cp.niter = 5;
    cp.nredo = 3;
    run_both(2000, 16, 16, cp, 17);
}

TEST(FaissEquivalence, IntCentroids) {
    faiss::ClusteringParameters cp;
    cp.niter = 6;
    cp.int_centroids = true;
    const int64_t n = 2000;
    const int d = 12, k = 10;
    const auto x = flash_test::integer_points(n, d, 50, 18);
    Pair p(d, k, cp);
    faiss::IndexFlatL2 i1(d), i2(d);
    p.ref.train(n, x.data(), i1);
    p.ours.train(n, x.data(), i2);
    // Integer data: ties are possible, so compare objectives and the integer property.
    for (float v : p.ours.centroids) EXPECT_EQ(v, std::round(v));
    EXPECT_NEAR(p.ref.iteration_stats.back().obj, p.ours.iteration_stats.back().obj,
                0.02 * p.ref.iteration_stats.back().obj);
}

TEST(FaissEquivalence, GivenAndFrozenCentroids) {
    const int d = 16, k = 24;
    const int64_t n = 3000;
    const auto x = flash_test::gaussian_mixture(n, d, 30, 19);
    for (bool frozen : {false, true}) {
        SCOPED_TRACE(frozen ? "frozen" : "not frozen");
        faiss::ClusteringParameters cp;
        cp.niter = 8;
        cp.frozen_centroids = frozen;
        Pair p(d, k, cp);
        std::vector<float> given(x.begin() + 100 * d, x.begin() + 108 * d); // 8 given centroids
        p.ref.centroids = given;
        p.ours.centroids = given;
        faiss::IndexFlatL2 i1(d), i2(d);
        p.ref.train(n, x.data(), i1);
        p.ours.train(n, x.data(), i2);
        expect_bit_identical(p.ref.centroids, p.ours.centroids);
        if (frozen) {
            EXPECT_EQ(std::memcmp(p.ours.centroids.data(), given.data(), sizeof(float) * given.size()), 0);
        }
    }
}

TEST(FaissEquivalence, SecondTrainWarmStartsAndAppendsStats) {
    faiss::ClusteringParameters cp;
    cp.niter = 4;
    const int d = 16, k = 12;
    const int64_t n = 1500;
    const auto x = flash_test::gaussian_mixture(n, d, 20, 20);
    Pair p(d, k, cp);
    faiss::IndexFlatL2 i1(d), i2(d);
    p.ref.train(n, x.data(), i1);
    p.ours.train(n, x.data(), i2);
    p.ref.train(n, x.data(), i1);
    p.ours.train(n, x.data(), i2);
    EXPECT_EQ(p.ours.iteration_stats.size(), 8u);
    expect_bit_identical(p.ref.centroids, p.ours.centroids);
}

TEST(FaissEquivalence, NearTieAssignmentsDifferOnlyByRounding) {
    // Points exactly between two centroids (up to float rounding): our assignment may
    // pick either side only where the two distances agree to float precision.
    const int d = 4;
    std::vector<float> c = {0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0};
    const int k = 3;
    const int64_t n = 2000;
    std::vector<float> x(n * d);
    for (int64_t i = 0; i < n; i++) {
        x[i * d + 0] = 1.0f + float(i % 5 - 2) * 1e-7f;
        x[i * d + 1] = float(i % 11) * 0.1f - 0.5f;
        x[i * d + 2] = float(i % 3) * 0.01f;
        x[i * d + 3] = 0.0f;
    }
    faiss::IndexFlatL2 ref(d);
    ref.add(k, c.data());
    std::vector<float> dref(n);
    std::vector<faiss::Index::idx_t> lref(n);
    ref.search(n, x.data(), 1, dref.data(), lref.data());
    std::vector<int64_t> lab(n);
    std::vector<float> dis(n);
    flash::Points p = flash_test::host_points(x.data(), n, d);
    flash::assign_nearest(p, c.data(), k, flash::Metric::L2, lab.data(), dis.data(), flash::Backend::CPU);
    for (int64_t i = 0; i < n; i++) {
        if (lab[i] == lref[i]) continue;
        auto exact = [&](int64_t j) {
            double s = 0;
            for (int t = 0; t < d; t++) s += double(x[i * d + t] - c[j * d + t]) * (x[i * d + t] - c[j * d + t]);
            return s;
        };
        const double a = exact(lab[i]), b = exact(lref[i]);
        EXPECT_LE(std::fabs(a - b), 1e-5 * (1 + std::max(a, b))) << "point " << i << " is not a near-tie";
    }
}

} // namespace
