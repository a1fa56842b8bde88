// The CUDA engine against a double-precision reference and the CPU engine. Every test skips
// with a printed reason when no CUDA device is visible (CI has none).
#include <cuda_runtime.h>
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "faiss_ext/FlashClustering.h"
#include "gpu/checkpoint_probe.h"
#include "gpu/require_gpu.h"
#include "gpu/scoped_env.h"
#include "kernels/cpu/half_convert.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

namespace {

using flash_test::host_points;
using flash_test::ScopedEnv;

double dot_d(const float* a, const float* b, int64_t d) {
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += double(a[j]) * b[j];
    return s;
}

double l2_d(const float* a, const float* b, int64_t d) {
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
    return s;
}

// Every label is optimal in double precision up to `rel` times the rounding scale of the
// point (near-ties may go either way); the reported distance matches.
void expect_optimal(const std::vector<float>& x, const std::vector<float>& c, int64_t B, int64_t n, int64_t d,
                    int64_t k, flash::Metric m, const std::vector<int64_t>& lab, const std::vector<float>& dis,
                    double rel) {
    int64_t bad = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            const float* xi = &x[(b * n + i) * d];
            const float* cb = &c[b * k * d];
            double best = m == flash::Metric::L2 ? 1e300 : -1e300, scale = dot_d(xi, xi, d) + 1;
            double cmax = 0;
            for (int64_t j = 0; j < k; j++) {
                const double v = m == flash::Metric::L2 ? l2_d(xi, cb + j * d, d) : dot_d(xi, cb + j * d, d);
                best = m == flash::Metric::L2 ? std::min(best, v) : std::max(best, v);
                cmax = std::max(cmax, dot_d(cb + j * d, cb + j * d, d));
            }
            scale += cmax;
            const int64_t l = lab[b * n + i];
            ASSERT_GE(l, 0);
            ASSERT_LT(l, k);
            const double got = m == flash::Metric::L2 ? l2_d(xi, cb + l * d, d) : dot_d(xi, cb + l * d, d);
            const double gap = m == flash::Metric::L2 ? got - best : best - got;
            if (gap > rel * scale || std::fabs(dis[b * n + i] - got) > rel * scale * 10) bad++;
        }
    EXPECT_EQ(bad, 0) << "points whose label is not the (near-)optimal centroid";
}

TEST(CudaEngine, Fp32AssignmentExactOnAdversarialShapes) {
    REQUIRE_GPU();
    uint64_t seed = 100;
    for (int64_t d : {1, 3, 17, 100, 128, 129, 768, 1000})
        for (int64_t k : {1, 7, 130, 1000})
            for (int64_t n : {5, 700}) {
                const int64_t B = d < 200 ? 3 : 1;
                SCOPED_TRACE("d=" + std::to_string(d) + " k=" + std::to_string(k) + " n=" + std::to_string(n) +
                             " seed=" + std::to_string(seed));
                const auto x = flash_test::gaussian_mixture(B * n, d, 10, seed++);
                const auto c = flash_test::gaussian_mixture(B * k, d, 10, seed++);
                std::vector<int64_t> lab(B * n);
                std::vector<float> dis(B * n);
                for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
                    flash::assign_nearest(host_points(x.data(), n, d, flash::DType::F32, B), c.data(), k, m,
                                          lab.data(), dis.data(), flash::Backend::CUDA);
                    expect_optimal(x, c, B, n, d, k, m, lab, dis, 1e-6);
                }
            }
}

// The tensor-core fp32 path scales each problem by a power of two before its fp16 split
// (split_scale.cuh). Magnitudes far from 1 (a problem at 2^40, one at 2^-40, rows spread over
// 2^-8 .. 2^8 within a problem, centroids at their own scale) must still give the fp32 argmin:
// every label within fp32 rounding (4e-6) of the double-precision optimum, relative to the
// problem's own scale.
TEST(CudaEngine, Fp32SplitExactAcrossMagnitudes) {
    REQUIRE_GPU();
    uint64_t seed = 900;
    for (int64_t d : {64, 128})
        for (int64_t k : {130, 1000}) {
            const int64_t B = 2, n = 700;
            auto x = flash_test::gaussian_mixture(B * n, d, 10, seed++);
            auto c = flash_test::gaussian_mixture(B * k, d, 10, seed++);
            for (int64_t b = 0; b < B; b++) {
                const int e = b == 0 ? 40 : -40;
                for (int64_t i = 0; i < n; i++)
                    for (int64_t j = 0; j < d; j++) {
                        float& v = x[(b * n + i) * d + j];
                        v = std::ldexp(v, e + 4 * int(i % 5) - 8);
                    }
                for (int64_t i = 0; i < k * d; i++) c[b * k * d + i] = std::ldexp(c[b * k * d + i], e);
            }
            std::vector<int64_t> lab(B * n);
            std::vector<float> dis(B * n);
            flash::assign_nearest(host_points(x.data(), n, d, flash::DType::F32, B), c.data(), k, flash::Metric::L2,
                                  lab.data(), dis.data(), flash::Backend::CUDA);
            int64_t bad = 0;
            for (int64_t b = 0; b < B; b++) {
                const float* cb = &c[b * k * d];
                double cmax = 0;
                for (int64_t j = 0; j < k; j++) cmax = std::max(cmax, dot_d(cb + j * d, cb + j * d, d));
                for (int64_t i = 0; i < n; i++) {
                    const float* xi = &x[(b * n + i) * d];
                    double best = 1e300;
                    for (int64_t j = 0; j < k; j++) best = std::min(best, l2_d(xi, cb + j * d, d));
                    const double got = l2_d(xi, cb + lab[b * n + i] * d, d);
                    if (got - best > 4e-6 * (dot_d(xi, xi, d) + cmax)) bad++; // fp32 rounding of the dot products
                }
            }
            EXPECT_EQ(bad, 0) << "d=" << d << " k=" << k << ": labels off the fp32 argmin";
        }
}

uint16_t to_half(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const int exp = int((u >> 23) & 0xff) - 127 + 15;
    const uint32_t mant = u & 0x7fffffu;
    if (exp <= 0) return uint16_t(sign);
    uint32_t h = sign | (uint32_t(exp) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;
    return uint16_t(h);
}

uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1);
    return uint16_t(u >> 16);
}

// x rounded to fp16 or bf16 (t), as raw bits.
std::vector<uint16_t> rounded_copy(const std::vector<float>& x, flash::DType t) {
    std::vector<uint16_t> xh(x.size());
    for (size_t i = 0; i < x.size(); i++) xh[i] = t == flash::DType::F16 ? to_half(x[i]) : to_bf16(x[i]);
    return xh;
}

// Initial centroids (B, k, d): rows first .. first + k - 1 of each problem of x (B, n, d).
std::vector<float> rows_of_each_problem(const std::vector<float>& x, int64_t B, int64_t n, int64_t d, int64_t k,
                                        int64_t first) {
    std::vector<float> c0(size_t(B * k * d));
    for (int64_t b = 0; b < B; b++) std::memcpy(&c0[b * k * d], &x[(b * n + first) * d], sizeof(float) * k * d);
    return c0;
}

