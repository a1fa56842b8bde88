// FlashClustering parameters and the properties FAISS' own clustering tests check
// (faiss tests/test_clustering.py), on the CPU engine.
#include <faiss/IndexFlat.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "faiss_ext/FlashClustering.h"
#include "test_data.h"

namespace {

using faiss_flash::FlashClustering;

FlashClustering make(int d, int k, int niter = 10) {
    FlashClustering c(d, k);
    c.niter = niter;
    c.flash.backend = flash_test::test_backend();
    return c;
}

float final_obj(const faiss::Clustering& c) { return c.iteration_stats.back().obj; }

TEST(ClusteringParams, ObjectiveDecreases) {
    const auto x = flash_test::gaussian_mixture(5000, 32, 64, 1);
    auto c = make(32, 64, 20);
    faiss::IndexFlatL2 index(32);
    c.train(5000, x.data(), index);
    ASSERT_EQ(c.iteration_stats.size(), 20u);
    for (size_t i = 1; i < c.iteration_stats.size(); i++)
        EXPECT_LE(c.iteration_stats[i].obj, c.iteration_stats[i - 1].obj * (1 + 1e-6)) << i;
    EXPECT_LT(final_obj(c), c.iteration_stats[0].obj);
}

TEST(ClusteringParams, MoreCentroidsLowerError) {
    const auto x = flash_test::gaussian_mixture(10000, 16, 100, 2);
    float prev = HUGE_VALF;
    for (int k : {8, 32, 128}) {
        auto c = make(16, k);
        c.max_points_per_centroid = 10000; // same training set for every k
        faiss::IndexFlatL2 index(16);
        c.train(10000, x.data(), index);
        EXPECT_LT(final_obj(c), prev) << "k=" << k;
        prev = final_obj(c);
    }
}

TEST(ClusteringParams, IntCentroidsAreIntegers) {
    const auto x = flash_test::integer_points(3000, 8, 256, 3);
    auto c = make(8, 20);
    c.int_centroids = true;
    faiss::IndexFlatL2 index(8);
    c.train(3000, x.data(), index);
    for (float v : c.centroids) EXPECT_EQ(v, std::round(v));
}

TEST(ClusteringParams, NastyDataFiveDistinctPointsTenCentroids) {
    // FAISS test_nasty_clustering: many duplicates of 5 points, k = 10: must not crash,
    // empty clusters get split, every centroid is finite.
    const int d = 2, k = 10;
    std::vector<float> x;
    for (int i = 0; i < 1000; i++) {
        x.push_back(float(i % 5));
        x.push_back(float((i % 5) * 3));
    }
    auto c = make(d, k);
    faiss::IndexFlatL2 index(d);
    c.train(1000, x.data(), index);
    int splits = 0;
    for (const auto& s : c.iteration_stats) splits += s.nsplit;
    EXPECT_GT(splits, 0);
    for (float v : c.centroids) EXPECT_TRUE(std::isfinite(v));
    EXPECT_EQ(index.ntotal, k);
}

TEST(ClusteringParams, NredoKeepsTheBest) {
    const auto x = flash_test::gaussian_mixture(4000, 8, 40, 5);
    float best_single = HUGE_VALF;
    for (int redo = 0; redo < 4; redo++) {
        // Redo r of nredo = 4 uses seed + 1 + r * 15486557 for its initialisation; the
        // same run alone is seed' = seed + r * 15486557 with nredo = 1.
        auto c = make(8, 30, 6);
        c.seed = 1234 + redo * 15486557;
        faiss::IndexFlatL2 index(8);
        c.train(4000, x.data(), index);
        best_single = std::min(best_single, final_obj(c));
    }
    auto c = make(8, 30, 6);
    c.nredo = 4;
    faiss::IndexFlatL2 index(8);
    c.train(4000, x.data(), index);
    EXPECT_EQ(final_obj(c), best_single);
    EXPECT_EQ(index.ntotal, 30);
}

TEST(ClusteringParams, NEqualsKCopiesTheInput) {
    const auto x = flash_test::gaussian_mixture(16, 4, 4, 6);
    auto c = make(4, 16);
    faiss::IndexFlatL2 index(4);
    c.train(16, x.data(), index);
    EXPECT_EQ(std::memcmp(c.centroids.data(), x.data(), sizeof(float) * 64), 0);
    ASSERT_EQ(c.iteration_stats.size(), 1u);
    EXPECT_EQ(c.iteration_stats[0].imbalance_factor, 1.0);
    EXPECT_EQ(index.ntotal, 16);
}

TEST(ClusteringParams, SphericalCentroidsHaveUnitNorm) {
    const auto x = flash_test::gaussian_mixture(3000, 12, 20, 7);
    auto c = make(12, 16);
    c.spherical = true;
    faiss::IndexFlatIP index(12);
    c.train(3000, x.data(), index);
    for (int i = 0; i < 16; i++) {
        double s = 0;
        for (int j = 0; j < 12; j++) s += double(c.centroids[i * 12 + j]) * c.centroids[i * 12 + j];
        EXPECT_NEAR(s, 1.0, 1e-5);
    }
}

TEST(ClusteringParams, UpdateIndexRetrainsTheIndex) {
    // An index that counts train() calls: with update_index it is retrained at the end.
    struct CountingIndex : faiss::IndexFlatL2 {
        int trains = 0;
        explicit CountingIndex(int d) : faiss::IndexFlatL2(d) {}
        void train(idx_t, const float*) override { trains++; }
    };
    const auto x = flash_test::gaussian_mixture(2000, 8, 10, 8);
    auto c = make(8, 10, 4);
    c.update_index = true;
    CountingIndex index(8);
    c.train(2000, x.data(), index);
    EXPECT_GE(index.trains, 1);
    EXPECT_EQ(index.ntotal, 10);
}

TEST(ClusteringParams, WeightsPullCentroids) {
    // Two points, one cluster: the centroid is the weighted mean.
    std::vector<float> x = {0, 0, 10, 0, 0, 0, 10, 0};
    std::vector<float> w = {3, 1, 3, 1};
    auto c = make(2, 1, 3);
    faiss::IndexFlatL2 index(2);
    c.train(4, x.data(), index, w.data());
    EXPECT_FLOAT_EQ(c.centroids[0], 2.5f);
    EXPECT_FLOAT_EQ(c.centroids[1], 0.0f);
}

TEST(ClusteringParams, VerboseLinesLikeFaiss) {
    const auto x = flash_test::gaussian_mixture(2000, 8, 10, 9);
    auto c = make(8, 10, 3);
    c.verbose = true;
    faiss::IndexFlatL2 index(8);
    testing::internal::CaptureStdout();
    c.train(2000, x.data(), index);
    const std::string out = testing::internal::GetCapturedStdout();
    EXPECT_NE(out.find("Clustering 2000 points in 8D to 10 clusters, redo 1 times, 3 iterations"), std::string::npos)
            << out;
    EXPECT_NE(out.find("  Iteration 2 ("), std::string::npos) << out;
    EXPECT_NE(out.find("objective="), std::string::npos);
}

TEST(ClusteringParams, StatsTimesAreCumulative) {
    const auto x = flash_test::gaussian_mixture(20000, 16, 30, 10);
    auto c = make(16, 30, 5);
    faiss::IndexFlatL2 index(16);
    c.train(20000, x.data(), index);
    for (size_t i = 1; i < c.iteration_stats.size(); i++) {
        EXPECT_GE(c.iteration_stats[i].time, c.iteration_stats[i - 1].time);
        EXPECT_GE(c.iteration_stats[i].time_search, c.iteration_stats[i - 1].time_search);
        EXPECT_LE(c.iteration_stats[i].time_search, c.iteration_stats[i].time + 1e-3);
    }
}

} // namespace
