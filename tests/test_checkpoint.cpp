// Resumable runs: a real process killed mid-way (SIGKILL) or interrupted (SIGINT) and
// restarted from its checkpoint ends with the same centroids as an uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "kernels/checkpoint.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

namespace {

// A file in the test's temporary directory, absent when the test starts using it and removed,
// with the checkpoint writer's ".tmp" beside it, however the test ends.
class TempFile {
  public:
    explicit TempFile(const std::string& name)
        : path_(testing::TempDir() + "flash_ck_" + std::to_string(getpid()) + "_" + name) {
        remove_all();
    }
    ~TempFile() { remove_all(); }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    const std::string& path() const { return path_; }

  private:
    void remove_all() const {
        std::remove(path_.c_str());
        std::remove((path_ + ".tmp").c_str());
    }
    std::string path_;
};

// A CPU run of k centroids over niter iterations.
flash::LloydOptions cpu_options(int64_t k, int niter) {
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = niter;
    opt.backend = flash::Backend::CPU;
    return opt;
}

// The worker built beside this test, or FLASH_CHECKPOINT_WORKER (binaries moved elsewhere).
const char* worker_path() {
    const char* env = std::getenv("FLASH_CHECKPOINT_WORKER");
    return env && *env ? env : WORKER_PATH;
}

pid_t spawn(const std::string& out, const std::string& ck, int sleep_ms, const char* backend = "cpu") {
    const std::string s = std::to_string(sleep_ms);
    const char* worker = worker_path();
    const pid_t pid = fork();
    if (pid == 0) {
        // SIGINT as an interactive shell leaves it (a test run in the background inherits it
        // ignored, and the library leaves an ignored SIGINT ignored)
        signal(SIGINT, SIG_DFL);
        execl(worker, worker, out.c_str(), ck.c_str(), s.c_str(), backend, static_cast<char*>(nullptr));
        _exit(127);
    }
    return pid;
}

int wait_exit(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

// Waits until the checkpoint records at least `iters` iterations.
bool wait_for_checkpoint(const std::string& ck, int iters) {
    for (int i = 0; i < 600; i++) {
        flash::Checkpoint c;
        try {
            if (flash::load_checkpoint(ck, c) && c.iterations_done >= iters) return true;
        } catch (const flash::BadCheckpoint&) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

std::string reference_centroids(const char* backend = "cpu") {
    const TempFile out(std::string("ref_") + backend);
    EXPECT_EQ(wait_exit(spawn(out.path(), "-", 0, backend)), 0);
    return slurp(out.path());
}

// A worker on `backend` killed with SIGKILL once its checkpoint holds 4 iterations, then
// restarted from it: the same centroids, byte for byte, as an uninterrupted run.
void kill_and_resume(const char* backend) {
    const std::string ref = reference_centroids(backend);
    ASSERT_FALSE(ref.empty());
    const TempFile ck_file(std::string("kill_") + backend + ".ckpt"), out_file(std::string("kill_") + backend + ".out");
    const std::string &ck = ck_file.path(), &out = out_file.path();
    const pid_t pid = spawn(out, ck, 150, backend);
    ASSERT_TRUE(wait_for_checkpoint(ck, 4)) << "no checkpoint appeared";
    kill(pid, SIGKILL);
    EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
    flash::Checkpoint mid;
    ASSERT_TRUE(flash::load_checkpoint(ck, mid));
    EXPECT_LT(mid.iterations_done, 24) << "the process should have been killed mid-way";
    EXPECT_EQ(wait_exit(spawn(out, ck, 0, backend)), 0);
    EXPECT_EQ(slurp(out), ref) << "resumed run differs from the uninterrupted one";
}

TEST(Checkpoint, KilledProcessResumesToTheSameCentroids) {
    kill_and_resume("cpu");
}

// The same on one GPU, whose checkpoints are written from inside one engine call.
TEST(Checkpoint, KilledGpuProcessResumesToTheSameCentroids) {
    if (!flash::cuda_available()) GTEST_SKIP() << "no CUDA device visible: GPU test skipped";
    kill_and_resume("cuda");
}

TEST(Checkpoint, SigintStopsBetweenIterationsAndResumes) {
    const std::string ref = reference_centroids();
    const TempFile ck_file("int.ckpt"), out_file("int.out");
    const std::string &ck = ck_file.path(), &out = out_file.path();
    const pid_t pid = spawn(out, ck, 150);
    ASSERT_TRUE(wait_for_checkpoint(ck, 2));
    kill(pid, SIGINT);
    EXPECT_EQ(wait_exit(pid), 130) << "SIGINT should stop the run cleanly";
    flash::Checkpoint mid;
    ASSERT_TRUE(flash::load_checkpoint(ck, mid));
    EXPECT_LT(mid.iterations_done, 24);
    EXPECT_EQ(wait_exit(spawn(out, ck, 0)), 0);
    EXPECT_EQ(slurp(out), ref);
}

// A CPU run of 5 centroids over 500 points in 4-d, 3 iterations, checkpointed to ck every
// iteration (c: its centroids).
struct CheckpointedRun {
    explicit CheckpointedRun(const std::string& ck)
        : x(flash_test::gaussian_mixture(500, 4, 5, 9)),
          c(x.begin(), x.begin() + 5 * 4),
          p(flash_test::host_points(x.data(), 500, 4)),
          opt(cpu_options(5, 3)) {
        opt.checkpoint_path = ck;
        opt.checkpoint_every = 1;
        flash::run_lloyd(p, c.data(), opt);
    }
    std::vector<float> x, c;
    flash::Points p;
    flash::LloydOptions opt;
};

TEST(Checkpoint, CheckpointOfAnotherProblemIsRejected) {
    const TempFile ck_file("other.ckpt");
    const std::string& ck = ck_file.path();
    CheckpointedRun r(ck);
    r.opt.k = 4;
    EXPECT_THROW(flash::run_lloyd(r.p, r.c.data(), r.opt), flash::BadCheckpoint);
    std::ofstream(ck) << "garbage";
    r.opt.k = 5;
    EXPECT_THROW(flash::run_lloyd(r.p, r.c.data(), r.opt), flash::BadCheckpoint);
}

// A damaged file is a BadCheckpoint naming what is wrong, found before anything is allocated
// from its header: header sizes beyond the file, a changed byte anywhere (the checksum), bytes
// appended, an unknown metric, an older format, a directory.
TEST(Checkpoint, DamagedCheckpointIsRefused) {
    const TempFile ck_file("damaged.ckpt");
    const std::string& ck = ck_file.path();
    const CheckpointedRun run(ck);
    const std::string good = slurp(ck);
    flash::Checkpoint loaded;
    ASSERT_TRUE(flash::load_checkpoint(ck, loaded));
    EXPECT_EQ(loaded.iterations_done, 3);
    auto refused_with = [&](const std::string& bytes, const std::string& what) {
        std::ofstream(ck, std::ios::binary | std::ios::trunc) << bytes;
        flash::Checkpoint out;
        try {
            flash::load_checkpoint(ck, out);
            ADD_FAILURE() << "accepted a checkpoint that should say: " << what;
        } catch (const flash::BadCheckpoint& e) {
            EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
        }
    };
    auto with_int64 = [&](size_t offset, int64_t v) {
        std::string b = good;
        std::memcpy(b.data() + offset, &v, sizeof(v));
        return b;
    };
    // header: magic, then batch, n, d, k, metric, two fingerprints, iterations (int64 each)
    refused_with(with_int64(8 + 2 * 8, int64_t(1) << 20), "truncated");      // d
    refused_with(with_int64(8 + 3 * 8, int64_t(1) << 30), "truncated");      // k
    refused_with(with_int64(8 + 4 * 8, 7), "invalid header");                // metric
    refused_with(with_int64(8 + 7 * 8, int64_t(1) << 40), "invalid header"); // iterations
    for (size_t at : {size_t(8 + 5 * 8), size_t(80), good.size() - 20, good.size() - 1}) {
        std::string b = good;
        b[at] = char(b[at] ^ 0x40);
        refused_with(b, "checksum");
    }
    refused_with(good + "x", "damaged");
    refused_with(good.substr(0, good.size() - 1), "truncated");
    std::string v2 = good;
    v2[7] = '2';
    refused_with(v2, "another version");
    std::ofstream(ck, std::ios::binary | std::ios::trunc) << good;
    ASSERT_TRUE(flash::load_checkpoint(ck, loaded)); // the file as written still loads
    const TempFile dir_file("a_directory");
    ASSERT_EQ(::mkdir(dir_file.path().c_str(), 0700), 0);
    flash::Checkpoint out;
    try {
        flash::load_checkpoint(dir_file.path(), out);
        ADD_FAILURE() << "a directory was read as a checkpoint";
    } catch (const flash::BadCheckpoint& e) {
        EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
    }
    ::rmdir(dir_file.path().c_str());
}

TEST(Checkpoint, SegmentedRunEqualsPlainRun) {
    const auto x = flash_test::gaussian_mixture(3000, 8, 20, 10);
    std::vector<float> c1(x.begin(), x.begin() + 16 * 8), c2 = c1;
    flash::Points p = flash_test::host_points(x.data(), 3000, 8);
    flash::LloydOptions opt = cpu_options(16, 9);
    const auto s1 = flash::run_lloyd(p, c1.data(), opt);
    const TempFile ck("seg.ckpt");
    opt.checkpoint_path = ck.path();
    opt.checkpoint_every = 4;
    int calls = 0;
    opt.on_iteration = [&](int64_t, int it, const flash::IterationStats&) { EXPECT_EQ(it, calls++); };
    const auto s2 = flash::run_lloyd(p, c2.data(), opt);
    EXPECT_EQ(c1, c2);
    ASSERT_EQ(s2[0].size(), 9u);
    EXPECT_EQ(calls, 9);
    for (int i = 0; i < 9; i++) EXPECT_EQ(s1[0][i].obj, s2[0][i].obj);
}

TEST(Checkpoint, ALongerRunsCheckpointIsRejected) {
    const auto x = flash_test::gaussian_mixture(2000, 8, 10, 12);
    std::vector<float> c(x.begin(), x.begin() + 10 * 8);
    const flash::Points p = flash_test::host_points(x.data(), 2000, 8);
    flash::LloydOptions opt = cpu_options(10, 6);
    const TempFile ck("longer.ckpt");
    opt.checkpoint_path = ck.path();
    auto c6 = c;
    flash::run_lloyd(p, c6.data(), opt);
    opt.niter = 3; // its centroids are those after 6 iterations, not 3
    auto c3 = c;
    EXPECT_THROW(flash::run_lloyd(p, c3.data(), opt), flash::BadCheckpoint);
    opt.niter = 6; // as many: nothing left to do, the saved centroids
    auto again = c;
    flash::run_lloyd(p, again.data(), opt);
    EXPECT_EQ(again, c6);
}

// The same data with another start, other weights or other options is another run.
TEST(Checkpoint, AnotherRunOfTheSameDataIsRejected) {
    const auto x = flash_test::gaussian_mixture(2000, 8, 10, 13);
    const std::vector<float> c(x.begin(), x.begin() + 10 * 8), c_other(x.begin() + 80, x.begin() + 160);
    const flash::Points p = flash_test::host_points(x.data(), 2000, 8);
    std::vector<float> w(2000, 1.f);
    flash::LloydOptions opt = cpu_options(10, 4);
    const TempFile ck("another.ckpt");
    opt.checkpoint_path = ck.path();
    auto c1 = c;
    flash::run_lloyd(p, c1.data(), opt);
    auto other_start = c_other;
    EXPECT_THROW(flash::run_lloyd(p, other_start.data(), opt), flash::BadCheckpoint);
    auto weighted = c;
    auto o = opt;
    o.weights = w.data();
    EXPECT_THROW(flash::run_lloyd(p, weighted.data(), o), flash::BadCheckpoint);
    o = opt;
    o.spherical = true;
    auto spherical = c;
    EXPECT_THROW(flash::run_lloyd(p, spherical.data(), o), flash::BadCheckpoint);
    auto same = c; // the same run again: resumed (finished), the same centroids
    flash::run_lloyd(p, same.data(), opt);
    EXPECT_EQ(same, c1);
}

// A stop request ends a stop_on_sigint run between iterations, batches included (the CPU
// engine runs a batch's problems one after another: such a run goes one iteration per call).
TEST(Checkpoint, StopRequestEndsBatchedAndSingleRuns) {
    for (int64_t B : {1, 3}) {
        SCOPED_TRACE("batch " + std::to_string(B));
        const auto x = flash_test::gaussian_mixture(1500 * B, 8, 10, 14);
        std::vector<float> c(B * 10 * 8);
        for (int64_t b = 0; b < B; b++)
            std::copy(x.begin() + b * 1500 * 8, x.begin() + (b * 1500 + 10) * 8, c.begin() + b * 80);
        const flash::Points p = flash_test::host_points(x.data(), 1500, 8, flash::DType::F32, B);
        flash::LloydOptions opt = cpu_options(10, 20);
        opt.stop_on_sigint = true;
        int last = -1;
        opt.on_iteration = [&](int64_t, int it, const flash::IterationStats&) {
            last = std::max(last, it);
            if (it == 2) flash::request_stop();
        };
        EXPECT_THROW(flash::run_lloyd(p, c.data(), opt), flash::Interrupted);
        EXPECT_LT(last, 19) << "the run went on to the end";
        // Without stop_on_sigint a run ignores stop requests.
        opt.stop_on_sigint = false;
        last = -1;
        EXPECT_NO_THROW(flash::run_lloyd(p, c.data(), opt));
        EXPECT_EQ(last, 19);
    }
}

// Overlapping stop_on_sigint runs on two threads put back the SIGINT handler that was there
// before the first, whatever order they end in.
TEST(Checkpoint, OverlappingRunsRestoreTheSigintHandler) {
    struct sigaction mine = {}, before = {}, after = {};
    mine.sa_handler = [](int) {};
    sigemptyset(&mine.sa_mask);
    sigaction(SIGINT, &mine, &before);
    const auto x = flash_test::gaussian_mixture(3000, 8, 10, 15);
    auto run = [&](int niter, int sleep_ms) {
        std::vector<float> c(x.begin(), x.begin() + 80);
        const flash::Points p = flash_test::host_points(x.data(), 3000, 8);
        flash::LloydOptions opt = cpu_options(10, niter);
        opt.stop_on_sigint = true;
        opt.on_iteration = [=](int64_t, int, const flash::IterationStats&) {
            std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
        };
        flash::run_lloyd(p, c.data(), opt);
    };
    std::thread a([&] { run(4, 30); }); // starts first, ends first
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    std::thread b([&] { run(8, 30); });
    a.join();
    b.join();
    sigaction(SIGINT, nullptr, &after);
    EXPECT_EQ(after.sa_handler, mine.sa_handler);
    sigaction(SIGINT, &before, nullptr);
}

// A process that ignores SIGINT (started in the background by a shell) keeps ignoring it: a
// SIGINT during a stoppable run neither stops it nor leaves a handler behind.
TEST(Checkpoint, IgnoredSigintStaysIgnored) {
    struct sigaction ignore = {}, before = {}, during = {}, after = {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGINT, &ignore, &before);
    const auto x = flash_test::gaussian_mixture(1000, 4, 5, 21);
    std::vector<float> c(x.begin(), x.begin() + 20);
    const flash::Points p = flash_test::host_points(x.data(), 1000, 4);
    flash::LloydOptions opt = cpu_options(5, 4);
    opt.stop_on_sigint = true;
    int iterations = 0;
    opt.on_iteration = [&](int64_t, int, const flash::IterationStats&) {
        if (iterations++ == 0) {
            sigaction(SIGINT, nullptr, &during);
            ::raise(SIGINT);
        }
    };
    EXPECT_NO_THROW(flash::run_lloyd(p, c.data(), opt));
    EXPECT_EQ(iterations, 4);
    EXPECT_EQ(during.sa_handler, SIG_IGN);
    sigaction(SIGINT, nullptr, &after);
    EXPECT_EQ(after.sa_handler, SIG_IGN);
    sigaction(SIGINT, &before, nullptr);
}

} // namespace

#include <faiss/IndexFlat.h>

#include "faiss_ext/FlashClustering.h"

namespace {

TEST(Checkpoint, FlashClusteringResumesWithFaissSemantics) {
    const auto x = flash_test::gaussian_mixture(4000, 8, 30, 11);
    auto make = [] {
        faiss_flash::FlashClustering c(8, 20);
        c.niter = 10;
        c.nredo = 2;
        c.flash.backend = flash::Backend::CPU;
        return c;
    };
    auto plain = make();
    faiss::IndexFlatL2 i1(8);
    plain.train(4000, x.data(), i1);

    const TempFile ck_file("clus.ckpt"), redo0("clus.ckpt.redo0"), redo1("clus.ckpt.redo1"); // (one per redo)
    const std::string& ck = ck_file.path();
    auto first = make();
    first.flash.checkpoint_path = ck;
    first.flash.checkpoint_every = 3;
    faiss::IndexFlatL2 i2(8);
    first.train(4000, x.data(), i2);
    // A second process would find finished checkpoints for both redos and recompute nothing.
    auto again = make();
    again.flash.checkpoint_path = ck;
    again.flash.checkpoint_every = 3;
    faiss::IndexFlatL2 i3(8);
    again.train(4000, x.data(), i3);
    EXPECT_EQ(plain.centroids, first.centroids);
    EXPECT_EQ(plain.centroids, again.centroids);
    ASSERT_EQ(again.iteration_stats.size(), plain.iteration_stats.size());
    EXPECT_EQ(again.iteration_stats.back().obj, plain.iteration_stats.back().obj);
}

} // namespace
