// The engine API on the CPU backend: assignment against a double-precision reference,
// ties, the counting sort, batches, fp16/bf16 inputs, determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/half_convert.h"
#include "kernels/cpu/narrow_floats.h"
#include "kernels/cpu/update_cpu.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

namespace {

double l2_double(const float* a, const float* b, int64_t d) {
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
    return s;
}

TEST(CpuEngine, AssignmentMatchesDoubleReferenceExceptNearTies) {
    for (int64_t d : {1, 3, 17, 100, 129}) {
        for (int64_t k : {1, 7, 513, 1100}) {
            const int64_t n = 700;
            const uint64_t seed = 1000 + d * 7 + k;
            SCOPED_TRACE("d=" + std::to_string(d) + " k=" + std::to_string(k) + " seed=" + std::to_string(seed));
            const auto x = flash_test::gaussian_mixture(n, d, 10, seed);
            const auto c = flash_test::gaussian_mixture(k, d, 10, seed + 1);
            std::vector<int64_t> lab(n);
            std::vector<float> dis(n);
            flash::assign_nearest(flash_test::host_points(x.data(), n, d), c.data(), k, flash::Metric::L2, lab.data(), dis.data(),
                                  flash::Backend::CPU);
            for (int64_t i = 0; i < n; i++) {
                double best = 1e300;
                for (int64_t j = 0; j < k; j++) best = std::min(best, l2_double(&x[i * d], &c[j * d], d));
                const double got = l2_double(&x[i * d], &c[lab[i] * d], d);
                const double scale = l2_double(&x[i * d], std::vector<float>(d, 0).data(), d) + 1;
                ASSERT_LE(got - best, 1e-5 * scale) << "point " << i;
                ASSERT_NEAR(dis[i], got, 1e-4 * (scale + got));
            }
        }
    }
}

TEST(CpuEngine, TiesGoToLowestIndex) {
    const int64_t d = 3, k = 1200; // several centroid tiles, all identical
    std::vector<float> c(k * d, 1.0f);
    std::vector<float> x = {1, 1, 1, 0, 0, 0, 5, -2, 3};
    std::vector<int64_t> lab(3);
    for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
        flash::assign_nearest(flash_test::host_points(x.data(), 3, d), c.data(), k, m, lab.data(), nullptr, flash::Backend::CPU);
        for (auto l : lab) EXPECT_EQ(l, 0);
    }
}

TEST(CpuEngine, InnerProductIsArgmax) {
    const int64_t n = 300, d = 20, k = 40;
    const auto x = flash_test::gaussian_mixture(n, d, 5, 77);
    const auto c = flash_test::gaussian_mixture(k, d, 5, 78);
    std::vector<int64_t> lab(n);
    std::vector<float> sim(n);
    flash::assign_nearest(flash_test::host_points(x.data(), n, d), c.data(), k, flash::Metric::InnerProduct, lab.data(),
                          sim.data(), flash::Backend::CPU);
    for (int64_t i = 0; i < n; i++) {
        double best = -1e300;
        for (int64_t j = 0; j < k; j++) {
            double s = 0;
            for (int64_t t = 0; t < d; t++) s += double(x[i * d + t]) * c[j * d + t];
            best = std::max(best, s);
        }
        EXPECT_NEAR(sim[i], best, 1e-3 * (1 + std::fabs(best)));
    }
}

TEST(CpuEngine, CountingSortIsStableAndComplete) {
    const int64_t n = 50000, k = 37;
    std::mt19937 rng(5);
    std::vector<int64_t> labels(n);
    for (auto& l : labels) l = rng() % k;
    std::vector<int64_t> order, offsets;
    flash::cpu::sort_by_cluster(labels.data(), n, k, order, offsets);
    ASSERT_EQ(offsets[k], n);
    for (int64_t c = 0; c < k; c++)
        for (int64_t s = offsets[c]; s < offsets[c + 1]; s++) {
            EXPECT_EQ(labels[order[s]], c);
            if (s > offsets[c]) {
                EXPECT_LT(order[s - 1], order[s]);
            }
        }
}

TEST(CpuEngine, IntegerDataGivesExactCentroids) {
    // Integer inputs make fp32 sums exact: the update must equal the exact mean rounded once.
    const int64_t n = 5000, d = 9, k = 8;
    const auto x = flash_test::integer_points(n, d, 100, 31);
    std::vector<int64_t> labels(n);
    for (int64_t i = 0; i < n; i++) labels[i] = (i * 7) % k;
    std::vector<float> cen(k * d), counts(k);
    flash::cpu::update_centroids(x.data(), flash::DType::F32, n, d, labels.data(), nullptr, k, 0, cen.data(),
                                 counts.data());
    for (int64_t c = 0; c < k; c++) {
        std::vector<double> sum(d, 0);
        int64_t cnt = 0;
        for (int64_t i = 0; i < n; i++)
            if (labels[i] == c) {
                cnt++;
                for (int64_t j = 0; j < d; j++) sum[j] += x[i * d + j];
            }
        EXPECT_EQ(counts[c], float(cnt));
        for (int64_t j = 0; j < d; j++) EXPECT_EQ(cen[c * d + j], float(sum[j]) * (1 / float(cnt)));
    }
}

