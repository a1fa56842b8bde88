// Host side of the streaming engine: filling pinned staging buffers from the caller's
// points with OpenMP threads (plain copies, or fp32 -> fp16 / bf16 conversion).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

/// dst[i] = src[i] for i < count elements, converting src_type to dst_type (F32 -> F16 / BF16,
/// round to nearest even) or copying when they are equal. Returns false if a converted value
/// overflowed the destination type (became Inf). Runs on an OpenMP team of OpenMP's default
/// size, or fewer within a StagingTeamCap scope.
bool stage_elements(const void* src, DType src_type, void* dst, DType dst_type, int64_t count);

/// Within this scope, stage_elements calls on this thread use at most `threads` OpenMP threads
/// (0: no cap). Threads that stage at the same time (one per shard of PartialSums) each open
/// their own team, so each takes a share (staging_team_share) to keep the total within the
/// threads the process may use.
class StagingTeamCap {
  public:
    explicit StagingTeamCap(int threads);
    ~StagingTeamCap();
    StagingTeamCap(const StagingTeamCap&) = delete;
    StagingTeamCap& operator=(const StagingTeamCap&) = delete;

  private:
    int saved_;
};

/// Threads per team for `teams` teams staging at the same time: OpenMP's default team size on
/// the calling thread (the threads the process may use) split evenly, at least 1 each.
int staging_team_share(size_t teams);

} // namespace flash::cuda_engine