TEST(CudaEngine, HalfAndBf16AssignmentAgainstReferenceOnRoundedInputs) {
    REQUIRE_GPU();
    uint64_t seed = 500;
    for (auto t : {flash::DType::F16, flash::DType::BF16})
        for (int64_t d : {3, 17, 128, 129, 1000})
            for (int64_t k : {7, 130, 1000}) {
                const int64_t n = 700, B = 2;
                SCOPED_TRACE("dtype=" + std::to_string(int(t)) + " d=" + std::to_string(d) + " k=" + std::to_string(k));
                auto x = flash_test::gaussian_mixture(B * n, d, 10, seed++);
                auto c = flash_test::gaussian_mixture(B * k, d, 10, seed++);
                std::vector<uint16_t> xh(x.size());
                for (size_t i = 0; i < x.size(); i++) {
                    xh[i] = t == flash::DType::F16 ? to_half(x[i]) : to_bf16(x[i]);
                    x[i] = t == flash::DType::F16 ? flash::cpu::half_to_float(xh[i]) : flash::cpu::bf16_to_float(xh[i]);
                }
                for (auto& v : c) // centroids already representable: the engine's rounding is exact
                    v = t == flash::DType::F16 ? flash::cpu::half_to_float(to_half(v))
                                               : flash::cpu::bf16_to_float(to_bf16(v));
                std::vector<int64_t> lab(B * n);
                std::vector<float> dis(B * n);
                flash::assign_nearest(host_points(xh.data(), n, d, t, B), c.data(), k, flash::Metric::L2, lab.data(),
                                      dis.data(), flash::Backend::CUDA);
                expect_optimal(x, c, B, n, d, k, flash::Metric::L2, lab, dis, 1e-5);
            }
}

TEST(CudaEngine, TiesGoToLowestIndex) {
    REQUIRE_GPU();
    const int64_t d = 5, k = 300, n = 200;
    std::vector<float> c(k * d, 0.5f), x(n * d, 0.5f);
    std::vector<int64_t> lab(n);
    for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
        flash::assign_nearest(host_points(x.data(), n, d), c.data(), k, m, lab.data(), nullptr, flash::Backend::CUDA);
        for (auto l : lab) ASSERT_EQ(l, 0);
    }
}

// The exact (double precision) argmin of every point, ties to the lowest index, and its
// distance (L2) or similarity (inner product) as fp32; returns how many points have a tie for
// the optimum.
int64_t exact_argmin(const std::vector<float>& x, const std::vector<float>& c, int64_t B, int64_t n, int64_t d,
                     int64_t k, flash::Metric m, std::vector<int64_t>& want, std::vector<float>& want_d) {
    want.assign(B * n, -1);
    want_d.assign(B * n, 0.f);
    int64_t tied = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            const float* xi = &x[(b * n + i) * d];
            double best = 0;
            int64_t arg = -1, at_best = 0;
            for (int64_t j = 0; j < k; j++) {
                const float* cj = &c[(b * k + j) * d];
                const double v = m == flash::Metric::L2 ? l2_d(xi, cj, d) : -dot_d(xi, cj, d);
                if (arg < 0 || v < best) best = v, arg = j, at_best = 1;
                else if (v == best) at_best++;
            }
            tied += at_best > 1;
            want[b * n + i] = arg;
            want_d[b * n + i] = float(m == flash::Metric::L2 ? best : -best);
        }
    return tied;
}

// Small integers make every product and sum exact in fp32, so every kernel configuration
// (wgmma, mma.sync, split-fp32 with its certificate and FMA re-check, plain FMA) must return
// the exact labels and distances, ties (plentiful here) going to the lowest index.
TEST(CudaEngine, AllKernelVariantsExactOnIntegerData) {
    REQUIRE_GPU();
    std::mt19937 rng(2026);
    std::uniform_int_distribution<int> val(-3, 3);
    for (auto t : {flash::DType::F32, flash::DType::F16, flash::DType::BF16})
        for (int64_t d : {17, 64, 100, 128, 200})
            for (int64_t k : {7, 130, 300}) {
                const int64_t n = 1000, B = 2;
                std::vector<float> x(B * n * d), c(B * k * d);
                for (auto& v : x) v = float(val(rng));
                for (auto& v : c) v = float(val(rng));
                const auto xh = rounded_copy(x, t);
                const void* data = t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
                for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
                    std::vector<int64_t> want;
                    std::vector<float> want_d;
                    exact_argmin(x, c, B, n, d, k, m, want, want_d);
                    for (int variant = 0; variant < 12; variant++) { // clamped to the last one
                        SCOPED_TRACE("dtype=" + std::to_string(int(t)) + " d=" + std::to_string(d) + " k=" +
                                     std::to_string(k) + " metric=" + std::to_string(int(m)) +
                                     " variant=" + std::to_string(variant));
                        setenv("FLASH_ASSIGN_VARIANT", std::to_string(variant).c_str(), 1);
                        std::vector<int64_t> lab(B * n);
                        std::vector<float> dis(B * n);
                        flash::assign_nearest(host_points(data, n, d, t, B), c.data(), k, m, lab.data(), dis.data(),
                                              flash::Backend::CUDA);
                        unsetenv("FLASH_ASSIGN_VARIANT");
                        int64_t bad = 0;
                        for (int64_t i = 0; i < B * n; i++) bad += lab[i] != want[i] || dis[i] != want_d[i];
                        ASSERT_EQ(bad, 0);
                    }
                }
            }
}

// Every centroid of each problem one of k / copies integer bases, each base placed `copies`
// times at random columns; every point a base plus small integer offsets on every `every`-th
// coordinate. Each point's nearest base is unique and its copies tie exactly.
void tied_integer_problem(int64_t B, int64_t n, int64_t d, int64_t k, int64_t copies, int every, std::mt19937& rng,
                          std::vector<float>& x, std::vector<float>& c) {
    const int64_t nb = k / copies;
    std::uniform_int_distribution<int> val(-8, 8), off(-1, 1), pick(0, int(nb) - 1);
    x.assign(B * n * d, 0.f);
    c.assign(B * k * d, 0.f);
    for (int64_t b = 0; b < B; b++) {
        std::vector<float> base(nb * d);
        for (auto& v : base) v = float(val(rng));
        std::vector<int64_t> slot(k);
        for (int64_t j = 0; j < k; j++) slot[j] = j % nb;
        std::shuffle(slot.begin(), slot.end(), rng);
        for (int64_t j = 0; j < k; j++) std::copy(&base[slot[j] * d], &base[slot[j] * d] + d, &c[(b * k + j) * d]);
        for (int64_t i = 0; i < n; i++) {
            const int64_t q = pick(rng);
            for (int64_t t = 0; t < d; t++)
                x[(b * n + i) * d + t] = base[q * d + t] + float(off(rng) * (t % every == 0));
        }
    }
}

// Points whose label or distance differs from the exact ones (both bit for bit), in metric m.
int64_t wrong_assignments(const std::vector<float>& x, const std::vector<float>& c, int64_t B, int64_t n, int64_t d,
                          int64_t k, flash::Metric m, int64_t* tied = nullptr) {
    std::vector<int64_t> want;
    std::vector<float> want_d;
    const int64_t t = exact_argmin(x, c, B, n, d, k, m, want, want_d);
    if (tied) *tied = t;
    std::vector<int64_t> lab(B * n);
    std::vector<float> dis(B * n);
    flash::assign_nearest(host_points(x.data(), n, d, flash::DType::F32, B), c.data(), k, m, lab.data(), dis.data(),
                          flash::Backend::CUDA);
    int64_t bad = 0;
    for (int64_t i = 0; i < B * n; i++) bad += lab[i] != want[i] || dis[i] != want_d[i];
    return bad;
}

