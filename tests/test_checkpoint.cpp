// Resumable runs: a real process killed mid-way (SIGKILL) or interrupted (SIGINT) and
// restarted from its checkpoint ends with the same centroids as an uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
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

pid_t spawn(const std::string& out, const std::string& ck, int sleep_ms) {
    const pid_t pid = fork();
    if (pid == 0) {
        const std::string s = std::to_string(sleep_ms);
        execl(WORKER_PATH, WORKER_PATH, out.c_str(), ck.c_str(), s.c_str(), static_cast<char*>(nullptr));
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
        } catch (const std::invalid_argument&) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

std::string reference_centroids() {
    const TempFile out("ref");
    EXPECT_EQ(wait_exit(spawn(out.path(), "-", 0)), 0);
    return slurp(out.path());
}

TEST(Checkpoint, KilledProcessResumesToTheSameCentroids) {
    const std::string ref = reference_centroids();
    ASSERT_FALSE(ref.empty());
    const TempFile ck_file("kill.ckpt"), out_file("kill.out");
    const std::string &ck = ck_file.path(), &out = out_file.path();
    const pid_t pid = spawn(out, ck, 150);
    ASSERT_TRUE(wait_for_checkpoint(ck, 4)) << "no checkpoint appeared";
    kill(pid, SIGKILL);
    EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
    flash::Checkpoint mid;
    ASSERT_TRUE(flash::load_checkpoint(ck, mid));
    EXPECT_LT(mid.iterations_done, 24) << "the process should have been killed mid-way";
    EXPECT_EQ(wait_exit(spawn(out, ck, 0)), 0);
    EXPECT_EQ(slurp(out), ref) << "resumed run differs from the uninterrupted one";
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

TEST(Checkpoint, CheckpointOfAnotherProblemIsRejected) {
    const TempFile ck_file("other.ckpt");
    const std::string& ck = ck_file.path();
    const auto x = flash_test::gaussian_mixture(500, 4, 5, 9);
    std::vector<float> c(x.begin(), x.begin() + 5 * 4);
    flash::Points p = flash_test::host_points(x.data(), 500, 4);
    flash::LloydOptions opt;
    opt.k = 5;
    opt.niter = 3;
    opt.backend = flash::Backend::CPU;
    opt.checkpoint_path = ck;
    opt.checkpoint_every = 1;
    flash::run_lloyd(p, c.data(), opt);
    opt.k = 4;
    EXPECT_THROW(flash::run_lloyd(p, c.data(), opt), std::invalid_argument);
    std::ofstream(ck) << "garbage";
    opt.k = 5;
    EXPECT_THROW(flash::run_lloyd(p, c.data(), opt), std::invalid_argument);
}

TEST(Checkpoint, SegmentedRunEqualsPlainRun) {
    const auto x = flash_test::gaussian_mixture(3000, 8, 20, 10);
    std::vector<float> c1(x.begin(), x.begin() + 16 * 8), c2 = c1;
    flash::Points p = flash_test::host_points(x.data(), 3000, 8);
    flash::LloydOptions opt;
    opt.k = 16;
    opt.niter = 9;
    opt.backend = flash::Backend::CPU;
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
