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

/// fp32 -> fp16, round to nearest even (finite input; values from 65520 up become Inf).
inline uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x47800000u) return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u)); // >= 2^16
    if (ax < 0x38800000u) { // below 2^-14: a subnormal half, m * 2^-24 with m rounded to even
        float af;
        std::memcpy(&af, &ax, 4);
        const float scaled = af * 16777216.0f; // exact (power of two)
        uint32_t m = uint32_t(scaled);
        const float rest = scaled - float(m);
        if (rest > 0.5f || (rest == 0.5f && (m & 1u))) m++;
        return uint16_t(sign | m);
    }
    const uint32_t r = ax - 0x38000000u; // exponent rebiased from 127 to 15
    return uint16_t(sign | ((r + 0x0fffu + ((r >> 13) & 1u)) >> 13));
}

/// fp32 -> bf16, round to nearest even (finite input).
inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
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