// The exact fp32 paths' fp32 FMA re-check with many centroids: k = 2500 (20 tiles of 128) is
// cut into 10 chunks of two tiles, merged by atomicMin of (value, index) keys. Each base twice,
// so every point sits on an exact tie: the split products' certificate flags every point
// (FLASH_EXACT_FILTER=0), and the filter keeps both copies as candidates. The exact answer is
// the lower copy's index, which lies in any chunk. Exact labels and distances, both metrics,
// two batch sizes, both paths.
TEST(CudaEngine, Fp32RecheckOverCentroidChunks) {
    REQUIRE_GPU();
    const int64_t n = 700, d = 128, k = 2500;
    std::mt19937 rng(77);
    for (const char* filter : {"0", "1"})
        for (int64_t B : {1, 3}) {
            std::vector<float> x, c;
            tied_integer_problem(B, n, d, k, 2, 5, rng, x, c);
            setenv("FLASH_EXACT_FILTER", filter, 1);
            for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
                SCOPED_TRACE(std::string("filter=") + filter + " B=" + std::to_string(B) +
                             " metric=" + std::to_string(int(m)));
                int64_t tied = 0;
                EXPECT_EQ(wrong_assignments(x, c, B, n, d, k, m, &tied), 0);
                EXPECT_GT(tied, B * n / 2) << "the data should put most points on exact ties";
            }
            unsetenv("FLASH_EXACT_FILTER");
        }
}

// The exact fp32 filter keeps, per point, the centroids within its error margin of the smallest
// tensor-core value (ten per thread and row in the kernel at d = 128, fifteen at d = 64, four
// threads per row) and resolves them with fp32 FMA; a point with more goes to the re-check over
// every centroid. Each point here has exactly `copies` tied nearest centroids: 3 and 12
// (resolved among the candidates, ties to the lowest index), 40 (more than the 31 candidate
// slots of a point: the re-check) and 64 (about 16 per thread: rows out of their threads'
// slots, the lost-value path). Labels and distances exact, bit for bit. k = 1200 and 4800: the
// kernel with column tags and the one that searches a tile for its column (from k = 4096).
TEST(CudaEngine, Fp32FilterCandidatesAndOverflow) {
    REQUIRE_GPU();
    const int64_t n = 600, B = 2;
    std::mt19937 rng(91);
    for (int64_t k : {1200, 4800})
        for (int64_t d : {64, 128})
            for (int64_t copies : {3, 12, 40, 64}) {
                std::vector<float> x, c;
                tied_integer_problem(B, n, d, k, copies, 7, rng, x, c);
                for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
                    SCOPED_TRACE("k=" + std::to_string(k) + " d=" + std::to_string(d) +
                                 " copies=" + std::to_string(copies) + " metric=" + std::to_string(int(m)));
                    EXPECT_EQ(wrong_assignments(x, c, B, n, d, k, m), 0);
                }
            }
}

// The order of every fp32 distance's dot product (assign_fp32.cu, RowDot): element j in chain
// (j / 4) % 8, each chain an FMA chain in increasing j, the chains added pairwise xor 4, then
// xor 2, then xor 1.
float ordered_dot(const float* x, const float* c, int64_t d) {
    float ch[8] = {};
    for (int64_t j = 0; j < d; j++) ch[(j / 4) % 8] = std::fmaf(x[j], c[j], ch[(j / 4) % 8]);
    float q[4];
    for (int i = 0; i < 4; i++) q[i] = ch[i] + ch[i + 4];
    return (q[0] + q[2]) + (q[1] + q[3]);
}

// A point's fp32 distance has the same bits whichever pass labelled it: the filter's
// resolve_candidates and the split products' exact_distances (FLASH_EXACT_FILTER=0) take the
// dot product in one order. On Gaussian data (rounding in every product) each inner-product
// distance equals that order's sum for its label, bit for bit: d a multiple of 4 (vector loads)
// or not, the filter with column tags (k = 1000) and searching (k = 4500), a batch of two.
TEST(CudaEngine, Fp32DistancesInOneDotProductOrder) {
    REQUIRE_GPU();
    const ScopedEnv filter("FLASH_EXACT_FILTER");
    const int64_t B = 2, n = 3000;
    uint64_t seed = 300;
    for (int64_t d : {64, 90, 128})
        for (int64_t k : {1000, 4500}) {
            const auto x = flash_test::gaussian_mixture(B * n, d, 20, seed++);
            const auto c = flash_test::gaussian_mixture(B * k, d, 20, seed++);
            for (const char* f : {"1", "0"}) {
                SCOPED_TRACE("d=" + std::to_string(d) + " k=" + std::to_string(k) + " filter=" + f);
                filter.set(f);
                std::vector<int64_t> lab(B * n);
                std::vector<float> dis(B * n);
                flash::assign_nearest(host_points(x.data(), n, d, flash::DType::F32, B), c.data(), k,
                                      flash::Metric::InnerProduct, lab.data(), dis.data(), flash::Backend::CUDA);
                int64_t bad = 0;
                for (int64_t i = 0; i < B * n; i++) {
                    ASSERT_GE(lab[i], 0);
                    ASSERT_LT(lab[i], k);
                    const float want = ordered_dot(&x[i * d], &c[((i / n) * k + lab[i]) * d], d);
                    bad += std::memcmp(&want, &dis[i], sizeof(float)) != 0;
                }
                EXPECT_EQ(bad, 0) << "distances not in the fixed dot-product order";
            }
        }
}

flash::LloydOptions options(int64_t k, int niter, flash::Backend b) {
    flash::LloydOptions o;
    o.k = k;
    o.niter = niter;
    o.backend = b;
    return o;
}

// The persistent small-k kernel (wgmma variant 6) walks several point tiles per block, loads
// the next tile during the products and switches problems inside a block: it must give the
// same bits as the block-per-tile kernel (variant 5), tails and unaligned widths included,
// also with problems of a few point tiles (n = 300: three tiles of 128, a block's tiles
// crossing several problems and their centroid stage pairs).
TEST(CudaEngine, PersistentSmallKMatchesPerTileKernel) {
    REQUIRE_GPU();
    std::mt19937 rng(77);
    std::normal_distribution<float> val(0.f, 1.f);
    for (auto [B, n] : {std::pair<int64_t, int64_t>{3, 40037}, {301, 300}})
    for (auto t : {flash::DType::F16, flash::DType::BF16})
        for (int64_t d : {64, 100, 128})
            for (int64_t k : {5, 64, 100, 128}) {
                SCOPED_TRACE("B=" + std::to_string(B) + " n=" + std::to_string(n) + " dtype=" + std::to_string(int(t)) +
                             " d=" + std::to_string(d) + " k=" + std::to_string(k));
                std::vector<uint16_t> xh(B * n * d);
                for (auto& v : xh) v = t == flash::DType::F16 ? to_half(val(rng)) : to_bf16(val(rng));
                std::vector<float> c(B * k * d);
                for (auto& v : c) v = val(rng);
                std::vector<int64_t> lab[2];
                std::vector<float> dis[2];
                for (int r = 0; r < 2; r++) {
                    setenv("FLASH_ASSIGN_VARIANT", r == 0 ? "5" : "6", 1);
                    lab[r].resize(B * n);
                    dis[r].resize(B * n);
                    flash::assign_nearest(host_points(xh.data(), n, d, t, B), c.data(), k, flash::Metric::L2,
                                          lab[r].data(), dis[r].data(), flash::Backend::CUDA);
                    unsetenv("FLASH_ASSIGN_VARIANT");
                }
                ASSERT_EQ(lab[0], lab[1]);
                ASSERT_EQ(0, std::memcmp(dis[0].data(), dis[1].data(), sizeof(float) * B * n));
            }
}

