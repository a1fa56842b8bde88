#include "kernels/cuda/host_staging.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "kernels/cpu/narrow_floats.h"
#include "kernels/lloyd_common.h"

namespace flash::cuda_engine {

namespace {

thread_local int t_team_cap = 0; // set by StagingTeamCap; 0: no cap

// Threads of this thread's next staging team: OpenMP's default, within the cap.
int team_size() {
    const int threads = omp_get_max_threads();
    return t_team_cap > 0 ? std::min(threads, t_team_cap) : threads;
}

} // namespace

StagingTeamCap::StagingTeamCap(int threads) : saved_(t_team_cap) {
    t_team_cap = std::max(threads, 0);
}

StagingTeamCap::~StagingTeamCap() {
    t_team_cap = saved_;
}

int staging_team_share(size_t teams) {
    // OpenMP's default team size: the threads this process may use (affinity, cpusets,
    // OMP_NUM_THREADS), where hardware_concurrency() counts every CPU of the machine.
    const size_t threads = size_t(std::max(omp_get_max_threads(), 1));
    return int(std::max<size_t>(threads / std::max<size_t>(teams, 1), 1));
}

bool stage_elements(const void* src, DType src_type, void* dst, DType dst_type, int64_t count) {
    constexpr int64_t kBlock = 1 << 16; // elements per task: 256 KiB of fp32
    const int64_t blocks = (count + kBlock - 1) / kBlock;
    const int threads = team_size();
    if (src_type == dst_type) {
        const size_t es = dtype_size(src_type);
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t i0 = b * kBlock, i1 = std::min(count, i0 + kBlock);
            std::memcpy(static_cast<char*>(dst) + i0 * es, static_cast<const char*>(src) + i0 * es, (i1 - i0) * es);
        }
        return true;
    }
    if (src_type != DType::F32 || (dst_type != DType::F16 && dst_type != DType::BF16)) // (not thrown inside omp)
        throw std::invalid_argument("faiss-flash: host points convert only from F32 to F16 or BF16");
    const float* s = static_cast<const float*>(src);
    uint16_t* h = static_cast<uint16_t*>(dst);
    int overflow = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : overflow)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t i0 = b * kBlock, i1 = std::min(count, i0 + kBlock);
        overflow |= !cpu::narrow_floats(s + i0, h + i0, i1 - i0, dst_type);
    }
    return overflow == 0;
}

} // namespace flash::cuda_engine
