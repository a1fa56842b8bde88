// API layer of the engine: validate, pick the backend, hand over.
#include <stdexcept>
#include <string>

#include "kernels/cpu/assign_cpu.h"
#include "kernels/cpu/lloyd_cpu.h"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/flash_kmeans.h"
#include "kernels/lloyd_common.h"

namespace flash {

bool cuda_available() { return cuda_engine::device_count() > 0; }

const char* backend_name(Backend b) {
    switch (b) {
        case Backend::Auto: return "auto";
        case Backend::CPU: return "cpu";
        case Backend::CUDA: return "cuda";
    }
    return "unknown";
}

Backend resolve_backend(Backend requested, const Points& x) {
    if (x.device >= 0) {
        if (requested == Backend::CPU)
            throw std::invalid_argument("faiss-flash: the CPU engine needs host data, but the points are on CUDA device " +
                                        std::to_string(x.device));
        if (!cuda_available())
            throw std::invalid_argument("faiss-flash: points are on a CUDA device but no CUDA engine/device is available");
        return Backend::CUDA;
    }
    if (requested == Backend::Auto) return cuda_available() ? Backend::CUDA : Backend::CPU;
    if (requested == Backend::CUDA && !cuda_available())
        throw std::runtime_error("faiss-flash: the CUDA engine was requested but no CUDA device is available"
                                 " (or this build has no CUDA)");
    return requested;
}

std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt) {
    validate_problem(x, centroids, opt.k, opt.niter, opt.k_frozen);
    const Backend backend = resolve_backend(opt.backend, x);
    if (x.device < 0) check_finite_host(x);
    if (backend == Backend::CUDA) return cuda_engine::run_lloyd(x, centroids, opt);
    return cpu::run_lloyd(x, centroids, opt);
}

void assign_nearest(const Points& x, const float* centroids, int64_t k, Metric metric, int64_t* labels,
                    float* distances, Backend backend, int cuda_device) {
    validate_problem(x, centroids, k, 0, 0, /*require_n_ge_k=*/false);
    const Backend resolved = resolve_backend(backend, x);
    if (x.device < 0) check_finite_host(x);
    if (resolved == Backend::CUDA) {
        cuda_engine::assign_nearest(x, centroids, k, metric, labels, distances, cuda_device);
        return;
    }
    const size_t row_bytes = dtype_size(x.dtype) * x.d;
    for (int64_t b = 0; b < x.batch; b++)
        cpu::assign_blocked(static_cast<const char*>(x.data) + size_t(b) * x.n * row_bytes, x.dtype, x.n, x.d,
                            centroids + size_t(b) * k * x.d, k, metric, labels ? labels + b * x.n : nullptr,
                            distances ? distances + b * x.n : nullptr);
}

} // namespace flash
