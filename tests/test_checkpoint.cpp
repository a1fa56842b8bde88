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

std::string tmp_path(const std::string& name) {
    return testing::TempDir() + "flash_ck_" + std::to_string(getpid()) + "_" + name;
}

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
    const std::string out = tmp_path("ref");
    EXPECT_EQ(wait_exit(spawn(out, "-", 0)), 0);
    return slurp(out);
}

TEST(Checkpoint, KilledProcessResumesToTheSameCentroids) {
    const std::string ref = reference_centroids();
    ASSERT_FALSE(ref.empty());
    const std::string ck = tmp_path("kill.ckpt"), out = tmp_path("kill.out");
    std::remove(ck.c_str());
    const pid_t pid = spawn(out, ck, 150);
    ASSERT_TRUE(wait_for_checkpoint(ck, 4)) << "no checkpoint appeared";
    kill(pid, SIGKILL);
    EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
    flash::Checkpoint mid;
    ASSERT_TRUE(flash::load_checkpoint(ck, mid));
    EXPECT_LT(mid.iterations_done, 24) << "the process should have been killed mid-way";
    EXPECT_EQ(wait_exit(spawn(out, ck, 0)), 0);
    EXPECT_EQ(slurp(out), ref) << "resumed run differs from the uninterrupted one";
    std::remove(ck.c_str());
}

TEST(Checkpoint, SigintStopsBetweenIterationsAndResumes) {
    const std::string ref = reference_centroids();
    const std::string ck = tmp_path("int.ckpt"), out = tmp_path("int.out");
    std::remove(ck.c_str());
    const pid_t pid = spawn(out, ck, 150);
    ASSERT_TRUE(wait_for_checkpoint(ck, 2));
    kill(pid, SIGINT);
    EXPECT_EQ(wait_exit(pid), 130) << "SIGINT should stop the run cleanly";
    flash::Checkpoint mid;
    ASSERT_TRUE(flash::load_checkpoint(ck, mid));
    EXPECT_LT(mid.iterations_done, 24);
    EXPECT_EQ(wait_exit(spawn(out, ck, 0)), 0);
    EXPECT_EQ(slurp(out), ref);
    std::remove(ck.c_str());
}

TEST(Checkpoint, CheckpointOfAnotherProblemIsRejected) {
    const std::string ck = tmp_path("other.ckpt");
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
    std::remove(ck.c_str());
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
    const std::string ck = tmp_path("seg.ckpt");
    std::remove(ck.c_str());
    opt.checkpoint_path = ck;
    opt.checkpoint_every = 4;
    int calls = 0;
    opt.on_iteration = [&](int64_t, int it, const flash::IterationStats&) { EXPECT_EQ(it, calls++); };
    const auto s2 = flash::run_lloyd(p, c2.data(), opt);
    EXPECT_EQ(c1, c2);
    ASSERT_EQ(s2[0].size(), 9u);
    EXPECT_EQ(calls, 9);
    for (int i = 0; i < 9; i++) EXPECT_EQ(s1[0][i].obj, s2[0][i].obj);
    std::remove(ck.c_str());
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

    const std::string ck = tmp_path("clus.ckpt");
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
    std::remove((ck + ".redo0").c_str());
    std::remove((ck + ".redo1").c_str());
}

} // namespace