// Small shapes through every kernel family (wgmma fp16 / bf16 / split fp32 with its re-check,
// FMA above d = 128, vectorised and scalar updates): the compute-sanitizer target.
TEST(CudaEngine, SmallShapesEveryPath) {
    REQUIRE_GPU();
    for (auto t : {flash::DType::F32, flash::DType::F16, flash::DType::BF16})
        for (int64_t d : {17, 128, 200}) {
            const int64_t B = 2, n = 300, k = 130;
            SCOPED_TRACE("dtype=" + std::to_string(int(t)) + " d=" + std::to_string(d));
            const auto x = flash_test::gaussian_mixture(B * n, d, 20, 4000 + d);
            const auto xh = rounded_copy(x, t);
            const void* data = t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
            auto c = rows_of_each_problem(x, B, n, d, k, 0);
            const auto st = flash::run_lloyd(host_points(data, n, d, t, B), c.data(), options(k, 3, flash::Backend::CUDA));
            ASSERT_EQ(st.size(), size_t(B));
            for (const auto& v : c) ASSERT_TRUE(std::isfinite(v));
            for (int b = 0; b < B; b++) EXPECT_LE(st[b][2].obj, st[b][0].obj * (1 + 1e-5));
        }
}

TEST(CudaEngine, LloydMatchesCpuEngine) {
    REQUIRE_GPU();
    // One iteration from the same centroids: the same update up to float rounding. Over many
    // iterations a single near-tie flip moves trajectories apart, so only the objective is
    // compared there.
    for (int64_t d : {17, 128}) {
        const int64_t n = 20000, k = 100;
        const auto x = flash_test::gaussian_mixture(n, d, 100, 900 + d, 6.0f);
        std::vector<float> c0(x.begin() + 50 * d, x.begin() + (50 + k) * d);
        // The engines may disagree only on near-ties; without any, the updates agree.
        std::vector<int64_t> lg(n), lc(n);
        flash::assign_nearest(host_points(x.data(), n, d), c0.data(), k, flash::Metric::L2, lg.data(), nullptr,
                              flash::Backend::CUDA);
        flash::assign_nearest(host_points(x.data(), n, d), c0.data(), k, flash::Metric::L2, lc.data(), nullptr,
                              flash::Backend::CPU);
        int64_t disagree = 0;
        for (int64_t i = 0; i < n; i++) {
            if (lg[i] == lc[i]) continue;
            disagree++;
            const double a = l2_d(&x[i * d], &c0[lg[i] * d], d), b = l2_d(&x[i * d], &c0[lc[i] * d], d);
            EXPECT_LE(std::fabs(a - b), 1e-6 * (dot_d(&x[i * d], &x[i * d], d) + 1e4)) << "point " << i;
        }
        auto cg = c0, cc = c0;
        flash::run_lloyd(host_points(x.data(), n, d), cg.data(), options(k, 1, flash::Backend::CUDA));
        flash::run_lloyd(host_points(x.data(), n, d), cc.data(), options(k, 1, flash::Backend::CPU));
        double worst = 0;
        for (size_t i = 0; i < cg.size(); i++)
            worst = std::max(worst, double(std::fabs(cg[i] - cc[i])) / (1 + std::fabs(cc[i])));
        if (disagree == 0) {
            EXPECT_LT(worst, 1e-5) << "d=" << d;
        }
        std::printf("d=%ld: %ld near-tie assignments differ; centroid difference %.2e\n", long(d), long(disagree),
                    worst);
        cg = c0;
        cc = c0;
        const auto sg = flash::run_lloyd(host_points(x.data(), n, d), cg.data(), options(k, 10, flash::Backend::CUDA));
        const auto sc = flash::run_lloyd(host_points(x.data(), n, d), cc.data(), options(k, 10, flash::Backend::CPU));
        for (int it = 0; it < 10; it++)
            EXPECT_NEAR(sg[0][it].obj, sc[0][it].obj, 1e-3 * sc[0][it].obj) << "iteration " << it;
    }
}

// Fp32Mode::TF32 (opt-in): scaled fp16 copies and one fp16 product, TF32-class accuracy. One
// iteration from the same start: the objective (fp32 distances of the labels it chose) within
// 2e-4 of the exact mode's and never more than float rounding below it; the same bits run to
// run; problems at 2^30 and 2^-30 (the scales), L2 and inner product.
TEST(CudaEngine, Fp32Tf32ModeCloseToExact) {
    REQUIRE_GPU();
    const int64_t B = 2, n = 20000, d = 128, k = 100;
    auto x = flash_test::gaussian_mixture(B * n, d, 40, 71);
    for (int64_t i = n * d; i < B * n * d; i++) x[i] = std::ldexp(x[i], -30);
    for (int64_t i = 0; i < n * d; i++) x[i] = std::ldexp(x[i], 30);
    const auto c0 = rows_of_each_problem(x, B, n, d, k, 11);
    for (auto m : {flash::Metric::L2, flash::Metric::InnerProduct}) {
        auto run = [&](flash::Fp32Mode mode) {
            auto c = c0;
            auto o = options(k, 1, flash::Backend::CUDA);
            o.metric = m;
            o.fp32_mode = mode;
            const auto st = flash::run_lloyd(host_points(x.data(), n, d, flash::DType::F32, B), c.data(), o);
            return std::make_pair(st, c);
        };
        const auto [se, ce] = run(flash::Fp32Mode::Exact);
        const auto [s1, c1] = run(flash::Fp32Mode::TF32);
        const auto [s2, c2] = run(flash::Fp32Mode::TF32);
        EXPECT_EQ(c1, c2) << "TF32 mode run to run";
        for (int64_t b = 0; b < B; b++) {
            const double oe = se[b][0].obj, ot = s1[b][0].obj;
            EXPECT_EQ(ot, s2[b][0].obj);
            if (m == flash::Metric::L2) {
                EXPECT_LE(ot, oe * (1 + 2e-4)) << "problem " << b;
                EXPECT_GE(ot, oe * (1 - 1e-6)) << "problem " << b;
            } else { // similarities: larger is better
                EXPECT_GE(ot, oe - 2e-4 * std::fabs(oe)) << "problem " << b;
                EXPECT_LE(ot, oe + 1e-6 * std::fabs(oe)) << "problem " << b;
            }
        }
    }
}

