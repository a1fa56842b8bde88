// CUDA engine entry points for builds without CUDA: no device, and a clear error.
#include <stdexcept>

#include "kernels/cuda/cuda_engine.h"

namespace flash::cuda_engine {

int device_count() { return 0; }

bool fits_in_memory(const Points&, int64_t, int, bool) {
    return true;
}

std::vector<std::vector<IterationStats>> run_lloyd(const Points&, float*, const LloydOptions&, const CheckpointHook&) {
    throw std::runtime_error("faiss-flash was built without CUDA (configure with -DFLASH_CUDA=ON)");
}

void assign_nearest(const Points&, const float*, int64_t, Metric, int64_t*, float*, int) {
    throw std::runtime_error("faiss-flash was built without CUDA (configure with -DFLASH_CUDA=ON)");
}

struct PartialSums::Impl {};

PartialSums::PartialSums(const Points&, const LloydOptions&) {
    throw std::runtime_error("faiss-flash was built without CUDA (configure with -DFLASH_CUDA=ON)");
}
PartialSums::~PartialSums() = default;
void PartialSums::run(const float*, double*, double*, int64_t*, double*) {}
Placement PartialSums::placement() const { return {}; }

} // namespace flash::cuda_engine
