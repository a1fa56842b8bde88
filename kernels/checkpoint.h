// Checkpoints of Lloyd runs: centroids, finished iterations and stats of every problem of a
// batch, tied to the problem's shape and a fingerprint of its data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash {

struct Checkpoint {
    int64_t batch = 0, n = 0, d = 0, k = 0;
    int metric = 0;
    uint64_t data_fingerprint = 0;
    uint64_t run_fingerprint = 0; ///< the options and initial centroids (run_fingerprint below)
    int iterations_done = 0;
    std::vector<std::vector<IterationStats>> stats; ///< (batch, iterations_done)
    std::vector<float> centroids;                   ///< (batch, k, d)
};

/// Cheap fingerprint of host data: its shape and dtype and 4096 rows spread over it (a
/// change confined to other rows goes unnoticed); the shape only for device data.
uint64_t data_fingerprint(const Points& x);

/// Fingerprint of what else decides a run's result: the initial centroids, the weights (a
/// sample, as for the data), k_frozen, spherical, int_centroids, fp32_mode, transfer_dtype.
uint64_t run_fingerprint(const Points& x, const float* initial_centroids, const LloydOptions& opt);

/// Throws BadCheckpoint naming what differs when `found` (read from path) is not a
/// checkpoint of the run `expected` describes (shape, metric, data or run fingerprint) or holds
/// more iterations than niter.
void check_same_run(const Checkpoint& found, const Checkpoint& expected, int niter, const std::string& path);

/// Folds a list of fingerprints (the shards of a distributed run, in rank order) into one.
uint64_t combine_fingerprints(const std::vector<uint64_t>& parts);

/// Writes to path + ".tmp" then renames, so a reader never sees a partial file.
void save_checkpoint(const std::string& path, const Checkpoint& c);

/// False if the file does not exist; throws BadCheckpoint if it is malformed or of
/// another format version, std::runtime_error if it exists but cannot be read.
bool load_checkpoint(const std::string& path, Checkpoint& c);

} // namespace flash