TEST(CudaEngine, RunsAreBitIdenticalAndBatchesEqualSeparateRuns) {
    REQUIRE_GPU();
    const int64_t B = 3, n = 5000, d = 64, k = 50;
    const auto x = flash_test::gaussian_mixture(B * n, d, 60, 77);
    const auto c0 = rows_of_each_problem(x, B, n, d, k, 7);
    for (auto t : {flash::DType::F32, flash::DType::F16}) {
        const auto xh = rounded_copy(x, flash::DType::F16);
        const void* data = t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
        const size_t esz = t == flash::DType::F32 ? 4 : 2;
        auto c1 = c0, c2 = c0;
        const auto s1 = flash::run_lloyd(host_points(data, n, d, t, B), c1.data(), options(k, 8, flash::Backend::CUDA));
        const auto s2 = flash::run_lloyd(host_points(data, n, d, t, B), c2.data(), options(k, 8, flash::Backend::CUDA));
        EXPECT_EQ(std::memcmp(c1.data(), c2.data(), sizeof(float) * c1.size()), 0) << "run to run, dtype " << int(t);
        for (int64_t b = 0; b < B; b++) {
            EXPECT_EQ(s1[b].back().obj, s2[b].back().obj);
            std::vector<float> cs(c0.begin() + b * k * d, c0.begin() + (b + 1) * k * d);
            flash::run_lloyd(host_points(static_cast<const char*>(data) + b * n * d * esz, n, d, t), cs.data(),
                             options(k, 8, flash::Backend::CUDA));
            EXPECT_EQ(std::memcmp(cs.data(), &c1[b * k * d], sizeof(float) * k * d), 0) << "problem " << b;
        }
    }
}

// The update's two orderings, the counting sort and the CUB radix sort, are both stable: the
// same permutation, so the same sums, bit for bit, on any data. Shapes: several histogram
// tiles, rows wider than 128, weights, frozen clusters, k off tile multiples, odd d.
TEST(CudaEngine, CountingAndRadixUpdatesGiveTheSameBits) {
    REQUIRE_GPU();
    struct Shape {
        int64_t B, n, d, k, frozen;
        bool weighted;
    };
    // The last two: more than 32 groups of 32 clusters (k not a multiple of 32, two problems), and
    // k above 4096 (the long histogram tiles).
    const Shape shapes[] = {{2, 40000, 128, 37, 0, false},  {3, 3000, 200, 9, 0, true},
                            {1, 5000, 4, 64, 5, false},     {2, 700, 17, 12, 0, true},
                            {2, 20000, 32, 1500, 0, false}, {1, 30000, 8, 5000, 0, true}};
    const ScopedEnv sort("FLASH_UPDATE_SORT"), label_counts("FLASH_LABEL_COUNTS");
    for (const auto& sh : shapes)
        for (auto t : {flash::DType::F32, flash::DType::F16, flash::DType::BF16}) {
            SCOPED_TRACE("n=" + std::to_string(sh.n) + " d=" + std::to_string(sh.d) + " dtype=" +
                         std::to_string(int(t)));
            const auto x = flash_test::gaussian_mixture(sh.B * sh.n, sh.d, 30, 5);
            const auto xh = rounded_copy(x, t);
            const void* data = t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
            std::vector<float> w(sh.B * sh.n);
            for (size_t i = 0; i < w.size(); i++) w[i] = float(1 + i % 3);
            const auto c0 = rows_of_each_problem(x, sh.B, sh.n, sh.d, sh.k, 3);
            // counting sort (fp16 / bf16: the histogram counted by the assignment), counting sort
            // with its own histogram launch, radix sort
            std::vector<float> c[3];
            for (int v = 0; v < 3; v++) {
                sort.set(v == 2 ? "radix" : "counting");
                label_counts.set(v == 1 ? "0" : "1");
                auto o = options(sh.k, 3, flash::Backend::CUDA);
                o.k_frozen = sh.frozen;
                if (sh.weighted) o.weights = w.data();
                c[v] = c0;
                flash::run_lloyd(host_points(data, sh.n, sh.d, t, sh.B), c[v].data(), o);
            }
            EXPECT_EQ(c[0], c[1]);
            EXPECT_EQ(c[0], c[2]);
            EXPECT_EQ(std::memcmp(c[0].data(), c0.data(), sizeof(float) * sh.frozen * sh.d), 0) << "frozen rows";
        }
}

// The chunk sums read the sorted ids either straight from global memory or, on large grids
// (8192 chunks of 64 points and more), staged in shared memory per block first: the same sums
// in the same order. Shapes: 4 and 6 threads per fp16 row (a block of 32 or 21 chunks), 8 and
// 12 per fp32 row, weights, two problems.
TEST(CudaEngine, StagedChunkSumsGiveTheSameBits) {
    REQUIRE_GPU();
    struct Shape {
        int64_t B, n, d, k;
        bool weighted;
    };
    const Shape shapes[] = {{2, 262144, 32, 100, false}, {1, 600000, 48, 37, true}};
    const ScopedEnv staged("FLASH_STAGED_SUMS");
    for (const auto& sh : shapes)
        for (auto t : {flash::DType::F32, flash::DType::F16}) {
            SCOPED_TRACE("n=" + std::to_string(sh.n) + " d=" + std::to_string(sh.d) +
                         " dtype=" + std::to_string(int(t)));
            const auto x = flash_test::gaussian_mixture(sh.B * sh.n, sh.d, 30, 11);
            const auto xh = rounded_copy(x, flash::DType::F16);
            const void* data = t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
            std::vector<float> w(sh.B * sh.n);
            for (size_t i = 0; i < w.size(); i++) w[i] = 0.5f + float(i % 7) * 0.25f;
            const auto c0 = rows_of_each_problem(x, sh.B, sh.n, sh.d, sh.k, 5);
            std::vector<float> c[2];
            for (int v = 0; v < 2; v++) {
                staged.set(v == 0 ? "1" : "0");
                auto o = options(sh.k, 3, flash::Backend::CUDA);
                if (sh.weighted) o.weights = w.data();
                c[v] = c0;
                flash::run_lloyd(host_points(data, sh.n, sh.d, t, sh.B), c[v].data(), o);
            }
            EXPECT_EQ(c[0], c[1]);
            EXPECT_NE(c[0], c0);
        }
}

// How the iteration's kernels are launched (one graph per iteration or one by one; each kernel
// as a programmatic dependent of the one before, the assignment loading its points before it
// waits, or plainly) changes only when they start: the same bits. Shapes: the assignment's
// block-per-tile and persistent configurations, the fp32 filter, a batch.
TEST(CudaEngine, LaunchModesGiveTheSameBits) {
    REQUIRE_GPU();
    struct Shape {
        int64_t B, n, d, k;
        flash::DType t;
    };
    const Shape shapes[] = {{1, 30000, 128, 1024, flash::DType::F16},
                            {2, 8000, 64, 50, flash::DType::BF16},
                            {2, 10000, 100, 300, flash::DType::F32}};
    const ScopedEnv graph("FLASH_CUDA_GRAPH"), pdl("FLASH_PDL");
    for (const auto& sh : shapes) {
        SCOPED_TRACE("n=" + std::to_string(sh.n) + " k=" + std::to_string(sh.k) +
                     " dtype=" + std::to_string(int(sh.t)));
        const auto x = flash_test::gaussian_mixture(sh.B * sh.n, sh.d, 40, 7);
        const auto xh = rounded_copy(x, sh.t);
        const void* data = sh.t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
        const auto c0 = rows_of_each_problem(x, sh.B, sh.n, sh.d, sh.k, 5);
        std::vector<float> c[4];
        std::vector<double> obj[4];
        for (int v = 0; v < 4; v++) { // (graph, dependent launches): on/on, off/on, on/off, off/off
            graph.set(v % 2 ? "0" : "1");
            pdl.set(v / 2 ? "0" : "1");
            c[v] = c0;
            const auto stats = flash::run_lloyd(host_points(data, sh.n, sh.d, sh.t, sh.B), c[v].data(),
                                                options(sh.k, 4, flash::Backend::CUDA));
            for (const auto& s : stats) obj[v].push_back(s.back().obj);
        }
        for (int v = 1; v < 4; v++) {
            EXPECT_EQ(std::memcmp(c[0].data(), c[v].data(), sizeof(float) * c[0].size()), 0) << "mode " << v;
            EXPECT_EQ(obj[0], obj[v]) << "mode " << v;
        }
    }
}