TEST(CpuEngine, BatchEqualsSeparateRuns) {
    const int64_t B = 3, n = 1000, d = 10, k = 12;
    std::vector<float> x;
    for (int64_t b = 0; b < B; b++) {
        auto xb = flash_test::gaussian_mixture(n, d, 6, 40 + b);
        x.insert(x.end(), xb.begin(), xb.end());
    }
    std::vector<float> c0(B * k * d);
    for (int64_t b = 0; b < B; b++)
        std::memcpy(&c0[b * k * d], &x[b * n * d + 13 * d], sizeof(float) * k * d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 7;
    opt.backend = flash::Backend::CPU;
    auto cb = c0;
    const auto stats = flash::run_lloyd(flash_test::host_points(x.data(), n, d, flash::DType::F32, B), cb.data(), opt);
    ASSERT_EQ(stats.size(), size_t(B));
    for (int64_t b = 0; b < B; b++) {
        std::vector<float> cs(c0.begin() + b * k * d, c0.begin() + (b + 1) * k * d);
        const auto s1 = flash::run_lloyd(flash_test::host_points(&x[b * n * d], n, d), cs.data(), opt);
        EXPECT_EQ(std::memcmp(cs.data(), &cb[b * k * d], sizeof(float) * k * d), 0) << "problem " << b;
        EXPECT_EQ(s1[0].back().obj, stats[b].back().obj);
    }
}

TEST(CpuEngine, ObjectiveNeverIncreasesAndRunsAreDeterministic) {
    const int64_t n = 20000, d = 16, k = 50;
    const auto x = flash_test::gaussian_mixture(n, d, 60, 50);
    std::vector<float> c0(x.begin(), x.begin() + k * d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 12;
    opt.backend = flash::Backend::CPU;
    auto c1 = c0, c2 = c0;
    const auto s1 = flash::run_lloyd(flash_test::host_points(x.data(), n, d), c1.data(), opt);
    const auto s2 = flash::run_lloyd(flash_test::host_points(x.data(), n, d), c2.data(), opt);
    EXPECT_EQ(std::memcmp(c1.data(), c2.data(), sizeof(float) * k * d), 0);
    for (size_t i = 1; i < s1[0].size(); i++) EXPECT_LE(s1[0][i].obj, s1[0][i - 1].obj * (1 + 1e-6));
}

uint16_t to_half_bits(float f) { // round to nearest even, normal range only (test data)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const int exp = int((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffffu;
    if (exp <= 0) return uint16_t(sign);
    uint32_t h = sign | (uint32_t(exp) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;
    return uint16_t(h);
}

uint16_t to_bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1);
    return uint16_t(u >> 16);
}

TEST(CpuEngine, HalfAndBfloat16InputsMatchFp32OnRoundedData) {
    const int64_t n = 3000, d = 24, k = 20;
    const auto x = flash_test::gaussian_mixture(n, d, 25, 60);
    for (auto t : {flash::DType::F16, flash::DType::BF16}) {
        std::vector<uint16_t> xh(n * d);
        std::vector<float> xr(n * d);
        for (int64_t i = 0; i < n * d; i++) {
            xh[i] = t == flash::DType::F16 ? to_half_bits(x[i]) : to_bf16_bits(x[i]);
            xr[i] = t == flash::DType::F16 ? flash::cpu::half_to_float(xh[i]) : flash::cpu::bf16_to_float(xh[i]);
            ASSERT_NEAR(xr[i], x[i], 1e-2 * (1 + std::fabs(x[i])));
        }
        std::vector<float> c0(xr.begin(), xr.begin() + k * d);
        flash::LloydOptions opt;
        opt.k = k;
        opt.niter = 5;
        opt.backend = flash::Backend::CPU;
        auto ch = c0, cf = c0;
        flash::run_lloyd(flash_test::host_points(xh.data(), n, d, t), ch.data(), opt);
        flash::run_lloyd(flash_test::host_points(xr.data(), n, d), cf.data(), opt);
        EXPECT_EQ(std::memcmp(ch.data(), cf.data(), sizeof(float) * k * d), 0) << "dtype " << int(t);
    }
}

TEST(CpuEngine, HalfConversionOfSpecialValues) {
    EXPECT_EQ(flash::cpu::half_to_float(0x3c00), 1.0f);
    EXPECT_EQ(flash::cpu::half_to_float(0xc000), -2.0f);
    EXPECT_EQ(flash::cpu::half_to_float(0x7bff), 65504.0f);
    EXPECT_EQ(flash::cpu::half_to_float(0x0001), std::ldexp(1.0f, -24));
    EXPECT_TRUE(std::isinf(flash::cpu::half_to_float(0x7c00)));
    EXPECT_TRUE(std::isnan(flash::cpu::half_to_float(0x7e00)));
    EXPECT_EQ(flash::cpu::bf16_to_float(0x3f80), 1.0f);
}

// fp32 -> fp16 / bf16 (the streaming engine's transfer_dtype): every finite half and bf16
// value converts back to itself, midpoints between neighbours round to the even one, values
// beyond the range become Inf.
TEST(CpuEngine, FloatToHalfAndBf16RoundToNearestEven) {
    using flash::cpu::bf16_to_float;
    using flash::cpu::float_to_bf16;
    using flash::cpu::float_to_half;
    using flash::cpu::half_to_float;
    for (uint32_t h = 0; h < 0x10000; h++) {
        const uint16_t v = uint16_t(h);
        if ((v & 0x7c00u) != 0x7c00u) {
            ASSERT_EQ(float_to_half(half_to_float(v)), v) << "half " << h;
            const uint16_t next = uint16_t(v + 1); // neighbour of the same sign (or the first Inf)
            if ((v & 0x7fffu) < 0x7bffu) {
                const double mid = (double(half_to_float(v)) + double(half_to_float(next))) / 2;
                const uint16_t even = (v & 1u) ? next : v;
                ASSERT_EQ(float_to_half(float(mid)), even) << "midpoint above half " << h;
                ASSERT_EQ(float_to_half(std::nextafter(float(mid), 0.f)), v) << "below midpoint " << h;
            }
        }
        if ((v & 0x7f80u) != 0x7f80u) {
            ASSERT_EQ(float_to_bf16(bf16_to_float(v)), v) << "bf16 " << h;
        }
    }
    EXPECT_EQ(float_to_half(65519.f), 0x7bffu);
    EXPECT_EQ(float_to_half(65520.f), 0x7c00u);
    EXPECT_EQ(float_to_half(-1e6f), 0xfc00u);
    EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000u); // halfway to the smallest subnormal: even
    EXPECT_EQ(float_to_half(std::ldexp(1.5f, -25)), 0x0001u);
    EXPECT_EQ(float_to_bf16(1.00390625f), 0x3f80u); // 1 + 2^-8: halfway, rounds to even (1.0)
    EXPECT_EQ(float_to_bf16(1.01171875f), 0x3f82u); // 1 + 3 * 2^-8: halfway, rounds to even
}

