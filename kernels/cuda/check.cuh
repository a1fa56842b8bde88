// Checked CUDA calls and device buffers that free themselves (no leak on exceptions).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace flash::cuda_engine {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
    std::string msg = std::string("faiss-flash CUDA error: ") + cudaGetErrorString(e) + " in " + what + " at " + file +
                      ":" + std::to_string(line);
    if (e == cudaErrorMemoryAllocation) msg = "faiss-flash: out of GPU memory (" + msg + ")";
    throw std::runtime_error(msg);
}

#define FLASH_CUDA_CHECK(call)                                                          \
    do {                                                                                \
        cudaError_t flash_err_ = (call);                                                \
        if (flash_err_ != cudaSuccess) ::flash::cuda_engine::throw_cuda(flash_err_, #call, __FILE__, __LINE__); \
    } while (0)

// After every launch; FLASH_CUDA_DEBUG_SYNC=1 at compile time also synchronises.
#ifdef FLASH_CUDA_DEBUG_SYNC
#define FLASH_LAUNCH_CHECK(what)                     \
    do {                                             \
        FLASH_CUDA_CHECK(cudaGetLastError());        \
        FLASH_CUDA_CHECK(cudaDeviceSynchronize());   \
    } while (0)
#else
#define FLASH_LAUNCH_CHECK(what) FLASH_CUDA_CHECK(cudaGetLastError())
#endif

/// Raises a kernel's dynamic shared-memory limit on the current device, once per (kernel,
/// device): the attribute is per device, so a process that launches on several GPUs must
/// set it on each of them.
inline void set_max_dynamic_smem(const void* kernel, size_t bytes) {
    static std::mutex mu;
    static std::set<std::pair<const void*, int>> done;
    int dev = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(mu);
    if (done.count({kernel, dev})) return;
    FLASH_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    done.insert({kernel, dev});
}

/// A cudaMalloc'ed array of T, freed on destruction. Allocation failure throws a clear
/// out-of-memory error naming the buffer.
template <class T>
class DeviceBuffer {
  public:
    DeviceBuffer() = default;
    DeviceBuffer(size_t count, const char* name) { allocate(count, name); }
    ~DeviceBuffer() { release(); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void allocate(size_t count, const char* name) {
        release();
        if (count == 0) return;
        cudaError_t e = cudaMalloc(&ptr_, count * sizeof(T));
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            ptr_ = nullptr;
            throw std::runtime_error("faiss-flash: out of GPU memory: cannot allocate " +
                                     std::to_string(count * sizeof(T)) + " bytes for " + name + " (" +
                                     cudaGetErrorString(e) + ")");
        }
        count_ = count;
    }
    void release() {
        if (ptr_) cudaFree(ptr_);
        ptr_ = nullptr;
        count_ = 0;
    }
    T* get() const { return ptr_; }
    size_t size() const { return count_; }

  private:
    T* ptr_ = nullptr;
    size_t count_ = 0;
};

} // namespace flash::cuda_engine
