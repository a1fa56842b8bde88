// RAII device resources shared by the CUDA engine's drivers: the current device for a
// scope, pinned host buffers, streams, events, and the buffers of the tensor-core fp32 path.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/device_ops.cuh"

namespace flash::cuda_engine {

// Host wall-clock marks of a call's setup steps (FLASH_CUDA_CALL_TIMES=1 or
// FLASH_CUDA_PHASE_TIMES=1), printed to stderr as "name +ms" on destruction; does nothing when
// disabled.
class HostClock {
  public:
    explicit HostClock(bool on) : on_(on), last_(std::chrono::steady_clock::now()) {}
    ~HostClock() { // declared first in a call: "release" times the other locals' destructors
        mark("release");
        if (on_ && !line_.empty()) std::fprintf(stderr, "faiss-flash call (ms):%s\n", line_.c_str());
    }
    HostClock(const HostClock&) = delete;
    HostClock& operator=(const HostClock&) = delete;
    void mark(const char* name) {
        if (!on_) return;
        const auto now = std::chrono::steady_clock::now();
        char buf[64];
        std::snprintf(buf, sizeof(buf), " %s +%.3f", name,
                      std::chrono::duration<double, std::milli>(now - last_).count());
        line_ += buf;
        last_ = now;
    }

  private:
    bool on_;
    std::chrono::steady_clock::time_point last_;
    std::string line_;
};

// Makes `device` current for the scope, restoring the caller's device afterwards.
class DeviceScope {
  public:
    explicit DeviceScope(int device) {
        FLASH_CUDA_CHECK(cudaGetDevice(&previous_));
        FLASH_CUDA_CHECK(cudaSetDevice(device));
    }
    ~DeviceScope() { cudaSetDevice(previous_); }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

  private:
    int previous_ = 0;
};

// Pinned host memory, freed on destruction.
class PinnedBuffer {
  public:
    PinnedBuffer() = default;
    ~PinnedBuffer() {
        if (ptr_) cudaFreeHost(ptr_);
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
    void allocate(size_t bytes, const char* name) {
        if (cudaHostAlloc(&ptr_, bytes, cudaHostAllocPortable) != cudaSuccess) {
            (void)cudaGetLastError();
            ptr_ = nullptr;
            throw std::runtime_error("faiss-flash: cannot allocate " + std::to_string(bytes) +
                                     " bytes of pinned host memory for " + name);
        }
    }
    void* get() const { return ptr_; }

  private:
    void* ptr_ = nullptr;
};

class Stream {
  public:
    Stream() { FLASH_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
    ~Stream() { cudaStreamDestroy(s_); }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    cudaStream_t get() const { return s_; }

  private:
    cudaStream_t s_ = nullptr;
};

class Events {
  public:
    explicit Events(size_t count) : ev_(count, nullptr) {
        for (auto& e : ev_) FLASH_CUDA_CHECK(cudaEventCreate(&e));
    }
    ~Events() {
        for (auto e : ev_)
            if (e) cudaEventDestroy(e);
    }
    Events(const Events&) = delete;
    Events& operator=(const Events&) = delete;
    cudaEvent_t operator[](size_t i) const { return ev_[i]; }
    double seconds(size_t from, size_t to) const {
        float ms = 0;
        FLASH_CUDA_CHECK(cudaEventElapsedTime(&ms, ev_[from], ev_[to]));
        return ms / 1000.0;
    }

  private:
    std::vector<cudaEvent_t> ev_;
};

// A stream's work captured once (cudaStreamBeginCapture) and replayed with one launch.
// capture() returns false, leaving the stream usable and nothing captured, when the work
// cannot be captured; the caller then runs it directly.
class CapturedGraph {
  public:
    CapturedGraph() = default;
    ~CapturedGraph() {
        if (exec_) cudaGraphExecDestroy(exec_);
    }
    CapturedGraph(const CapturedGraph&) = delete;
    CapturedGraph& operator=(const CapturedGraph&) = delete;

    template <class F>
    bool capture(cudaStream_t s, F&& work) {
        if (cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        bool ok = true;
        try {
            work();
        } catch (const std::exception&) {
            ok = false;
        }
        cudaGraph_t graph = nullptr;
        ok = cudaStreamEndCapture(s, &graph) == cudaSuccess && ok && graph;
        if (ok) ok = cudaGraphInstantiate(&exec_, graph, 0) == cudaSuccess;
        if (graph) cudaGraphDestroy(graph);
        if (!ok) {
            exec_ = nullptr;
            (void)cudaGetLastError();
        }
        return ok;
    }
    void launch(cudaStream_t s) { FLASH_CUDA_CHECK(cudaGraphLaunch(exec_, s)); }

  private:
    cudaGraphExec_t exec_ = nullptr;
};

// Buffers of the tensor-core fp32 path (AssignArgs::xsplit): the points split once, the
// centroids split before each assignment, and the certificate's re-check lists. Left empty
// (and `a` untouched) where the path does not apply.
struct SplitFp32 {
    DeviceBuffer<unsigned char> xs, cs;
    DeviceBuffer<float> cmax;
    DeviceBuffer<uint32_t> count, list;
    int64_t width = 0;

    SplitFp32(AssignArgs& a, bool recheck, cudaStream_t s) {
        if (a.dtype != DType::F32 || !wgmma_supported(a)) return;
        width = split_fp32_width(a.d);
        xs.allocate(size_t(a.batch) * a.n * 2 * width * 2, "split points");
        cs.allocate(size_t(a.batch) * a.k * 2 * width * 2, "split centroids");
        launch_split_fp32(static_cast<const float*>(a.x), a.batch * a.n, a.d, width, xs.get(), s);
        a.xsplit = xs.get();
        a.csplit = cs.get();
        a.dsplit = width;
        if (recheck) {
            cmax.allocate(a.batch, "centroid norm bound");
            count.allocate(a.batch, "re-check counts");
            list.allocate(size_t(a.batch) * a.n, "re-check lists");
            a.cmax = cmax.get();
            a.recheck_count = count.get();
            a.recheck_list = list.get();
        }
    }
    // After launch_prepare_centroids (which wrote a.cnorm).
    void prepare(const AssignArgs& a, const float* centroids, cudaStream_t s) {
        if (!width) return;
        launch_split_fp32(centroids, a.batch * a.k, a.d, width, cs.get(), s);
        if (a.cmax) launch_max_norm(a.cnorm, a.batch, a.k, cmax.get(), s);
    }
};

} // namespace flash::cuda_engine
