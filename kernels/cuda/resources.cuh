// RAII device resources shared by the CUDA engine's drivers: the current device for a
// scope, pinned host buffers, streams, events, staged host-to-device copies, captured graphs,
// and the buffers of the tensor-core fp32 path.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/device_ops.cuh"
#include "kernels/cuda/host_staging.h"
#include "kernels/lloyd_common.h"

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
        if (device != previous_) {
            FLASH_CUDA_CHECK(cudaSetDevice(device));
            changed_ = true;
        }
    }
    // Only where it changed it (setting device 0 back in a fresh thread would create a context
    // there); a failure here is not left behind for the next launch check to misreport.
    ~DeviceScope() {
        if (changed_ && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
    }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

  private:
    int previous_ = 0;
    bool changed_ = false;
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

// Host-to-device copies through a ring of pinned buffers (allocated on first use): every thread
// fills the next buffer (a plain copy, or fp32 -> fp16 / bf16) while the DMA engine sends the
// ones before it. Waits for its copies before its buffers are freed. Create it on the device
// whose streams it will serve (its events belong there).
class StagedCopier {
  public:
    StagedCopier(int slots, size_t slot_bytes)
        : buf_(new PinnedBuffer[slots]), sent_(size_t(slots)), slots_(slots), slot_bytes_(slot_bytes) {}
    ~StagedCopier() {
        for (int i = 0; i < slots_; i++) cudaEventSynchronize(sent_[i]);
    }
    StagedCopier(const StagedCopier&) = delete;
    StagedCopier& operator=(const StagedCopier&) = delete;

    /// Queues count elements of src (src_type) into dst as dst_type on stream s. False, with
    /// nothing more queued, when a converted value overflowed the destination type.
    bool copy(void* dst, const void* src, DType src_type, DType dst_type, int64_t count, cudaStream_t s) {
        if (!buf_[0].get())
            for (int i = 0; i < slots_; i++) buf_[i].allocate(slot_bytes_, "staging buffer");
        const size_t es = dtype_size(dst_type), ein = dtype_size(src_type);
        const int64_t per = int64_t(slot_bytes_ / es);
        for (int64_t e0 = 0; e0 < count; e0 += per) {
            const int64_t e = std::min(per, count - e0);
            const int slot = int(next_++ % uint64_t(slots_));
            FLASH_CUDA_CHECK(cudaEventSynchronize(sent_[slot])); // its previous copy is done
            if (!stage_elements(static_cast<const char*>(src) + size_t(e0) * ein, src_type, buf_[slot].get(), dst_type,
                                e))
                return false;
            FLASH_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + size_t(e0) * es, buf_[slot].get(),
                                             size_t(e) * es, cudaMemcpyHostToDevice, s));
            FLASH_CUDA_CHECK(cudaEventRecord(sent_[slot], s));
        }
        return true;
    }

  private:
    std::unique_ptr<PinnedBuffer[]> buf_;
    Events sent_;
    int slots_;
    size_t slot_bytes_;
    uint64_t next_ = 0;
};