// Each row's running minimum may start from its value for the centroid it had last iteration
// (AssignArgs::start_from_labels): fewer column searches (the fp32 filter: fewer candidates
// looked at), the same argmin. The same bits with and without it (FLASH_ASSIGN_BOUND=0 / 1)
// over several iterations: L2 and inner product, splits (k above the data's centres), the
// spherical normalisation, frozen rows, weights, d = 256 and odd widths, a batch, data far from
// the origin with tight clusters, duplicated points (exact ties), exact fp32 through the filter
// (tagged below k = 4096, searching from it) and TF32 mode.
TEST(CudaEngine, BoundedSearchGivesTheSameBits) {
    REQUIRE_GPU();
    struct Shape {
        int64_t B, n, d, k;
        flash::DType t;
        flash::Metric m;
        bool spherical, frozen, weighted, far, dup, tf32;
    };
    using flash::DType;
    using flash::Metric;
    const Shape shapes[] = {
        {1, 30000, 128, 1024, DType::F16, Metric::L2, false, false, false, false, false, false},
        {2, 9000, 256, 300, DType::BF16, Metric::L2, false, true, true, false, false, false},
        {1, 20000, 64, 500, DType::F16, Metric::InnerProduct, true, false, false, false, false, false},
        {1, 20000, 90, 700, DType::F16, Metric::InnerProduct, false, false, false, false, true, false},
        {1, 25000, 128, 800, DType::F16, Metric::L2, false, false, false, true, false, false},
        {2, 12000, 32, 2000, DType::F16, Metric::L2, false, false, false, false, true, false},
        {1, 20000, 128, 4200, DType::F16, Metric::L2, false, false, false, false, false, false},
        {1, 16000, 100, 600, DType::F32, Metric::L2, false, false, false, false, true, false},
        {1, 16000, 64, 4100, DType::F32, Metric::InnerProduct, false, false, false, true, false, false},
        {1, 16000, 128, 900, DType::F32, Metric::L2, false, false, true, false, false, true}};
    const ScopedEnv bound("FLASH_ASSIGN_BOUND");
    for (const auto& sh : shapes) {
        SCOPED_TRACE("B=" + std::to_string(sh.B) + " n=" + std::to_string(sh.n) + " d=" + std::to_string(sh.d) +
                     " k=" + std::to_string(sh.k) + " dtype=" + std::to_string(int(sh.t)));
        auto x = flash_test::gaussian_mixture(sh.B * sh.n, sh.d, 40, 11, sh.far ? 0.05f : 4.0f);
        if (sh.far)
            for (size_t i = 0; i < x.size(); i++) x[i] += 20.f;
        if (sh.dup) // every fourth point repeats the one before
            for (int64_t i = 1; i < sh.B * sh.n; i += 4)
                std::memcpy(&x[i * sh.d], &x[(i - 1) * sh.d], sizeof(float) * sh.d);
        const auto xh = rounded_copy(x, sh.t);
        const void* data = sh.t == DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
        std::vector<float> w(sh.B * sh.n);
        for (size_t i = 0; i < w.size(); i++) w[i] = float(1 + i % 3);
        // (with dup, some initial centroids are equal: exact ties)
        const auto c0 = rows_of_each_problem(x, sh.B, sh.n, sh.d, sh.k, 1);
        std::vector<float> c[2];
        std::vector<double> obj[2];
        for (int v = 0; v < 2; v++) {
            bound.set(v ? "1" : "0");
            auto o = options(sh.k, 6, flash::Backend::CUDA);
            o.metric = sh.m;
            o.spherical = sh.spherical;
            if (sh.frozen) o.k_frozen = 7;
            if (sh.weighted) o.weights = w.data();
            if (sh.tf32) o.fp32_mode = flash::Fp32Mode::TF32;
            c[v] = c0;
            const auto stats = flash::run_lloyd(host_points(data, sh.n, sh.d, sh.t, sh.B), c[v].data(), o);
            for (const auto& s : stats)
                for (const auto& it : s) obj[v].push_back(it.obj);
        }
        EXPECT_EQ(std::memcmp(c[0].data(), c[1].data(), sizeof(float) * c[0].size()), 0);
        EXPECT_EQ(obj[0], obj[1]);
    }
}

// FLASH_AUTOTUNE=1: every configuration is timed once per shape bucket (here one whose
// iterations start from the last labels, which the autotuner then times too), the fastest is
// written to the cache file and used: the same bits as that configuration forced, and a
// second run reads the cache instead of timing again.
TEST(CudaEngine, AutotunerCachesAndUsesItsWinner) {
    REQUIRE_GPU();
    char dir[] = "/tmp/flash_autotune_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/autotune-v7.txt";
    struct Removed { // the cache file and its directory, however the test ends
        const std::string& file;
        const char* folder;
        ~Removed() {
            std::remove(file.c_str());
            rmdir(folder);
        }
    } removed{path, dir};
    const ScopedEnv tune("FLASH_AUTOTUNE"), cache_dir("FLASH_CACHE_DIR"), forced("FLASH_ASSIGN_VARIANT"),
        bound("FLASH_ASSIGN_BOUND");
    bound.unset(); // (the start from the last labels as by default: on from k = 4096)
    const int64_t n = 20000, d = 64, k = 4096;
    const auto x = flash_test::gaussian_mixture(n, d, 40, 5);
    const auto xh = rounded_copy(x, flash::DType::F16);
    const auto c0 = rows_of_each_problem(x, 1, n, d, k, 0);
    auto run = [&] {
        auto c = c0;
        flash::run_lloyd(host_points(xh.data(), n, d, flash::DType::F16), c.data(),
                         options(k, 3, flash::Backend::CUDA));
        return c;
    };
    auto lines = [&] {
        std::ifstream f(path);
        std::vector<std::string> v;
        for (std::string l; std::getline(f, l);) v.push_back(l);
        return v;
    };
    forced.unset();
    tune.set("1");
    cache_dir.set(dir);
    const auto tuned = run();
    const auto written = lines();
    ASSERT_EQ(written.size(), 1u) << path;
    std::istringstream in(written[0]);
    std::string key;
    int winner = -1;
    ASSERT_TRUE(in >> key >> winner);
    EXPECT_NE(key.find("|dtype1|d6|k12|"), std::string::npos) << key;
    EXPECT_NE(key.find("|start"), std::string::npos) << key; // (k >= 4096: timed from the last labels)
    std::vector<float> ms;
    for (float m; in >> m;) ms.push_back(m);
    ASSERT_GT(ms.size(), 1u);
    ASSERT_GE(winner, 0);
    ASSERT_LT(winner, int(ms.size()));
    for (float m : ms) EXPECT_GT(m, 0.f);
    EXPECT_EQ(*std::min_element(ms.begin(), ms.end()), ms[winner]);
    const auto cached = run();
    EXPECT_EQ(lines().size(), 1u) << "timed again instead of reading the cache";
    forced.set(std::to_string(winner).c_str());
    const auto by_hand = run();
    EXPECT_EQ(std::memcmp(tuned.data(), by_hand.data(), sizeof(float) * tuned.size()), 0);
    EXPECT_EQ(std::memcmp(tuned.data(), cached.data(), sizeof(float) * tuned.size()), 0);
}

