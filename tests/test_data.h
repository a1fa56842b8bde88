// Seeded synthetic data for the tests (DESIGN.md section 6).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace flash_test {

/// n points in d dims drawn around `ncenters` Gaussian centres (unit spread, centres
/// spread by `separation`); row-major (n, d).
std::vector<float> gaussian_mixture(int64_t n, int64_t d, int64_t ncenters, uint64_t seed, float separation = 4.0f);

/// Integer-valued points in [0, range): fp32 sums of them are exact.
std::vector<float> integer_points(int64_t n, int64_t d, int range, uint64_t seed);

/// A host-memory problem description: (batch, n, d) of dtype at data.
flash::Points host_points(const void* data, int64_t n, int64_t d, flash::DType dtype = flash::DType::F32,
                          int64_t batch = 1);

/// The engine the backend-agnostic suites run on: FLASH_TEST_BACKEND=cuda|cpu (default cpu),
/// so that the GPU script reruns them on the CUDA engine.
flash::Backend test_backend();

/// Exhaustive recall@k: fraction of the true nearest neighbour ids (from an exact flat
/// search) found among the first k results of `found` (nq, k).
double recall_at(const std::vector<int64_t>& truth, const std::vector<int64_t>& found, int64_t nq, int64_t k);

} // namespace flash_test
