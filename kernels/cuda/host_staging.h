// Host side of the streaming engine: filling pinned staging buffers from the caller's
// points with every OpenMP thread (plain copies, or fp32 -> fp16 / bf16 conversion).
#pragma once

#include <cstdint>

#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

/// dst[i] = src[i] for i < count elements, converting src_type to dst_type (F32 -> F16 / BF16,
/// round to nearest even) or copying when they are equal. Returns false if a converted value
/// overflowed the destination type (became Inf).
bool stage_elements(const void* src, DType src_type, void* dst, DType dst_type, int64_t count);

} // namespace flash::cuda_engine
