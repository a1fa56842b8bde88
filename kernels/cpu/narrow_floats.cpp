#include "kernels/cpu/narrow_floats.h"

#include <stdexcept>

#include "kernels/cpu/half_convert.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define FLASH_NARROW_X86 1
#endif

namespace flash::cpu {

namespace {

constexpr uint16_t inf_bits(DType to) {
    return to == DType::F16 ? 0x7c00u : 0x7f80u;
}

void check_target(DType to) {
    if (to != DType::F16 && to != DType::BF16)
        throw std::invalid_argument("faiss-flash: fp32 narrows only to F16 or BF16");
}

#ifdef FLASH_NARROW_X86
// 8 floats per step; the tail (count % 8) through the scalar loop. Overflow: a lane whose
// magnitude bits are the destination's Inf, OR-ed over the buffer.
__attribute__((target("avx2,f16c"))) bool narrow_avx2(const float* src, uint16_t* dst, int64_t count, DType to) {
    const __m128i magnitude = _mm_set1_epi16(0x7fff), inf = _mm_set1_epi16(short(inf_bits(to)));
    __m128i overflow = _mm_setzero_si128();
    int64_t i = 0;
    if (to == DType::F16) {
        for (; i + 8 <= count; i += 8) {
            const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
            overflow = _mm_or_si128(overflow, _mm_cmpeq_epi16(_mm_and_si128(h, magnitude), inf));
        }
    } else {
        // bf16: (bits + 0x7fff + bit 16) >> 16, packed from 32 to 16 bits (values fit unsigned)
        const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff);
        for (; i + 8 <= count; i += 8) {
            const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
            const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(half, odd)), 16);
            // packus works per 128-bit lane: (r0..3, r0..3 | r4..7, r4..7); quads 0 and 2 are r0..7
            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
            const __m128i h = _mm256_castsi256_si128(packed);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
            overflow = _mm_or_si128(overflow, _mm_cmpeq_epi16(_mm_and_si128(h, magnitude), inf));
        }
    }
    const bool tail_ok = narrow_floats_scalar(src + i, dst + i, count - i, to);
    return tail_ok && _mm_testz_si128(overflow, overflow);
}

// AVX2 (whose check includes the OS saving the YMM registers) and F16C (CPUID leaf 1, ECX: not
// every compiler's __builtin_cpu_supports knows it).
bool cpu_has_avx2_f16c() {
    static const bool has = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        return __builtin_cpu_supports("avx2") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
    }();
    return has;
}
#endif

} // namespace

bool narrow_floats_scalar(const float* src, uint16_t* dst, int64_t count, DType to) {
    check_target(to);
    const uint16_t inf = inf_bits(to);
    bool overflow = false;
    if (to == DType::F16)
        for (int64_t i = 0; i < count; i++) {
            dst[i] = float_to_half(src[i]);
            overflow |= (dst[i] & 0x7fffu) == inf;
        }
    else
        for (int64_t i = 0; i < count; i++) {
            dst[i] = float_to_bf16(src[i]);
            overflow |= (dst[i] & 0x7fffu) == inf;
        }
    return !overflow;
}

bool narrow_floats_vectorized() {
#ifdef FLASH_NARROW_X86
    return cpu_has_avx2_f16c();
#else
    return false;
#endif
}

bool narrow_floats(const float* src, uint16_t* dst, int64_t count, DType to) {
    check_target(to);
#ifdef FLASH_NARROW_X86
    if (cpu_has_avx2_f16c()) return narrow_avx2(src, dst, count, to);
#endif
    return narrow_floats_scalar(src, dst, count, to);
}

} // namespace flash::cpu