TEST(CudaEngine, WeightsFrozenSphericalIntegerMatchCpu) {
    REQUIRE_GPU();
    const int64_t n = 6000, d = 24, k = 40;
    const auto x = flash_test::integer_points(n, d, 64, 31);
    std::vector<float> w(n);
    for (int64_t i = 0; i < n; i++) w[i] = float(1 + i % 4);
    std::vector<float> c0(x.begin(), x.begin() + k * d);
    // One iteration on integer data: exact distances, so identical labels and exact sums.
    for (int variant = 0; variant < 4; variant++) {
        auto o = options(k, 1, flash::Backend::CUDA);
        if (variant == 0) o.weights = w.data();
        if (variant == 1) o.k_frozen = 5;
        if (variant == 2) o.spherical = true;
        if (variant == 3) o.int_centroids = true;
        auto cg = c0, cc = c0;
        flash::run_lloyd(host_points(x.data(), n, d), cg.data(), o);
        o.backend = flash::Backend::CPU;
        flash::run_lloyd(host_points(x.data(), n, d), cc.data(), o);
        double worst = 0;
        for (size_t i = 0; i < cg.size(); i++)
            worst = std::max(worst, double(std::fabs(cg[i] - cc[i])) / (1 + std::fabs(cc[i])));
        EXPECT_LT(worst, 1e-6) << "variant " << variant;
        if (variant == 1) {
            EXPECT_EQ(std::memcmp(cg.data(), c0.data(), sizeof(float) * 5 * d), 0);
        }
    }
}

TEST(CudaEngine, EmptyClustersSplitLikeFaiss) {
    REQUIRE_GPU();
    // 5 distinct points, k = 10: splits every iteration; integer data keeps sums exact, so
    // the GPU must reproduce the CPU engine (and FAISS) bit for bit.
    const int64_t d = 2, k = 10, n = 1000;
    std::vector<float> x;
    for (int64_t i = 0; i < n; i++) {
        x.push_back(float(i % 5));
        x.push_back(float((i % 5) * 3));
    }
    std::vector<float> c0(k * d);
    for (int64_t c = 0; c < k; c++) {
        c0[c * d] = float(c % 5);
        c0[c * d + 1] = float((c % 5) * 3);
    }
    auto cg = c0, cc = c0;
    const auto sg = flash::run_lloyd(host_points(x.data(), n, d), cg.data(), options(k, 5, flash::Backend::CUDA));
    const auto sc = flash::run_lloyd(host_points(x.data(), n, d), cc.data(), options(k, 5, flash::Backend::CPU));
    for (int it = 0; it < 5; it++) EXPECT_EQ(sg[0][it].nsplit, sc[0][it].nsplit);
    EXPECT_GT(sc[0][0].nsplit, 0);
    EXPECT_EQ(cg, cc);
}

// One iteration on n points drawn from `distinct` integer points with k centroids on them (most
// go empty): the GPU's split must make the CPU engine's (FAISS') choices and rows, bit for bit.
// (One iteration: in the next, a point would be exactly as far from a split's v (1 + eps) as from
// its v (1 - eps), and rounding, not the rule, would break those ties.)
void expect_splits_like_cpu(int64_t n, int64_t d, int64_t k, int64_t distinct, uint64_t seed, int min_splits) {
    const auto base = flash_test::integer_points(distinct, d, 40, seed);
    std::vector<float> x(n * d);
    for (int64_t i = 0; i < n; i++) std::memcpy(&x[i * d], &base[(i * 7919 % distinct) * d], sizeof(float) * d);
    std::vector<float> c0(k * d);
    for (int64_t c = 0; c < k; c++) std::memcpy(&c0[c * d], &base[(c % distinct) * d], sizeof(float) * d);
    auto cg = c0, cc = c0;
    const auto sg = flash::run_lloyd(host_points(x.data(), n, d), cg.data(), options(k, 1, flash::Backend::CUDA));
    const auto sc = flash::run_lloyd(host_points(x.data(), n, d), cc.data(), options(k, 1, flash::Backend::CPU));
    EXPECT_GT(sc[0][0].nsplit, min_splits);
    EXPECT_EQ(sg[0][0].nsplit, sc[0][0].nsplit);
    EXPECT_EQ(cg, cc);
}

// About 1700 clusters go empty: the split consumes draws past the generator's table (64 x 624).
TEST(CudaEngine, ManyEmptyClustersUseTheSameRandomStreamAsFaiss) {
    REQUIRE_GPU();
    expect_splits_like_cpu(30000, 8, 2000, 300, 41, 624);
}

// Past the split kernel's shared-memory weights (more than 16384 clusters): the weights in
// global memory.
TEST(CudaEngine, SplitsBeyondTheSharedWeightsMatchTheCpu) {
    REQUIRE_GPU();
    expect_splits_like_cpu(34000, 4, 17000, 3000, 43, 1000);
}

// Rows wider than the split kernel's shared rows (d > 1024): read back from global memory.
TEST(CudaEngine, SplitsOfWideRowsMatchTheCpu) {
    REQUIRE_GPU();
    expect_splits_like_cpu(200, 1100, 20, 5, 47, 5);
}

TEST(CudaEngine, DeviceResidentInputAndNanCheck) {
    REQUIRE_GPU();
    const int64_t n = 3000, d = 32, k = 20;
    auto x = flash_test::gaussian_mixture(n, d, 20, 8);
    float* dx = nullptr;
    FLASH_CUDA_CHECK(cudaMalloc(&dx, sizeof(float) * n * d));
    FLASH_CUDA_CHECK(cudaMemcpy(dx, x.data(), sizeof(float) * n * d, cudaMemcpyHostToDevice));
    flash::Points p = host_points(dx, n, d);
    p.device = 0;
    std::vector<float> c0(x.begin(), x.begin() + k * d), c1 = c0, c2 = c0;
    flash::run_lloyd(p, c1.data(), options(k, 5, flash::Backend::Auto));
    flash::run_lloyd(host_points(x.data(), n, d), c2.data(), options(k, 5, flash::Backend::CUDA));
    EXPECT_EQ(c1, c2);
    const float nan = std::nanf("");
    FLASH_CUDA_CHECK(cudaMemcpy(dx + 100, &nan, sizeof(float), cudaMemcpyHostToDevice));
    EXPECT_THROW(flash::run_lloyd(p, c1.data(), options(k, 5, flash::Backend::Auto)), std::invalid_argument);
    cudaFree(dx);
}

