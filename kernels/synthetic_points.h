// Deterministic synthetic points for benchmarks and demos at any scale: row r lies near one
// of 256 centres (picked by a hash of r) plus uniform noise, so clusters exist; every value
// is a pure function of (row, column), so any slice of the rows (an MPI rank's shard, a
// benchmark's host buffer) is generated independently and in parallel.
#pragma once

#include <cstdint>

#include "kernels/cpu/half_convert.h"
#include "kernels/flash_kmeans.h"

namespace flash {

inline float synthetic_uniform(uint64_t i) { // in [-1, 1)
    uint64_t z = i * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return float(z >> 40) / float(1 << 24) * 2.f - 1.f;
}

/// Rows [r0, r0 + rows) of the synthetic (N, d) set, written to out as fp32, fp16 or bf16.
inline void synthetic_points(int64_t r0, int64_t rows, int64_t d, DType dtype, void* out) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const uint64_t r = uint64_t(r0 + i);
        const uint64_t centre = uint64_t((synthetic_uniform(r * 7919 + 13) + 1.f) * 1e6f) % 256;
        for (int64_t j = 0; j < d; j++) {
            const float v = 2.f * synthetic_uniform(centre * 1000003 + uint64_t(j)) +
                            0.5f * synthetic_uniform(r * uint64_t(d) + uint64_t(j) + 99991);
            const int64_t e = i * d + j;
            if (dtype == DType::F32) static_cast<float*>(out)[e] = v;
            else if (dtype == DType::F16) static_cast<uint16_t*>(out)[e] = cpu::float_to_half(v);
            else static_cast<uint16_t*>(out)[e] = cpu::float_to_bf16(v);
        }
    }
}

} // namespace flash
