// fp32 -> fp16 / bf16 over whole buffers (the streaming engine's transfer_dtype), with the same
// bits as cpu::float_to_half / float_to_bf16 (round to nearest even): AVX2 and F16C where the
// CPU has them (about eight times the scalar rate per core), the scalar loop otherwise.
#pragma once

#include <cstdint>

#include "kernels/flash_kmeans.h"

namespace flash::cpu {

/// dst[i] = src[i] in `to` (F16 or BF16) for i < count; src finite. Returns false if a value
/// became Inf (beyond the destination's range). Single-threaded: callers split the work.
bool narrow_floats(const float* src, uint16_t* dst, int64_t count, DType to);

/// The scalar loop narrow_floats falls back to (the reference its vector path is tested on).
bool narrow_floats_scalar(const float* src, uint16_t* dst, int64_t count, DType to);

/// True where narrow_floats runs vector instructions (AVX2 and F16C on this CPU).
bool narrow_floats_vectorized();

} // namespace flash::cpu