// A stream's work captured once (cudaStreamBeginCapture) and replayed with one launch.
// capture() returns false, leaving the stream usable and nothing captured, when the work
// cannot be captured; the caller then runs it directly.
class CapturedGraph {
  public:
    CapturedGraph() = default;
    ~CapturedGraph() {
        if (exec_) cudaGraphExecDestroy(exec_);
        if (graph_) cudaGraphDestroy(graph_);
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
        ok = cudaStreamEndCapture(s, &graph_) == cudaSuccess && ok && graph_;
        if (ok) ok = cudaGraphInstantiate(&exec_, graph_, 0) == cudaSuccess;
        if (ok) { // the event record node, if the work recorded one (cudaEventRecordExternal; at most one)
            size_t count = 0;
            ok = cudaGraphGetNodes(graph_, nullptr, &count) == cudaSuccess;
            std::vector<cudaGraphNode_t> nodes(count);
            if (ok && count) ok = cudaGraphGetNodes(graph_, nodes.data(), &count) == cudaSuccess;
            for (size_t i = 0; ok && i < count; i++) {
                cudaGraphNodeType type{};
                ok = cudaGraphNodeGetType(nodes[i], &type) == cudaSuccess;
                if (ok && type == cudaGraphNodeTypeEventRecord) record_ = nodes[i];
            }
        }
        if (!ok) {
            if (exec_) cudaGraphExecDestroy(exec_);
            if (graph_) cudaGraphDestroy(graph_);
            exec_ = nullptr, graph_ = nullptr, record_ = nullptr;
            (void)cudaGetLastError();
        }
        return ok;
    }
    /// The event the next launch records at the captured work's event record node (it must
    /// have one).
    void set_recorded_event(cudaEvent_t e) {
        if (!record_) throw std::logic_error("faiss-flash: the captured work records no event");
        FLASH_CUDA_CHECK(cudaGraphExecEventRecordNodeSetEvent(exec_, record_, e));
    }
    void launch(cudaStream_t s) { FLASH_CUDA_CHECK(cudaGraphLaunch(exec_, s)); }

  private:
    cudaGraph_t graph_ = nullptr; // kept: record_ belongs to it
    cudaGraphExec_t exec_ = nullptr;
    cudaGraphNode_t record_ = nullptr;
};

/// Whether the exact fp32 path runs the filter (AssignArgs::candidates): yes unless
/// FLASH_EXACT_FILTER=0 (then the three split products, kept for comparison).
inline bool exact_filter_enabled() {
    return !env_switched_off("FLASH_EXACT_FILTER");
}

// The exact fp32 path's lists for one assignment of `problems` problems and `points` points in
// all: the re-check's (count per problem, list and merged keys per point, the keys all ones
// between launches) and, with the filter, the points' rounding residuals, the centroids' bound
// (cres_problems entries) and the candidate slots. Shared by SplitFp32 and the sharded pieces.
struct ExactLists {
    DeviceBuffer<uint32_t> count, list, candidates;
    DeviceBuffer<unsigned long long> best;
    DeviceBuffer<float> xres, cres;

    void allocate(int64_t problems, int64_t points, int64_t cres_problems, cudaStream_t s) {
        count.allocate(problems, "re-check counts");
        list.allocate(points, "re-check lists");
        best.allocate(points, "re-check keys");
        FLASH_CUDA_CHECK(cudaMemsetAsync(best.get(), 0xFF, sizeof(unsigned long long) * points, s));
        if (exact_filter_enabled()) {
            xres.allocate(points, "point rounding residuals");
            cres.allocate(cres_problems, "centroid rounding residual bound");
            candidates.allocate(size_t(points) * kCandidateSlots, "candidate lists");
            // Zeroed once: resolve_candidates reads a point's count and first index in one load,
            // and a re-checked point's (count ~0u) first index is never written.
            FLASH_CUDA_CHECK(
                cudaMemsetAsync(candidates.get(), 0, sizeof(uint32_t) * size_t(points) * kCandidateSlots, s));
        }
    }
    // The lists into `a`; its centroids' bound at cres[problem].
    void attach(AssignArgs& a, int64_t problem = 0) const {
        a.recheck_count = count.get();
        a.recheck_list = list.get();
        a.recheck_best = best.get();
        if (candidates.get()) {
            a.xres = xres.get();
            a.cres = cres.get() + problem;
            a.candidates = candidates.get();
        }
    }
};

// Buffers of the exact tensor-core fp32 path (AssignArgs::xsplit): the points split once (with
// their rounding residuals), the centroids split before each assignment, and the certificate's
// lists (the filter's and the re-check's). Left empty (and `a` untouched) where the path does
// not apply.
struct SplitFp32 {
    DeviceBuffer<unsigned char> xs, cs;
    DeviceBuffer<float> xmax, cmax;
    ExactLists lists;
    int64_t width = 0;

