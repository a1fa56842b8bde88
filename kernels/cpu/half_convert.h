// fp16 / bf16 <-> fp32 conversions for the CPU engine (bit-exact, round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/flash_kmeans.h"

namespace flash::cpu {

inline float bf16_to_float(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        u = sign;
    } else { // subnormal: normalise
        int e = -1;
        do {
            mant <<= 1;
            e++;
        } while ((mant & 0x400u) == 0);
        u = sign | (uint32_t(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

/// Row i of an (n, d) matrix of `dtype`, converted to fp32 into out (d floats).
inline void load_row(const void* x, DType dtype, int64_t i, int64_t d, float* out) {
    if (dtype == DType::F32) {
        std::memcpy(out, static_cast<const float*>(x) + i * d, sizeof(float) * d);
        return;
    }
    const uint16_t* row = static_cast<const uint16_t*>(x) + i * d;
    if (dtype == DType::F16)
        for (int64_t j = 0; j < d; j++) out[j] = half_to_float(row[j]);
    else
        for (int64_t j = 0; j < d; j++) out[j] = bf16_to_float(row[j]);
}

} // namespace flash::cpu
