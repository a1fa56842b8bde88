// Programmatic dependent launch (sm_90): a kernel of the iteration's chain is launched while
// the one before it still runs; its blocks become resident, wait at pdl_wait() until the
// previous grid has completed and its writes are visible, and then start without the launch
// gap between two dependent kernels (launched one by one, 3-4 us per small iteration on an H100;
// inside a captured graph, whose kernel boundaries cost well under a microsecond, within 1 us:
// bench/RESULTS.md run 28). A kernel launched with launch_dependent must
// call pdl_wait() before its first access to memory another kernel writes or reads; a kernel
// that calls pdl_trigger() lets its dependents launch once all its blocks have started (without
// it they launch when it ends). Both are no-ops where there is no such dependency.
// FLASH_PDL=0 launches the same kernels plainly (to time the two).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/check.cuh"

namespace flash::cuda_engine {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The start of every kernel launched with launch_dependent: wait for the kernel before it, then
// let the one after it launch (at most two grids of the chain resident at once).
__device__ __forceinline__ void pdl_start() {
    pdl_wait();
    pdl_trigger();
}

// Read at every launch (a getenv per launch: cheap beside it), so tests can switch it.
inline bool pdl_enabled() {
    return !env_switched_off("FLASH_PDL");
}

/// kernel<<<grid, block, smem, stream>>>(args...), allowed to start before the previous work on
/// the stream has finished (see above: the kernel waits in pdl_wait()).
template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl_enabled() ? 1 : 0;
    FLASH_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

} // namespace flash::cuda_engine