// stop_on_sigint: a stop request (here from another thread, as from the SIGINT handler) ends
// an in-memory GPU run between iterations, with a flash::Interrupted naming the iteration; the
// resumed run (from its checkpoint) ends with the same bits as an uninterrupted one.
TEST(CudaEngine, StopRequestEndsTheRunBetweenIterations) {
    REQUIRE_GPU();
    const int64_t n = 100000, d = 64, k = 256;
    const auto x = flash_test::gaussian_mixture(n, d, 40, 33);
    const auto p = host_points(x.data(), n, d);
    const std::vector<float> c0(x.begin(), x.begin() + k * d);
    auto opt = options(k, 20000, flash::Backend::CUDA); // seconds: long after the request
    opt.stop_on_sigint = true;
    std::vector<float> c = c0;
    std::thread stopper([] {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        flash::request_stop();
    });
    EXPECT_THROW(flash::run_lloyd(p, c.data(), opt), flash::Interrupted);
    stopper.join();

    // Interrupted and resumed from the checkpoint: the same bits as straight through.
    const std::string ck = testing::TempDir() + "flash_gpu_stop_" + std::to_string(getpid()) + ".ckpt";
    std::remove(ck.c_str());
    auto seg = options(k, 12, flash::Backend::CUDA);
    seg.stop_on_sigint = true;
    seg.checkpoint_path = ck;
    seg.checkpoint_every = 4;
    std::vector<float> straight = c0, resumed = c0;
    flash::run_lloyd(p, straight.data(), options(k, 12, flash::Backend::CUDA));
    seg.on_iteration = [](int64_t, int it, const flash::IterationStats&) {
        if (it == 5) flash::request_stop(); // (callbacks come at each checkpoint: here after 8)
    };
    EXPECT_THROW(flash::run_lloyd(p, resumed.data(), seg), flash::Interrupted);
    seg.on_iteration = nullptr;
    resumed = c0;
    flash::run_lloyd(p, resumed.data(), seg);
    std::remove(ck.c_str());
    EXPECT_EQ(straight, resumed);
}

// A checkpointed run is one engine call (one upload and set-up): its checkpoints are written
// while it goes on, each iteration's callback comes once the checkpoint after it is written (the
// last ones at the end, the file then still at 8), and the first checkpoint holds the bits of a
// 4-iteration run; the same with a checkpoint after every iteration of a batch.
TEST(CudaEngine, CheckpointsAreWrittenDuringTheRun) {
    REQUIRE_GPU();
    const int64_t n = 50000, d = 64, k = 128;
    const auto x = flash_test::gaussian_mixture(n, d, 30, 35);
    const auto p = host_points(x.data(), n, d);
    const std::vector<float> c0(x.begin(), x.begin() + k * d);
    std::vector<float> four = c0, straight = c0, probed = c0;
    flash::run_lloyd(p, four.data(), options(k, 4, flash::Backend::CUDA));
    flash::run_lloyd(p, straight.data(), options(k, 12, flash::Backend::CUDA));
    auto opt = options(k, 12, flash::Backend::CUDA);
    opt.checkpoint_every = 4;
    const auto probe = flash_test::probe_checkpoints(p, probed.data(), opt, "gpu");
    EXPECT_EQ(probe.file_iterations, (std::vector<int>{4, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8}));
    EXPECT_EQ(probe.first_checkpoint, four);
    EXPECT_EQ(probe.last.iterations_done, 12);
    EXPECT_EQ(probe.last.centroids, straight);
    EXPECT_EQ(probed, straight);

    // A checkpoint after every iteration of a batch of two (the tightest use of the two pinned
    // slots): each iteration's callback comes once its checkpoint is written; the checkpoint
    // after iteration 6 is still queued when the loop ends (it is written two iterations on),
    // and the caller's final checkpoint replaces it, so the last two callbacks see 5.
    const int64_t B = 2, nb = n / B;
    std::vector<float> init(B * k * d);
    for (int64_t b = 0; b < B; b++)
        std::copy(x.begin() + b * nb * d, x.begin() + (b * nb + k) * d, init.begin() + b * k * d);
    const auto pb = host_points(x.data(), nb, d, flash::DType::F32, B);
    std::vector<float> one = init, batch_straight = init, batch_probed = init;
    flash::run_lloyd(pb, one.data(), options(k, 1, flash::Backend::CUDA));
    flash::run_lloyd(pb, batch_straight.data(), options(k, 7, flash::Backend::CUDA));
    auto every1 = options(k, 7, flash::Backend::CUDA);
    every1.checkpoint_every = 1;
    const auto each = flash_test::probe_checkpoints(pb, batch_probed.data(), every1, "gpu_every1");
    EXPECT_EQ(each.file_iterations, (std::vector<int>{1, 2, 3, 4, 5, 5, 5}));
    EXPECT_EQ(each.first_checkpoint, one);
    EXPECT_EQ(each.last.iterations_done, 7);
    EXPECT_EQ(each.last.centroids, batch_straight);
    EXPECT_EQ(batch_probed, batch_straight);
}

// Host points above the staging threshold go up through pinned buffers in 32 MiB pieces (here
// four, the last one partial, so both buffers are reused): the same bits as a plain upload.
TEST(CudaEngine, StagedUploadGivesTheSameBits) {
    REQUIRE_GPU();
    const int64_t n = 200037, d = 128, k = 50;
    const auto x = flash_test::gaussian_mixture(n, d, 20, 31);
    const auto xh = rounded_copy(x, flash::DType::F16);
    for (auto t : {flash::DType::F32, flash::DType::F16}) {
        SCOPED_TRACE("dtype=" + std::to_string(int(t)));
        const void* data = t == flash::DType::F32 ? static_cast<const void*>(x.data()) : xh.data();
        std::vector<float> c[2];
        for (int staged = 0; staged < 2; staged++) {
            setenv("FLASH_CUDA_STAGED_UPLOAD", staged ? "1" : "0", 1);
            c[staged].assign(x.begin(), x.begin() + k * d);
            flash::run_lloyd(host_points(data, n, d, t), c[staged].data(), options(k, 2, flash::Backend::CUDA));
        }
        unsetenv("FLASH_CUDA_STAGED_UPLOAD");
        EXPECT_EQ(c[0], c[1]);
    }
}

TEST(CudaEngine, OutOfMemoryIsAClearError) {
    REQUIRE_GPU();
    try {
        flash::cuda_engine::DeviceBuffer<char> huge(size_t(1) << 52, "test buffer");
        FAIL() << "allocating 4 PiB should fail";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("out of GPU memory"), std::string::npos) << e.what();
    }
    // The engine still works afterwards.
    const auto x = flash_test::gaussian_mixture(500, 8, 5, 9);
    std::vector<float> c(x.begin(), x.begin() + 5 * 8);
    EXPECT_NO_THROW(flash::run_lloyd(host_points(x.data(), 500, 8), c.data(), options(5, 2, flash::Backend::CUDA)));
}

TEST(CudaEngine, FlashClusteringOnGpuMatchesFaiss) {
    REQUIRE_GPU();
    const int d = 32, k = 64;
    const int64_t n = 30000;
    const auto x = flash_test::gaussian_mixture(n, d, 80, 12, 5.0f);
    faiss::ClusteringParameters cp;
    cp.niter = 12;
    faiss::Clustering ref(d, k, cp);
    faiss_flash::FlashClustering ours(d, k, cp);
    ours.flash.backend = flash::Backend::CUDA;
    faiss::IndexFlatL2 i1(d), i2(d);
    ref.train(n, x.data(), i1);
    ours.train(n, x.data(), i2);
    ASSERT_EQ(ref.iteration_stats.size(), ours.iteration_stats.size());
    EXPECT_NEAR(ref.iteration_stats.back().obj, ours.iteration_stats.back().obj, 1e-4 * ref.iteration_stats.back().obj);
    double worst = 0;
    for (size_t i = 0; i < ref.centroids.size(); i++)
        worst = std::max(worst, double(std::fabs(ref.centroids[i] - ours.centroids[i])) / (1 + std::fabs(ref.centroids[i])));
    EXPECT_LT(worst, 1e-4);
    EXPECT_EQ(i2.ntotal, k);
}

} // namespace