// The vector path of narrow_floats (AVX2 / F16C) against the scalar loop, bit for bit: every
// finite upper half of an fp32 word with low halves at and around the rounding points of fp16
// (bit 12 and up, the subnormals' higher) and bf16 (bit 15), and random ones; a length that
// leaves a tail for the scalar loop; the overflow flag from a lane in either part.
TEST(CpuEngine, VectorNarrowingMatchesScalarBitForBit) {
    if (!flash::cpu::narrow_floats_vectorized())
        GTEST_SKIP() << "this CPU has no AVX2 and F16C: narrow_floats runs the scalar loop only";
    std::vector<uint32_t> lows = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000,
                                  0x7fff, 0x8000, 0x8001, 0xbfff, 0xc000, 0xefff, 0xf000, 0xffff};
    std::mt19937 rng(12345);
    for (int i = 0; i < 8; i++) lows.push_back(rng() & 0xffffu);
    std::vector<float> x;
    for (uint32_t hi = 0; hi < 0x10000; hi++) {
        if ((hi & 0x7f80u) == 0x7f80u) continue; // Inf / NaN: not valid input
        for (uint32_t lo : lows) {
            const uint32_t u = hi << 16 | lo;
            float f;
            std::memcpy(&f, &u, 4);
            x.push_back(f);
        }
    }
    x.resize(x.size() - x.size() % 8 - 3); // a tail of 5 (of the values above) for the scalar loop
    for (flash::DType to : {flash::DType::F16, flash::DType::BF16}) {
        const char* name = to == flash::DType::F16 ? "f16" : "bf16";
        std::vector<uint16_t> vec(x.size()), ref(x.size());
        EXPECT_FALSE(flash::cpu::narrow_floats(x.data(), vec.data(), int64_t(x.size()), to)) << name;
        EXPECT_FALSE(flash::cpu::narrow_floats_scalar(x.data(), ref.data(), int64_t(x.size()), to)) << name;
        for (size_t i = 0; i < x.size(); i++)
            ASSERT_EQ(vec[i], ref[i]) << name << " of " << x[i] << " (element " << i << ")";
        // overflow in one lane of the vector part, then only in the tail, then nowhere
        const float big = to == flash::DType::F16 ? 65520.f : 3.4e38f;
        std::vector<float> y(37, 1.5f);
        y[11] = -big;
        EXPECT_FALSE(flash::cpu::narrow_floats(y.data(), vec.data(), int64_t(y.size()), to)) << name;
        y[11] = 1.5f;
        y[35] = big;
        EXPECT_FALSE(flash::cpu::narrow_floats(y.data(), vec.data(), int64_t(y.size()), to)) << name;
        y[35] = to == flash::DType::F16 ? 65504.f : 3.38e38f;
        EXPECT_TRUE(flash::cpu::narrow_floats(y.data(), vec.data(), int64_t(y.size()), to)) << name;
    }
}

} // namespace
