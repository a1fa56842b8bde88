// Checked CUDA calls and device buffers that free themselves (no leak on exceptions).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
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

/// Whether environment variable `name` switches a default-on path off (set to "0").
inline bool env_switched_off(const char* name) {
    const char* v = std::getenv(name);
    return v && std::string(v) == "0";
}

/// Whether environment variable `name` switches an opt-in path on (set to "1").
inline bool env_switched_on(const char* name) {
    const char* v = std::getenv(name);
    return v && std::string(v) == "1";
}

/// Streaming multiprocessors of the current device.
inline int current_device_sms() {
    int dev = 0, sms = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    FLASH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
}

/// Raises a kernel's dynamic shared-memory limit on the current device to at least `bytes`;
/// the driver is called only when the limit set so far for (kernel, device) is lower. The
/// attribute is per device, so a process that launches on several GPUs sets it on each.
inline void set_max_dynamic_smem(const void* kernel, size_t bytes) {
    static std::mutex mu;
    static std::map<std::pair<const void*, int>, size_t> set_so_far;
    int dev = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(mu);
    size_t& limit = set_so_far[{kernel, dev}];
    if (bytes <= limit) return;
    FLASH_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    limit = bytes;
}

/// This process's memory pool on `device` (created on first use, kept for the process): it
/// keeps up to FLASH_CUDA_POOL_KEEP_MB (default 1024) MiB of freed memory for the next
/// allocations instead of handing it back to the driver.
inline cudaMemPool_t device_pool(int device) {
    static std::mutex mu;
    static std::map<int, cudaMemPool_t> pools;
    std::lock_guard<std::mutex> lock(mu);
    auto it = pools.find(device);
    if (it != pools.end()) return it->second;
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    FLASH_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    const char* env = std::getenv("FLASH_CUDA_POOL_KEEP_MB");
    uint64_t keep = uint64_t(env ? std::strtoull(env, nullptr, 10) : 1024) << 20;
    FLASH_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools.emplace(device, pool);
    return pool;
}

/// The stream that DeviceBuffers allocated on this thread take their memory on (null: plain
/// cudaMalloc / cudaFree). Set for a scope by StreamAllocations.
inline thread_local cudaStream_t t_allocation_stream = nullptr;

/// Within this scope, DeviceBuffers on this thread are allocated from the current device's
/// pool in the order of `stream` and freed in its order: nothing waits for the device, and a
/// call repeated with the same shapes gets its memory back from the pool (no driver calls).
/// The stream must outlive the buffers, and only work ordered after the allocation on that
/// stream may use them.
class StreamAllocations {
  public:
    explicit StreamAllocations(cudaStream_t s) : saved_(t_allocation_stream) { t_allocation_stream = s; }
    ~StreamAllocations() { t_allocation_stream = saved_; }
    StreamAllocations(const StreamAllocations&) = delete;
    StreamAllocations& operator=(const StreamAllocations&) = delete;

  private:
    cudaStream_t saved_;
};

/// A device array of T, freed on destruction (in stream order inside a StreamAllocations
/// scope, else cudaMalloc / cudaFree). Allocation failure throws a clear out-of-memory error
/// naming the buffer.
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
        cudaError_t e;
        if (t_allocation_stream) {
            int dev = 0;
            FLASH_CUDA_CHECK(cudaGetDevice(&dev));
            stream_ = t_allocation_stream;
            e = cudaMallocFromPoolAsync(reinterpret_cast<void**>(&ptr_), count * sizeof(T), device_pool(dev), stream_);
        } else {
            e = cudaMalloc(&ptr_, count * sizeof(T));
        }
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
        if (ptr_ && stream_)
            cudaFreeAsync(ptr_, stream_);
        else if (ptr_)
            cudaFree(ptr_);
        ptr_ = nullptr;
        stream_ = nullptr;
        count_ = 0;
    }
    T* get() const { return ptr_; }
    size_t size() const { return count_; }

  private:
    T* ptr_ = nullptr;
    cudaStream_t stream_ = nullptr; // set: allocated in this stream's order from the pool
    size_t count_ = 0;
};

} // namespace flash::cuda_engine