    SplitFp32(AssignArgs& a, cudaStream_t s) {
        if (a.dtype != DType::F32 || a.half_view || !wgmma_supported(a)) return;
        width = split_fp32_width(a.d);
        xs.allocate(size_t(a.batch) * a.n * 2 * width * 2, "split points");
        cs.allocate(size_t(a.batch) * a.k * 2 * width * 2, "split centroids");
        xmax.allocate(a.batch, "largest point magnitude");
        cmax.allocate(a.batch, "centroid norm bound");
        lists.allocate(a.batch, a.batch * a.n, a.batch, s);
        const float* x = static_cast<const float*>(a.x);
        launch_max_abs(x, a.batch, a.n * a.d, xmax.get(), s);
        launch_split_fp32(x, a.batch, a.n, a.d, width, xmax.get(), xs.get(), lists.xres.get(), nullptr, s);
        lists.attach(a);
        a.xsplit = xs.get();
        a.csplit = cs.get();
        a.dsplit = width;
        a.xmax = xmax.get();
        a.cmax = cmax.get();
    }
    // After the centroids' norms (a.cnorm) are prepared: their largest norm bounds every value,
    // so it sets the centroids' split scale (and the certificate's bound).
    void prepare(const AssignArgs& a, const float* centroids, cudaStream_t s) {
        if (!width) return;
        launch_max_norm(a.cnorm, a.batch, a.k, cmax.get(), s);
        launch_split_fp32(centroids, a.batch, a.k, a.d, width, cmax.get(), cs.get(), nullptr, lists.cres.get(), s);
    }
};

// Fp32Mode::TF32: the points and centroids as fp16 copies scaled by a power of two per problem
// (split_scale.cuh: 11-bit significands, TF32's, with the range handled by the scale), assigned
// by the fp16 kernels in the fp32 problem's place (AssignArgs::half_view). The penalties are the
// fp32 norms scaled by the same factor as the products, so the argmin is that of
// ||c||^2 - 2 x.c on the rounded values, at fp16 tensor-core speed (one product where the exact
// mode runs three); the reported distances are recomputed in fp32 afterwards.
/// The fp16 stand-in for fp32 problem(s) a: the scaled copies xh (points) and ch (centroids)
/// and the penalties cn scaled alike, in place of a's own (labels and distances are a's).
inline AssignArgs half_view_of(const AssignArgs& a, const void* xh, const void* ch, const float* cn) {
    AssignArgs v = a;
    v.dtype = DType::F16;
    v.x = xh;
    v.centroids = ch;
    v.cnorm = cn;
    return v;
}

struct HalfFp32 {
    DeviceBuffer<unsigned char> xh, ch;
    DeviceBuffer<float> xmax, cmax, cn;
    AssignArgs view;

    HalfFp32(AssignArgs& a, bool enabled, cudaStream_t s) {
        if (!enabled || a.dtype != DType::F32) return;
        xh.allocate(size_t(a.batch) * a.n * a.d * 2, "fp16 points (TF32 mode)");
        ch.allocate(size_t(a.batch) * a.k * a.d * 2, "fp16 centroids (TF32 mode)");
        xmax.allocate(a.batch, "largest point magnitude");
        cmax.allocate(a.batch, "centroid norm bound");
        cn.allocate(size_t(a.batch) * a.k, "scaled centroid norms");
        const float* x = static_cast<const float*>(a.x);
        launch_max_abs(x, a.batch, a.n * a.d, xmax.get(), s);
        launch_scale_to_half(x, a.batch, a.n, a.d, xmax.get(), xh.get(), s);
        view = half_view_of(a, xh.get(), ch.get(), cn.get());
        a.half_view = &view;
    }
    // After the centroids' fp32 norms (a.cnorm) are prepared.
    void prepare(const AssignArgs& a, const float* centroids, cudaStream_t s) {
        if (!xh.get()) return; // not TF32 mode
        launch_max_norm(a.cnorm, a.batch, a.k, cmax.get(), s);
        launch_scale_to_half(centroids, a.batch, a.k, a.d, cmax.get(), ch.get(), s);
        launch_scaled_norms(a.cnorm, a.batch, a.k, xmax.get(), cmax.get(), cn.get(), s);
    }
};

} // namespace flash::cuda_engine
