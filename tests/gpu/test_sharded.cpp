// The sharded / streaming CUDA path (several GPUs in one process, host data larger than the
// GPU) against the in-memory engine. Integer-valued points make every cluster sum exact, so
// all placements must give the same bits; Gaussian data is compared within float tolerance.
// Each test skips with a printed reason when no CUDA device is visible (CI has none).
#include <faiss/IndexFlat.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "faiss_ext/FlashClustering.h"
#include "gpu/checkpoint_probe.h"
#include "gpu/require_gpu.h"
#include "gpu/scoped_env.h"
#include "kernels/cpu/half_convert.h"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

namespace {

using flash_test::host_points;
using flash_test::ScopedEnv;

struct Result {
    std::vector<float> centroids;
    std::vector<std::vector<flash::IterationStats>> stats;
    flash::Placement placement;
};

Result run(const flash::Points& x, const std::vector<float>& init, flash::LloydOptions opt) {
    Result r;
    r.centroids = init;
    opt.backend = flash::Backend::CUDA;
    opt.placement = &r.placement;
    r.stats = flash::run_lloyd(x, r.centroids.data(), opt);
    return r;
}

std::vector<float> first_rows(const std::vector<float>& x, int64_t B, int64_t n, int64_t k, int64_t d) {
    std::vector<float> c(B * k * d);
    for (int64_t b = 0; b < B; b++)
        std::copy(x.begin() + b * n * d, x.begin() + (b * n + k) * d, c.begin() + b * k * d);
    return c;
}

void expect_same_run(const Result& a, const Result& b, double obj_rel) {
    ASSERT_EQ(a.centroids.size(), b.centroids.size());
    int64_t diff = 0;
    for (size_t i = 0; i < a.centroids.size(); i++) diff += a.centroids[i] != b.centroids[i];
    EXPECT_EQ(diff, 0) << "centroid values that differ";
    ASSERT_EQ(a.stats.size(), b.stats.size());
    for (size_t p = 0; p < a.stats.size(); p++) {
        ASSERT_EQ(a.stats[p].size(), b.stats[p].size());
        for (size_t it = 0; it < a.stats[p].size(); it++) {
            EXPECT_NEAR(a.stats[p][it].obj, b.stats[p][it].obj, obj_rel * std::fabs(a.stats[p][it].obj) + 1e-9);
            EXPECT_EQ(a.stats[p][it].imbalance, b.stats[p][it].imbalance);
            EXPECT_EQ(a.stats[p][it].nsplit, b.stats[p][it].nsplit);
        }
    }
}

// Integer points, integer weights: every sum is exact, so every placement gives the same bits.
TEST(Sharded, EveryPlacementGivesTheSameBitsOnIntegerData) {
    REQUIRE_GPU();
    const int64_t B = 2, n = 25000, d = 64, k = 40;
    const auto x = flash_test::integer_points(B * n, d, 16, 7);
    std::vector<float> w(B * n);
    for (int64_t i = 0; i < B * n; i++) w[i] = float(1 + i % 3);
    const auto init = first_rows(x, B, n, k, d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 6;
    opt.weights = w.data();
    opt.k_frozen = 3;
    const auto pts = host_points(x.data(), n, d, flash::DType::F32, B);
    const Result in_memory = run(pts, init, opt);
    EXPECT_EQ(in_memory.placement.shards, 0) << "the in-memory engine fills no placement";

    opt.stream_piece_rows = 4096;
    {
        SCOPED_TRACE("one shard, every piece streamed");
        auto o = opt;
        o.streaming = flash::Streaming::Force;
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_EQ(r.placement.shards, 1);
        EXPECT_EQ(r.placement.pieces, 2 * 7);
        EXPECT_EQ(r.placement.resident_rows, 0);
        EXPECT_EQ(r.placement.streamed_rows, B * n);
        EXPECT_EQ(r.placement.streamed_bytes, B * n * d * 4);
        EXPECT_GT(r.placement.copy_s, 0);
        EXPECT_GT(r.placement.compute_s, 0);
    }
    {
        // Pieces of several objective chunks (8192 distances each) and a shorter last piece
        // (16500 + 8500 rows: three chunks, then two): each piece's objective from one workspace.
        SCOPED_TRACE("streamed pieces of three and two objective chunks");
        auto o = opt;
        o.streaming = flash::Streaming::Force;
        o.stream_piece_rows = 16500;
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_EQ(r.placement.pieces, 2 * 2);
    }
    {
        SCOPED_TRACE("three shards on one GPU, everything resident");
        auto o = opt;
        o.cuda_devices = {0, 0, 0};
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_EQ(r.placement.shards, 3);
        EXPECT_EQ(r.placement.resident_rows, B * n);
    }
    {
        SCOPED_TRACE("a memory cap: part resident, part streamed");
        auto o = opt;
        o.device_memory_limit = 16 << 20;
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_GT(r.placement.resident_rows, 0);
        EXPECT_GT(r.placement.streamed_rows, 0);
        EXPECT_EQ(r.placement.resident_rows + r.placement.streamed_rows, B * n);
    }
    if (flash::cuda_engine::device_count() > 1) {
        SCOPED_TRACE("every visible GPU, part resident, part streamed");
        auto o = opt;
        o.cuda_devices.clear();
        for (int dv = 0; dv < flash::cuda_engine::device_count(); dv++) o.cuda_devices.push_back(dv);
        o.device_memory_limit = 16 << 20;
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_EQ(r.placement.shards, flash::cuda_engine::device_count());
    }
    {
        // TF32 mode: integer points are exact in the scaled fp16 copies whatever a piece's scale,
        // and the scales are powers of two, so every placement picks the same labels.
        SCOPED_TRACE("TF32 mode: in memory, streamed, three shards");
        auto o = opt;
        o.stream_piece_rows = 0;
        o.fp32_mode = flash::Fp32Mode::TF32;
        const Result tf32 = run(pts, init, o);
        o.stream_piece_rows = 4096;
        o.streaming = flash::Streaming::Force;
        expect_same_run(tf32, run(pts, init, o), 1e-12);
        o.streaming = flash::Streaming::Auto;
        o.cuda_devices = {0, 0, 0};
        expect_same_run(tf32, run(pts, init, o), 1e-12);
    }
    {
        SCOPED_TRACE("pageable data staged instead of pinned");
        auto o = opt;
        o.streaming = flash::Streaming::Force;
        o.pin_host_data = false;
        o.cuda_devices = {0, 0};
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_FALSE(r.placement.host_pinned);
    }
}

// fp32 points sent as fp16 give the same bits as fp16 points (integers are exact in fp16).
TEST(Sharded, TransferDtypeMatchesHalfInput) {
    REQUIRE_GPU();
    const int64_t n = 20000, d = 128, k = 64;
    const auto x = flash_test::integer_points(n, d, 32, 11);
    std::vector<uint16_t> xh(x.size());
    for (size_t i = 0; i < x.size(); i++) xh[i] = flash::cpu::float_to_half(x[i]);
    const auto init = first_rows(x, 1, n, k, d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 5;
    const Result half = run(host_points(xh.data(), n, d, flash::DType::F16), init, opt);
    // The fp32 points sent as t, in pieces of 3000 rows.
    auto sent_as = [&](flash::DType t, flash::Streaming streaming, bool pin = true) {
        auto o = opt;
        o.transfer_dtype = t;
        o.streaming = streaming;
        o.stream_piece_rows = 3000;
        o.pin_host_data = pin;
        return o;
    };
    // Streamed rows are converted once into pinned host memory and DMA'd every pass
    // (host_pinned), or with pin_host_data = false converted through the staging buffers.
    for (auto streaming : {flash::Streaming::Auto, flash::Streaming::Force})
        for (bool pin : {true, false}) {
            SCOPED_TRACE(std::string(streaming == flash::Streaming::Auto ? "auto" : "force") + (pin ? "" : ", staged"));
            const Result conv = run(host_points(x.data(), n, d), init, sent_as(flash::DType::F16, streaming, pin));
            expect_same_run(half, conv, 1e-12);
            const bool streamed = streaming == flash::Streaming::Force;
            EXPECT_EQ(conv.placement.streamed_rows, streamed ? n : 0);
            EXPECT_EQ(conv.placement.host_pinned, streamed && pin);
            EXPECT_EQ(conv.placement.converted_rows, streamed && pin ? n : 0);
        }
    {
        // bfloat16 likewise (these integers are exact in it too).
        SCOPED_TRACE("bfloat16, converted once");
        std::vector<uint16_t> xb(x.size());
        for (size_t i = 0; i < x.size(); i++) xb[i] = flash::cpu::float_to_bf16(x[i]);
        const Result bf = run(host_points(xb.data(), n, d, flash::DType::BF16), init, opt);
        const Result conv =
            run(host_points(x.data(), n, d), init, sent_as(flash::DType::BF16, flash::Streaming::Force));
        expect_same_run(bf, conv, 1e-12);
        EXPECT_EQ(conv.placement.converted_rows, n);
    }
    {
        // Host memory for only some pieces (half of what the host has available may be used;
        // the test-only switch FLASH_TEST_HOST_MEMORY says how much that is): those pieces are
        // converted once, the others staged every pass.
        SCOPED_TRACE("part of the streamed rows converted once");
        ScopedEnv host_memory("FLASH_TEST_HOST_MEMORY");
        host_memory.set(std::to_string(2 * 3 * 3000 * d * 2).c_str()); // three pieces of 3000 fp16 rows
        const Result conv = run(host_points(x.data(), n, d), init, sent_as(flash::DType::F16, flash::Streaming::Force));
        expect_same_run(half, conv, 1e-12);
        EXPECT_EQ(conv.placement.converted_rows, 3 * 3000);
        EXPECT_FALSE(conv.placement.host_pinned);
    }
    // Values beyond fp16's range are refused, not turned into Inf: on upload, when converted
    // once, and when staged.
    auto big = x;
    big[n * d - 5] = 1e6f; // in the last piece
    for (auto streaming : {flash::Streaming::Auto, flash::Streaming::Force})
        for (bool pin : {true, false}) {
            auto o = sent_as(flash::DType::F16, streaming, pin);
            o.backend = flash::Backend::CUDA;
            std::vector<float> c = init;
            EXPECT_THROW(flash::run_lloyd(host_points(big.data(), n, d), c.data(), o), std::invalid_argument);
        }
}

// Gaussian data: several shards agree with one GPU within float tolerance and are
// deterministic run to run; fp32 exact assignment and inner product on the sharded path.
// One iteration from the same centroids: the same assignments, sums that differ by rounding
// only. Several iterations: near-ties may then go either way, so the objectives are compared.
TEST(Sharded, FloatDataSeveralShardsMatchOneGpu) {
    REQUIRE_GPU();
    const int64_t n = 30000, d = 128, k = 100;
    const auto x = flash_test::gaussian_mixture(n, d, 50, 21);
    const auto init = first_rows(x, 1, n, k, d);
    for (auto metric : {flash::Metric::L2, flash::Metric::InnerProduct})
        for (int niter : {1, 6}) {
            SCOPED_TRACE(std::string(metric == flash::Metric::L2 ? "L2" : "inner product") +
                         " niter=" + std::to_string(niter));
            flash::LloydOptions opt;
            opt.k = k;
            opt.niter = niter;
            opt.metric = metric;
            const auto pts = host_points(x.data(), n, d);
            const Result one = run(pts, init, opt);
            auto o = opt;
            o.cuda_devices = {0, 0};
            o.stream_piece_rows = 7000;
            o.device_memory_limit = 64 << 20;
            const Result a = run(pts, init, o), b = run(pts, init, o);
            expect_same_run(a, b, 0); // deterministic for a fixed device list
            if (niter == 1) {
                double err = 0, scale = 0;
                for (size_t i = 0; i < one.centroids.size(); i++) {
                    err = std::max(err, double(std::fabs(one.centroids[i] - a.centroids[i])));
                    scale = std::max(scale, double(std::fabs(one.centroids[i])));
                }
                EXPECT_LE(err, 1e-5 * scale);
                EXPECT_NEAR(one.stats[0][0].obj, a.stats[0][0].obj, 1e-6 * std::fabs(one.stats[0][0].obj));
            } else {
                const double o1 = one.stats[0].back().obj, o2 = a.stats[0].back().obj;
                EXPECT_NEAR(o1, o2, 1e-3 * std::fabs(o1));
            }
        }
}

// A checkpointed streamed run on two shards is one engine call (the rows pinned, the resident
// pieces uploaded once): each checkpoint is written after its iteration's callback, while the
// run goes on, the first with the bits of a 3-iteration run, the last at the end.
TEST(Sharded, CheckpointsAreWrittenDuringTheRun) {
    REQUIRE_GPU();
    const int64_t n = 30000, d = 128, k = 100;
    const auto x = flash_test::gaussian_mixture(n, d, 50, 23);
    const auto init = first_rows(x, 1, n, k, d);
    const auto pts = host_points(x.data(), n, d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.backend = flash::Backend::CUDA;
    opt.cuda_devices = {0, 0};
    opt.stream_piece_rows = 7000;
    opt.device_memory_limit = 64 << 20;
    auto three = opt, seven = opt;
    three.niter = 3;
    seven.niter = 7;
    const Result r3 = run(pts, init, three), r7 = run(pts, init, seven);
    seven.checkpoint_every = 3;
    std::vector<float> probed = init;
    const auto probe = flash_test::probe_checkpoints(pts, probed.data(), seven, "sharded");
    EXPECT_EQ(probe.file_iterations, (std::vector<int>{0, 0, 0, 3, 3, 3, 6}));
    EXPECT_EQ(probe.first_checkpoint, r3.centroids);
    EXPECT_EQ(probe.last.iterations_done, 7);
    EXPECT_EQ(probe.last.centroids, r7.centroids);
    EXPECT_EQ(probed, r7.centroids);
}

TEST(Sharded, ClearErrors) {
    REQUIRE_GPU();
    const int64_t n = 5000, d = 32, k = 10;
    const auto x = flash_test::gaussian_mixture(n, d, 5, 3);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 2;
    opt.backend = flash::Backend::CUDA;
    auto c = first_rows(x, 1, n, k, d);
    const auto pts = host_points(x.data(), n, d);
    {
        auto o = opt;
        o.cuda_devices = {0, 999};
        try {
            flash::run_lloyd(pts, c.data(), o);
            FAIL() << "a device that does not exist was accepted";
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("999"), std::string::npos) << e.what();
        }
    }
    {
        auto o = opt;
        o.streaming = flash::Streaming::Off;
        o.device_memory_limit = 1 << 20; // far below the buffers
        EXPECT_THROW(flash::run_lloyd(pts, c.data(), o), std::runtime_error);
    }
    {
        auto o = opt;
        o.device_memory_limit = 1 << 20; // not even the stream buffers fit
        try {
            flash::run_lloyd(pts, c.data(), o);
            FAIL() << "a run that cannot fit was accepted";
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find("out of GPU memory"), std::string::npos) << e.what();
        }
    }
}

// A resident piece whose allocation fails (the planner's estimate was optimistic, or another
// process took memory since; FLASH_TEST_FAIL_RESIDENT=j[,j...] fails each shard's j-th
// allocation attempts) makes a second plan within the bytes the first one got: the stream
// buffers come out of them where the first plan had none, and the pieces that fit in the rest
// stay, spread among the streamed ones. A failure in the second plan streams the rest. The
// placement changes, the bits do not. With Streaming::Off it is an out-of-memory error.
TEST(Sharded, FailedResidentAllocationStreamsInstead) {
    REQUIRE_GPU();
    const int64_t B = 2, n = 25000, d = 64, k = 40;
    const auto x = flash_test::integer_points(B * n, d, 16, 7);
    const auto init = first_rows(x, B, n, k, d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 4;
    const auto pts = host_points(x.data(), n, d, flash::DType::F32, B);
    const Result in_memory = run(pts, init, opt);
    opt.stream_piece_rows = 4096; // 7 pieces per problem: 6 of 4096 rows, then 424
    ScopedEnv fail("FLASH_TEST_FAIL_RESIDENT");
    auto two = opt;
    two.cuda_devices = {0, 0}; // a shard per problem, each planned fully resident (no stream buffers)
    auto expect_resident = [&](const char* what, const char* failing, int64_t rows) {
        SCOPED_TRACE(what);
        fail.set(failing);
        const Result r = run(pts, init, two);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_EQ(r.placement.shards, 2);
        EXPECT_EQ(r.placement.resident_rows, rows);
        EXPECT_EQ(r.placement.streamed_rows, B * n - rows);
    };
    // The first plan got five pieces (rows and norms, 4096 x 260 bytes each) before the sixth
    // failed; the three stream buffers (4096 x 772 bytes) leave room for two.
    expect_resident("each shard's sixth piece fails", "5", 2 * 2 * 4096);
    // One piece's bytes do not hold the stream buffers: everything is streamed.
    expect_resident("each shard's second piece fails", "1", 0);
    // The second plan keeps two pieces (attempts 6 and 7); the second of them fails.
    expect_resident("a failure in each plan", "5,7", 2 * 4096);
    {
        // The stream buffers are allocated before the resident pieces.
        SCOPED_TRACE("planned part resident (a memory cap), the first resident piece fails");
        auto o = opt;
        o.device_memory_limit = 16 << 20;
        fail.unset();
        const Result planned = run(pts, init, o);
        ASSERT_GT(planned.placement.resident_rows, 0);
        ASSERT_GT(planned.placement.streamed_rows, 0);
        fail.set("0");
        const Result r = run(pts, init, o);
        expect_same_run(in_memory, r, 1e-12);
        EXPECT_EQ(r.placement.resident_rows, 0);
        EXPECT_EQ(r.placement.streamed_rows, B * n);
        // The second resident piece fails: the second plan keeps one piece's bytes (the stream
        // buffers are already there), and a failure in it streams everything.
        fail.set("1");
        const Result one = run(pts, init, o);
        expect_same_run(in_memory, one, 1e-12);
        EXPECT_EQ(one.placement.resident_rows, 4096);
        fail.set("1,2");
        const Result none = run(pts, init, o);
        expect_same_run(in_memory, none, 1e-12);
        EXPECT_EQ(none.placement.resident_rows, 0);
    }
    {
        SCOPED_TRACE("Streaming::Off");
        auto o = opt;
        o.cuda_devices = {0, 0};
        o.streaming = flash::Streaming::Off;
        o.backend = flash::Backend::CUDA;
        fail.set("0");
        std::vector<float> c = init;
        try {
            flash::run_lloyd(pts, c.data(), o);
            FAIL() << "a failed resident allocation was accepted with Streaming::Off";
        } catch (const std::runtime_error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("out of GPU memory"), std::string::npos) << what;
            EXPECT_NE(what.find("Streaming::Off"), std::string::npos) << what;
        }
    }
}

// With Streaming::Off and too little memory, the error names the largest part of the estimate
// and says that streaming would fit only where it would.
TEST(Sharded, OffErrorNamesTheLargestPart) {
    REQUIRE_GPU();
    flash::LloydOptions opt;
    opt.k = 10;
    opt.niter = 2;
    opt.backend = flash::Backend::CUDA;
    opt.streaming = flash::Streaming::Off;
    auto message = [&](const flash::Points& pts, const std::vector<float>& init, const flash::LloydOptions& o) {
        std::vector<float> c = init;
        try {
            flash::run_lloyd(pts, c.data(), o);
        } catch (const std::runtime_error& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    {
        // 0.6 MiB of points beside the per-piece scratch (the update's sort workspace: over 8 MiB).
        SCOPED_TRACE("small points, tiny cap: the scratch");
        const int64_t n = 5000, d = 32;
        const auto x = flash_test::gaussian_mixture(n, d, 5, 3);
        auto o = opt;
        o.device_memory_limit = 1 << 20;
        const std::string what = message(host_points(x.data(), n, d), first_rows(x, 1, n, opt.k, d), o);
        EXPECT_NE(what.find("the largest part is the per-piece scratch"), std::string::npos) << what;
        EXPECT_NE(what.find("a streaming run ("), std::string::npos) << what;
        EXPECT_NE(what.find(") would not fit either"), std::string::npos) << what;
    }
    {
        // 24.8 MiB of points, about 14 MiB of buffers for a streaming run.
        SCOPED_TRACE("the points do not fit, streaming would");
        const int64_t n = 100000, d = 64;
        const auto x = flash_test::gaussian_mixture(n, d, 5, 3);
        const auto pts = host_points(x.data(), n, d);
        const auto init = first_rows(x, 1, n, opt.k, d);
        auto o = opt;
        o.stream_piece_rows = 5000;
        o.device_memory_limit = 24 << 20;
        const std::string what = message(pts, init, o);
        EXPECT_NE(what.find("the largest part is the points kept resident"), std::string::npos) << what;
        EXPECT_NE(what.find(") would fit"), std::string::npos) << what;
        o.streaming = flash::Streaming::Auto;
        const Result r = run(pts, init, o);
        EXPECT_GT(r.placement.streamed_rows, 0);
    }
}

// FlashClustering picks the placement options up from its FlashOptions.
TEST(Sharded, FlashClusteringOnTwoShards) {
    REQUIRE_GPU();
    const int n = 20000, d = 32, k = 50;
    const auto x = flash_test::integer_points(n, d, 16, 5);
    faiss_flash::FlashClustering one(d, k), two(d, k);
    one.niter = two.niter = 5;
    one.flash.backend = two.flash.backend = flash::Backend::CUDA;
    two.flash.cuda_devices = {0, 0};
    two.flash.stream_piece_rows = 5000;
    two.flash.streaming = flash::Streaming::Force;
    faiss::IndexFlatL2 i1(d), i2(d);
    one.train(n, x.data(), i1);
    two.train(n, x.data(), i2);
    EXPECT_EQ(one.centroids, two.centroids);
    ASSERT_EQ(one.iteration_stats.size(), two.iteration_stats.size());
    EXPECT_EQ(i2.ntotal, k);
}

} // namespace
