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
    int iterations_done = 0;
    std::vector<std::vector<IterationStats>> stats; ///< (batch, iterations_done)
    std::vector<float> centroids;                   ///< (batch, k, d)
};

/// Cheap fingerprint of host data (shape and a sample of rows); 0 for device data.
uint64_t data_fingerprint(const Points& x);

/// Writes to path + ".tmp" then renames, so a reader never sees a partial file.
void save_checkpoint(const std::string& path, const Checkpoint& c);

/// False if the file does not exist; throws std::invalid_argument if it is malformed.
bool load_checkpoint(const std::string& path, Checkpoint& c);

} // namespace flash
