// A checkpointed run watched from its callbacks: every on_iteration call of problem 0 reads the
// checkpoint file, so a test sees which checkpoints the engine wrote while its call went on.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "kernels/checkpoint.h"
#include "kernels/flash_kmeans.h"

namespace flash_test {

struct CheckpointProbe {
    std::vector<int> file_iterations;    ///< per iteration of problem 0: the file's iterations (0: none)
    std::vector<float> first_checkpoint; ///< centroids of the first checkpoint seen
    flash::Checkpoint last;              ///< the file once the run returned
};

/// Runs opt (checkpoint_every set by the caller) with a fresh checkpoint file named after `tag`,
/// which it removes at the end.
inline CheckpointProbe probe_checkpoints(const flash::Points& x, float* centroids, flash::LloydOptions opt,
                                         const std::string& tag) {
    const std::string path = ::testing::TempDir() + "flash_probe_" + tag + "_" + std::to_string(getpid()) + ".ckpt";
    std::remove(path.c_str());
    CheckpointProbe probe;
    opt.checkpoint_path = path;
    opt.on_iteration = [&](int64_t b, int, const flash::IterationStats&) {
        if (b != 0) return;
        flash::Checkpoint c;
        const bool found = flash::load_checkpoint(path, c);
        probe.file_iterations.push_back(found ? c.iterations_done : 0);
        if (found && probe.first_checkpoint.empty()) probe.first_checkpoint = c.centroids;
    };
    flash::run_lloyd(x, centroids, opt);
    flash::load_checkpoint(path, probe.last);
    std::remove(path.c_str());
    return probe;
}

} // namespace flash_test
