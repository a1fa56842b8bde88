// CUDA engine entry points for builds without CUDA: no device, and a clear error.
#include <stdexcept>

#include "kernels/cuda/cuda_engine.h"

namespace flash::cuda_engine {

int device_count() { return 0; }

std::vector<std::vector<IterationStats>> run_lloyd(const Points&, float*, const LloydOptions&) {
    throw std::runtime_error("faiss-flash was built without CUDA (configure with -DFLASH_CUDA=ON)");
}

void assign_nearest(const Points&, const float*, int64_t, Metric, int64_t*, float*, int) {
    throw std::runtime_error("faiss-flash was built without CUDA (configure with -DFLASH_CUDA=ON)");
}

} // namespace flash::cuda_engine
