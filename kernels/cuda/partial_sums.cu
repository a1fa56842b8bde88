// PartialSums: one pass of a Lloyd iteration over host points sharded across GPUs and, where
// they do not fit, streamed from host memory (see cuda_engine.h).
//
// The points of each problem are cut into pieces of P rows. The pieces, problem-major, are
// dealt to the shards (one per entry of the device list) in contiguous runs. Each shard keeps
// as many of its pieces resident as its memory budget allows, the others spread evenly among
// them, and streams those through kSlots device buffers on a copy stream: their copies overlap
// the compute of the pieces before them. Per piece, on the compute stream: norms (cached for
// resident pieces), FlashAssign, the sort-inverse segment sums added to the shard's double
// accumulators, the piece's objective. The layout of the pieces does not depend on the memory
// available, so a run that streams gives the same bits as one that keeps everything resident.
// Device memory is taken in the order that lets a shortfall degrade to streaming: the buffers of
// fixed size first (the stream buffers among them, where the plan streams), the resident pieces
// last, with what is left.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/cuda/device_ops.cuh"
#include "kernels/cuda/host_staging.h"
#include "kernels/cuda/resources.cuh"
#include "kernels/cuda/update.cuh"
#include "kernels/lloyd_common.h"

namespace flash::cuda_engine {

namespace {

constexpr int kSlots = 3;                   // device buffers for streamed pieces
constexpr int kStaging = 4;                 // pinned host staging buffers per shard
constexpr size_t kStagingBytes = 32u << 20; // bytes per staging buffer

struct Piece {
    int64_t b = 0, row0 = 0, rows = 0; // problem, first row within it, row count
};

// "1.50 GiB", "12.3 MiB" or "4.0 KiB".
std::string format_bytes(size_t bytes) {
    char buf[32];
    if (bytes >= size_t(1) << 30)
        std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(1 << 30));
    else if (bytes >= size_t(1) << 20)
        std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
    else
        std::snprintf(buf, sizeof buf, "%.1f KiB", double(bytes) / double(1 << 10));
    return buf;
}

// One part of a shard's device memory as the planner estimates it, and what shrinks it.
struct MemoryPart {
    std::string name;
    size_t bytes;
    std::string remedy;
};

// "the largest part is NAME (BYTES: REMEDY), then NAME BYTES, ...": the parts largest first,
// empty ones left out, so that an out-of-memory error names what to shrink.
std::string describe_parts(std::vector<MemoryPart> parts) {
    std::stable_sort(parts.begin(), parts.end(),
                     [](const MemoryPart& a, const MemoryPart& b) { return a.bytes > b.bytes; });
    std::string s =
        "the largest part is " + parts[0].name + " (" + format_bytes(parts[0].bytes) + ": " + parts[0].remedy + ")";
    for (size_t i = 1; i < parts.size() && parts[i].bytes > 0; i++)
        s += (i == 1 ? ", then " : ", ") + parts[i].name + " " + format_bytes(parts[i].bytes);
    return s;
}

// Pins a range of the caller's pageable memory (whole pages) while alive; ok() is false when
// the driver refused (the run then stages its copies instead).
class HostRegistration {
  public:
    HostRegistration(const void* p, size_t bytes) {
        const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
        const uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
        const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes + page - 1) & ~(page - 1);
        if (cudaHostRegister(reinterpret_cast<void*>(a), e - a, cudaHostRegisterPortable) == cudaSuccess)
            ptr_ = reinterpret_cast<void*>(a);
        else
            (void)cudaGetLastError();
    }
    ~HostRegistration() {
        if (ptr_) cudaHostUnregister(ptr_);
    }
    HostRegistration(const HostRegistration&) = delete;
    HostRegistration& operator=(const HostRegistration&) = delete;
    bool ok() const { return ptr_ != nullptr; }

  private:
    void* ptr_ = nullptr;
};

// The first number in file `path` (false if none: no such file, or "max").
bool read_number(const char* path, unsigned long long& v) {
    FILE* f = std::fopen(path, "r");
    if (!f) return false;
    const bool ok = std::fscanf(f, "%llu", &v) == 1;
    std::fclose(f);
    return ok;
}

// Bytes of host memory this process may take for new allocations: MemAvailable of
// /proc/meminfo (else the free pages), within the memory cgroup's limit (v2, else v1) where one
// is set, shared by the ranks of an MPI job on this node (OMPI_COMM_WORLD_LOCAL_SIZE). Test only
// (tests/gpu/test_sharded.cpp): FLASH_TEST_HOST_MEMORY=bytes.
size_t host_memory_available() {
    if (const char* env = std::getenv("FLASH_TEST_HOST_MEMORY"); env && *env >= '0' && *env <= '9')
        return size_t(std::strtoull(env, nullptr, 10));
    unsigned long long avail = 0;
    bool known = false;
    if (FILE* f = std::fopen("/proc/meminfo", "r")) {
        char line[256];
        unsigned long long kb = 0;
        while (!known && std::fgets(line, sizeof line, f)) known = std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
        std::fclose(f);
        avail = kb * 1024;
    }
    if (!known) {
        const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        avail = pages > 0 && page > 0 ? (unsigned long long)pages * (unsigned long long)page : 0;
    }
    unsigned long long limit = 0, used = 0;
    if ((read_number("/sys/fs/cgroup/memory.max", limit) && read_number("/sys/fs/cgroup/memory.current", used)) ||
        (read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", limit) &&
         read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes", used)))
        avail = std::min(avail, limit > used ? limit - used : 0ull);
    if (const char* ranks = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE"); ranks && std::atoi(ranks) > 1)
        avail /= unsigned(std::atoi(ranks));
    return size_t(avail);
}

bool is_pinned(const void* p) {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeHost;
}

// Runs f(i) for i < count on one thread each (inline for one), rethrowing the first error.
template <class F>
void for_each_parallel(size_t count, F f) {
    if (count == 1) {
        f(size_t(0));
        return;
    }
    std::vector<std::exception_ptr> errors(count);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < count; i++)
        threads.emplace_back([&, i] {
            try {
                f(i);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// Bytes SortInverseUpdate allocates for one problem of `rows` points, plus slack.
size_t update_bytes(int64_t rows, int64_t k, int64_t d) {
    return SortInverseUpdate::bytes(1, rows, d, k) + (8u << 20);
}

// The pieces of one device list entry, its buffers and streams.
class Shard {
  public:
    // staging_threads: this shard's share of the host threads for staging copies.
    Shard(const Points& x, const LloydOptions& opt, DType tdt, int device, std::vector<Piece> pieces,
          int64_t piece_rows, size_t budget, int staging_threads)
        : x_(x),
          opt_(opt),
          t_(tdt),
          dev_(device),
          pieces_(std::move(pieces)),
          P_(piece_rows),
          budget_(budget),
          staging_threads_(staging_threads) {
        row_bytes_ = size_t(x.d) * dtype_size(t_);
        in_row_bytes_ = size_t(x.d) * dtype_size(x.dtype);
        flat0_ = pieces_.front().b * x.n + pieces_.front().row0;
        const Piece& last = pieces_.back();
        flat1_ = last.b * x.n + last.row0 + last.rows;
    }
    // Waits for the shard's work before its buffers go (a run that threw may leave copies and
    // kernels queued that read them or the registered host rows); errors are not reported twice.
    ~Shard() {
        int previous = 0;
        if (cudaGetDevice(&previous) != cudaSuccess || cudaSetDevice(dev_) != cudaSuccess) previous = -1;
        for (Stream* st : {compute_.get(), copy_.get()})
            if (st) (void)cudaStreamSynchronize(st->get());
        if (previous >= 0) (void)cudaSetDevice(previous);
        (void)cudaGetLastError();
    }
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;

    const std::vector<Piece>& pieces() const { return pieces_; }
    int device() const { return dev_; }
    bool resident(size_t i) const { return data_[i] != nullptr; }
    void set_direct(bool direct) { direct_ = direct; }
    const char* host_rows(const Piece& p) const {
        return static_cast<const char*>(x_.data) + size_t(p.b * x_.n + p.row0) * in_row_bytes_;
    }

    // Allocates every buffer, decides which pieces stay resident and uploads them.
    void setup() {
        DeviceScope scope(dev_);
        StagingTeamCap team(staging_threads_);
        compute_ = std::make_unique<Stream>();
        copy_ = std::make_unique<Stream>();
        const int64_t B = x_.batch, k = opt_.k, d = x_.d;
        cudaStream_t s = compute_->get();

        // Per problem: centroids as computed with, accumulators. Per piece: scratch.
        cen_.allocate(B * k * d, "centroids");
        cnorm_.allocate(B * k, "centroid norms");
        if (t_ != DType::F32) lowp_.allocate(size_t(B * k * d) * 2, "rounded centroids");
        sums_.allocate(B * k * d, "cluster sums");
        wsums_.allocate(B * k, "cluster weights");
        counts_.allocate(B * k, "cluster sizes");
        obj_.allocate(pieces_.size(), "piece objectives");
        labels_.allocate(P_, "labels");
        dist_.allocate(P_, "distances");
        stats_ws_.allocate(stats_workspace_size(1, P_), "objective partial sums");
        FLASH_CUDA_CHECK(cudaMemsetAsync(stats_ws_.get(), 0, sizeof(double) * stats_ws_.size(), s));
        if (opt_.weights) weights_.allocate(flat1_ - flat0_, "weights");
        AssignArgs probe;
        probe.dtype = t_;
        probe.d = d;
        if (t_ == DType::F32 && opt_.fp32_mode == Fp32Mode::TF32) { // as HalfFp32 (resources.cuh), per piece
            half_ = true;
            xh_.allocate(size_t(P_) * d * 2, "fp16 points (TF32 mode)");
            ch_.allocate(size_t(B * k) * d * 2, "fp16 centroids (TF32 mode)");
            cn_.allocate(B * k, "scaled centroid norms");
            cmax_.allocate(B, "centroid norm bound");
            xmax_.allocate(1, "largest point magnitude");
        } else if (t_ == DType::F32 && wgmma_supported(probe)) {
            width_ = split_fp32_width(d);
            xs_.allocate(size_t(P_) * 4 * width_, "split points");
            cs_.allocate(size_t(B * k) * 4 * width_, "split centroids");
            cmax_.allocate(B, "centroid norm bound");
            xmax_.allocate(1, "largest point magnitude");
            lists_.allocate(1, P_, B, s); // per piece; the centroids' bound per problem
        }
        update_ = std::make_unique<SortInverseUpdate>(1, P_, d, k, s);
        host_sums_.allocate(size_t(B * k * d) * 8, "cluster sums (host)");
        host_wsums_.allocate(size_t(B * k) * 8, "cluster weights (host)");
        host_counts_.allocate(size_t(B * k) * 8, "cluster sizes (host)");
        host_obj_.allocate(pieces_.size() * 8, "piece objectives (host)");
        events_ = std::make_unique<Events>(4 * pieces_.size());
        slot_free_ = std::make_unique<Events>(kSlots);
        slot_ready_ = std::make_unique<Events>(kSlots);
        staging_ = std::make_unique<StagedCopier>(kStaging, kStagingBytes);

        // The planner's estimate of the device memory, by what each part grows with.
        const size_t fp32_cluster = width_ ? 4 * width_ + 4 : (half_ ? 2 * d + 8 : 0);
        const size_t fp32_row = width_ ? 4 * width_ + 16 + 4 * kCandidateSlots : (half_ ? 2 * d : 0);
        size_t all = 0; // every piece resident: rows and norms
        for (const auto& p : pieces_) all += piece_bytes(p);
        const MemoryPart clusters{
            "the per-cluster buffers",
            size_t(B * k) * (d * 4 + 4 + (t_ != DType::F32 ? d * 2 : 0) + d * 8 + 16 + fp32_cluster),
            "fewer clusters or problems per call; every shard holds them all"};
        const MemoryPart scratch{
            "the per-piece scratch",
            size_t(P_) * (12 + fp32_row) + size_t(stats_workspace_size(1, P_)) * 8 + update_bytes(P_, k, d),
            "a smaller stream_piece_rows"};
        const MemoryPart weights{"the point weights", opt_.weights ? size_t(flat1_ - flat0_) * 4 : 0,
                                 "more GPUs (cuda_devices)"};
        const size_t fixed = clusters.bytes + scratch.bytes + weights.bytes;
        const size_t slots = kSlots * size_t(P_) * row_bytes_ + size_t(P_) * 4; // stream buffers and their norms

        // Which pieces stay on the GPU (see flash::Streaming).
        std::vector<bool> keep(pieces_.size(), false);
        if (opt_.streaming == Streaming::Off || (opt_.streaming == Streaming::Auto && fixed + all <= budget_)) {
            if (opt_.streaming == Streaming::Off && fixed + all > budget_) {
                const MemoryPart points{"the points kept resident", all,
                                        "streaming them (Streaming::Auto) or more GPUs (cuda_devices)"};
                throw std::runtime_error("faiss-flash: out of GPU memory: with Streaming::Off this shard needs " +
                                         format_bytes(fixed + all) + " on CUDA device " + std::to_string(dev_) + ", " +
                                         format_bytes(budget_) + " is available to it; " +
                                         describe_parts({points, clusters, scratch, weights}) + "; a streaming run (" +
                                         format_bytes(fixed + slots) +
                                         (fixed + slots <= budget_ ? ") would fit" : ") would not fit either"));
            }
            std::fill(keep.begin(), keep.end(), true);
        } else if (opt_.streaming == Streaming::Auto) {
            if (fixed + slots > budget_) {
                const MemoryPart streams{"the stream buffers", slots, "a smaller stream_piece_rows"};
                throw std::runtime_error("faiss-flash: out of GPU memory: the buffers of a streaming run need " +
                                         format_bytes(fixed + slots) + " on CUDA device " + std::to_string(dev_) +
                                         ", " + format_bytes(budget_) + " is available to this shard; " +
                                         describe_parts({streams, clusters, scratch, weights}));
            }
            keep = spread_plan(budget_ - fixed - slots);
        }

        // The stream buffers before the resident pieces (a plan that streams nothing has none:
        // up to kSlots pieces' worth a resident run never uses). Where the estimate was
        // optimistic (or another process took memory since), a resident piece that cannot be
        // allocated makes a second plan within what the first one got: the resident pieces
        // are given back, the stream buffers allocated if the first plan had none, and the
        // pieces that fit in the rest kept, spread among the streamed ones as in the first
        // plan. Should that one fail too, the pieces from the failed one on are streamed. The
        // placement changes, the bits do not.
        const bool plan_streams = std::find(keep.begin(), keep.end(), false) != keep.end();
        const std::string stream_buffers = std::to_string(kSlots) + " stream buffers of " + std::to_string(P_) +
                                           " rows (stream_piece_rows) and their norms";
        if (plan_streams && !allocate_stream_buffers())
            throw_out_of_memory(stream_buffers, slots, "a smaller stream_piece_rows helps");
        data_.resize(pieces_.size());
        norms_.resize(pieces_.size());
        TestAllocationFailures test_failures;
        size_t got = 0; // bytes of the resident pieces allocated
        if (allocate_resident(keep, test_failures, got) < pieces_.size()) {
            for (size_t i = 0; i < pieces_.size(); i++) {
                data_[i].reset();
                norms_[i].reset();
            }
            if (!plan_streams) {
                if (!allocate_stream_buffers())
                    throw_out_of_memory(stream_buffers, slots, "a smaller stream_piece_rows helps");
                got = got > slots ? got - slots : 0;
            }
            const std::vector<bool> second = spread_plan(got);
            (void)allocate_resident(second, test_failures, got);
        }
        if (opt_.weights)
            FLASH_CUDA_CHECK(cudaMemcpyAsync(weights_.get(), opt_.weights + flat0_, sizeof(float) * (flat1_ - flat0_),
                                             cudaMemcpyHostToDevice, s));

        // Upload the resident pieces (through the staging buffers unless already pinned).
        direct_ = t_ == x_.dtype && is_pinned(x_.data);
        cudaStream_t cs = copy_->get();
        for (size_t i = 0; i < pieces_.size(); i++) {
            if (!resident(i)) continue;
            transfer(i, data_[i]->get());
            launch_row_norms(data_[i]->get(), t_, pieces_[i].rows, d, norms_[i]->get(), cs);
        }
        FLASH_CUDA_CHECK(cudaStreamSynchronize(cs));
        FLASH_CUDA_CHECK(cudaStreamSynchronize(s));
    }

    // One pass with the given (batch, k, d) host centroids; results in the host buffers.
    void run(const float* centroids) {
        DeviceScope scope(dev_);
        StagingTeamCap team(staging_threads_);
        const int64_t B = x_.batch, k = opt_.k, d = x_.d;
        cudaStream_t s = compute_->get(), cs = copy_->get();
        FLASH_CUDA_CHECK(cudaMemcpyAsync(cen_.get(), centroids, sizeof(float) * B * k * d, cudaMemcpyHostToDevice, s));
        launch_prepare_centroids(cen_.get(), B * k, d, t_, lowp_.get(), cnorm_.get(), s);
        if (width_ || half_) launch_max_norm(cnorm_.get(), B, k, cmax_.get(), s); // the centroids' scale
        if (width_)
            launch_split_fp32(cen_.get(), B, k, d, width_, cmax_.get(), cs_.get(), nullptr, lists_.cres.get(), s);
        if (half_) launch_scale_to_half(cen_.get(), B, k, d, cmax_.get(), ch_.get(), s);
        FLASH_CUDA_CHECK(cudaMemsetAsync(sums_.get(), 0, sizeof(double) * B * k * d, s));
        FLASH_CUDA_CHECK(cudaMemsetAsync(wsums_.get(), 0, sizeof(double) * B * k, s));
        FLASH_CUDA_CHECK(cudaMemsetAsync(counts_.get(), 0, sizeof(unsigned long long) * B * k, s));

        const Events& ev = *events_;
        int64_t streamed = 0;
        for (size_t i = 0; i < pieces_.size(); i++) {
            const Piece& p = pieces_[i];
            const void* data;
            const float* xnorm;
            int slot = -1;
            if (resident(i)) {
                FLASH_CUDA_CHECK(cudaEventRecord(ev[4 * i + 2], s));
                data = data_[i]->get();
                xnorm = norms_[i]->get();
            } else {
                slot = int(streamed++ % kSlots);
                FLASH_CUDA_CHECK(cudaStreamWaitEvent(cs, (*slot_free_)[slot], 0));
                FLASH_CUDA_CHECK(cudaEventRecord(ev[4 * i], cs));
                transfer(i, slot_data_[slot].get());
                FLASH_CUDA_CHECK(cudaEventRecord(ev[4 * i + 1], cs));
                FLASH_CUDA_CHECK(cudaEventRecord((*slot_ready_)[slot], cs));
                FLASH_CUDA_CHECK(cudaStreamWaitEvent(s, (*slot_ready_)[slot], 0));
                FLASH_CUDA_CHECK(cudaEventRecord(ev[4 * i + 2], s));
                data = slot_data_[slot].get();
                launch_row_norms(data, t_, p.rows, d, xnorm_tmp_.get(), s);
                xnorm = xnorm_tmp_.get();
            }
            AssignArgs a;
            a.x = data;
            a.centroids = t_ == DType::F32 ? static_cast<const void*>(cen_.get() + p.b * k * d)
                                           : static_cast<const void*>(lowp_.get() + size_t(p.b * k * d) * 2);
            a.cnorm = cnorm_.get() + p.b * k;
            a.xnorm = xnorm;
            a.dtype = t_;
            a.metric = opt_.metric;
            a.batch = 1;
            a.n = p.rows;
            a.d = d;
            a.k = k;
            a.labels = labels_.get();
            a.distances = dist_.get();
            if (width_) {
                launch_max_abs(static_cast<const float*>(data), 1, p.rows * d, xmax_.get(), s);
                launch_split_fp32(static_cast<const float*>(data), 1, p.rows, d, width_, xmax_.get(), xs_.get(),
                                  lists_.xres.get(), nullptr, s);
                a.xsplit = xs_.get();
                a.csplit = cs_.get() + size_t(p.b * k) * 4 * width_;
                a.dsplit = width_;
                a.xmax = xmax_.get();
                a.cmax = cmax_.get() + p.b;
                lists_.attach(a, p.b);
            }
            AssignArgs view; // TF32 mode: this piece as scaled fp16 (HalfFp32's view, per piece)
            if (half_) {
                const float* xf = static_cast<const float*>(data);
                launch_max_abs(xf, 1, p.rows * d, xmax_.get(), s);
                launch_scale_to_half(xf, 1, p.rows, d, xmax_.get(), xh_.get(), s);
                launch_scaled_norms(cnorm_.get() + p.b * k, 1, k, xmax_.get(), cmax_.get() + p.b, cn_.get(), s);
                view = half_view_of(a, xh_.get(), ch_.get() + size_t(p.b * k * d) * 2, cn_.get());
                a.half_view = &view;
            }
            if (variant_ < 0) variant_ = choose_assign_variant(a, s);
            launch_assign(a, variant_, s);
            const int64_t flat = p.b * x_.n + p.row0;
            update_->accumulate(data, t_, p.rows, labels_.get(),
                                opt_.weights ? weights_.get() + (flat - flat0_) : nullptr, sums_.get() + p.b * k * d,
                                wsums_.get() + p.b * k, counts_.get() + p.b * k, s);
            launch_objective(dist_.get(), 1, p.rows, stats_ws_.get(), obj_.get() + i, s);
            FLASH_CUDA_CHECK(cudaEventRecord(ev[4 * i + 3], s));
            if (slot >= 0) FLASH_CUDA_CHECK(cudaEventRecord((*slot_free_)[slot], s));
        }
        FLASH_CUDA_CHECK(
            cudaMemcpyAsync(host_sums_.get(), sums_.get(), sizeof(double) * B * k * d, cudaMemcpyDeviceToHost, s));
        FLASH_CUDA_CHECK(
            cudaMemcpyAsync(host_wsums_.get(), wsums_.get(), sizeof(double) * B * k, cudaMemcpyDeviceToHost, s));
        FLASH_CUDA_CHECK(cudaMemcpyAsync(host_counts_.get(), counts_.get(), sizeof(unsigned long long) * B * k,
                                         cudaMemcpyDeviceToHost, s));
        FLASH_CUDA_CHECK(
            cudaMemcpyAsync(host_obj_.get(), obj_.get(), sizeof(double) * pieces_.size(), cudaMemcpyDeviceToHost, s));
        FLASH_CUDA_CHECK(cudaStreamSynchronize(s));
        FLASH_CUDA_CHECK(cudaStreamSynchronize(cs));
        copy_s_ = compute_s_ = 0;
        for (size_t i = 0; i < pieces_.size(); i++) {
            if (!resident(i)) copy_s_ += ev.seconds(4 * i, 4 * i + 1);
            compute_s_ += ev.seconds(4 * i + 2, 4 * i + 3);
        }
    }

    const double* sums() const { return static_cast<const double*>(host_sums_.get()); }
    const double* wsums() const { return static_cast<const double*>(host_wsums_.get()); }
    const unsigned long long* counts() const { return static_cast<const unsigned long long*>(host_counts_.get()); }
    const double* piece_obj() const { return static_cast<const double*>(host_obj_.get()); }
    double copy_s() const { return copy_s_; }
    double compute_s() const { return compute_s_; }
    // Rows of the pieces kept on the device (resident = true) or streamed.
    int64_t rows_where(bool resident_rows) const {
        int64_t r = 0;
        for (size_t i = 0; i < pieces_.size(); i++) r += resident(i) == resident_rows ? pieces_[i].rows : 0;
        return r;
    }
    bool direct() const { return direct_; }
    // Every streamed row goes over PCIe in one DMA per piece from pinned memory: the caller's
    // (pinned or registered) or converted once (convert_streamed_once).
    bool dmas_streamed_rows() const {
        if (direct_) return true;
        for (size_t i = 0; i < pieces_.size(); i++)
            if (!resident(i) && !converted(i)) return false;
        return true;
    }
    int64_t converted_rows() const {
        int64_t r = 0;
        for (size_t i = 0; i < pieces_.size(); i++) r += converted(i) ? pieces_[i].rows : 0;
        return r;
    }
    // Host bytes of the streamed rows in the transfer type.
    size_t streamed_bytes() const { return size_t(rows_where(false)) * row_bytes_; }

    // Points sent in another type (transfer_dtype): converts streamed pieces, in order, as many
    // as `budget` bytes hold, once into pinned host memory of that type, so that every pass
    // DMAs them instead of converting them again through the staging buffers (the others are
    // staged as before), or none when that memory cannot be had; a value out of the type's
    // range is an error.
    void convert_streamed_once(size_t budget) {
        DeviceScope scope(dev_); // (the pinned allocation in this shard's context, not device 0's)
        StagingTeamCap team(staging_threads_);
        std::vector<size_t> chosen;
        size_t bytes = 0;
        for (size_t i = 0; i < pieces_.size(); i++) {
            const size_t b = rows_bytes(pieces_[i]);
            if (resident(i) || bytes + b > budget) continue;
            chosen.push_back(i);
            bytes += b;
        }
        if (chosen.empty()) return;
        auto buffer = std::make_unique<PinnedBuffer>();
        try {
            buffer->allocate(bytes, "the streamed rows in the transfer type");
        } catch (const std::runtime_error&) {
            return;
        }
        std::vector<const char*> rows(pieces_.size(), nullptr);
        char* dst = static_cast<char*>(buffer->get());
        for (size_t i : chosen) {
            const Piece& p = pieces_[i];
            if (!stage_elements(host_rows(p), x_.dtype, dst, t_, p.rows * x_.d)) throw_out_of_range();
            rows[i] = dst;
            dst += rows_bytes(p);
        }
        converted_ = std::move(buffer);
        converted_rows_ = std::move(rows);
    }

  private:
    // Test only (tests/gpu/test_sharded.cpp): FLASH_TEST_FAIL_RESIDENT=j[,j...] fails the
    // shard's j-th attempt to allocate a resident piece (from 0, counted over both plans) as
    // if the device were out of memory.
    struct TestAllocationFailures {
        std::vector<long> at;
        long attempt = 0;
        TestAllocationFailures() {
            const char* env = std::getenv("FLASH_TEST_FAIL_RESIDENT");
            for (const char* p = env; p && *p >= '0' && *p <= '9';) {
                char* end = nullptr;
                at.push_back(std::strtol(p, &end, 10));
                p = *end == ',' ? end + 1 : end;
            }
        }
        bool next_fails() { return std::find(at.begin(), at.end(), attempt++) != at.end(); }
    };

    // Which pieces stay resident within `avail` bytes: as many as fit, in order, the streamed
    // ones spread evenly among them (the pieces are computed in order whatever stays, so the
    // bits do not change): each streamed piece's copy then runs behind the compute of the
    // resident pieces before it. With the resident ones first, the copies of all but the first
    // kSlots streamed pieces waited for the resident compute to end (200M fp32 points, 74%
    // resident, K = 4096 on an H100: 1.24x the larger of copy and compute time per iteration).
    std::vector<bool> spread_plan(size_t avail) const {
        const size_t total = pieces_.size();
        size_t room = avail, fit = 0;
        for (const Piece& p : pieces_)
            if (piece_bytes(p) <= room) {
                fit++;
                room -= piece_bytes(p);
            }
        std::vector<bool> keep(total, false);
        const size_t streamed = total - fit;
        for (size_t i = 0; i < total; i++) {
            const bool stream = (i + 1) * streamed / total > i * streamed / total; // every total / streamed
            if (!stream && piece_bytes(pieces_[i]) <= avail) {
                keep[i] = true;
                avail -= piece_bytes(pieces_[i]);
            }
        }
        return keep;
    }

    // Allocates the pieces of `keep` in order up to the first that fails (returned; the piece
    // count if none), which with the pieces after it is streamed. `got`: the bytes allocated.
    size_t allocate_resident(const std::vector<bool>& keep, TestAllocationFailures& test, size_t& got) {
        got = 0;
        for (size_t i = 0; i < pieces_.size(); i++) {
            if (!keep[i]) continue;
            try {
                if (test.next_fails())
                    throw std::runtime_error("faiss-flash: out of GPU memory (FLASH_TEST_FAIL_RESIDENT)");
                data_[i] = std::make_unique<DeviceBuffer<unsigned char>>(rows_bytes(pieces_[i]), "resident points");
                norms_[i] = std::make_unique<DeviceBuffer<float>>(pieces_[i].rows, "resident point norms");
                got += piece_bytes(pieces_[i]);
            } catch (const std::runtime_error&) {
                data_[i].reset();
                norms_[i].reset();
                if (opt_.streaming == Streaming::Off)
                    throw_out_of_memory("with Streaming::Off, the rows of piece " + std::to_string(i) + " of " +
                                            std::to_string(pieces_.size()) + " and their norms",
                                        piece_bytes(pieces_[i]),
                                        "another process may have taken memory since the plan; Streaming::Auto "
                                        "would stream them");
                return i;
            }
        }
        return pieces_.size();
    }

    // Bytes of a piece's rows in the transfer type; a resident piece's device bytes (its rows
    // and their norms).
    size_t rows_bytes(const Piece& p) const { return size_t(p.rows) * row_bytes_; }
    size_t piece_bytes(const Piece& p) const { return rows_bytes(p) + size_t(p.rows) * 4; }
    // Piece i's rows converted once (convert_streamed_once), or null.
    const char* converted(size_t i) const { return i < converted_rows_.size() ? converted_rows_[i] : nullptr; }

    // Allocates the kSlots stream buffers and the streamed pieces' norms; false, with none of
    // them kept, when the device cannot give them.
    bool allocate_stream_buffers() {
        try {
            for (auto& b : slot_data_) b.allocate(size_t(P_) * row_bytes_, "stream buffer");
            xnorm_tmp_.allocate(P_, "streamed point norms");
            return true;
        } catch (const std::runtime_error&) {
            for (auto& b : slot_data_) b.release();
            xnorm_tmp_.release();
            return false;
        }
    }

    // The out-of-memory error for `bytes` of `what` on this shard's device: what was asked and
    // what the device has free now.
    [[noreturn]] void throw_out_of_memory(const std::string& what, size_t bytes, const std::string& hint) const {
        size_t free_b = 0, total_b = 0;
        const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
        if (!known) (void)cudaGetLastError();
        throw std::runtime_error("faiss-flash: out of GPU memory: " + what + " need " + format_bytes(bytes) +
                                 " on CUDA device " + std::to_string(dev_) + ", " +
                                 (known ? format_bytes(free_b) + " of " + format_bytes(total_b) : "an unknown amount") +
                                 " is free (" + hint + ")");
    }

    // Queues the copy of piece i's rows (converted to t_) into dst on the copy stream: one
    // DMA from pinned memory (the caller's rows, or converted once), or through the pinned
    // staging buffers in kStagingBytes steps.
    void transfer(size_t i, void* dst) {
        cudaStream_t cs = copy_->get();
        const Piece& p = pieces_[i];
        if (const char* once = converted(i); once || direct_) {
            FLASH_CUDA_CHECK(
                cudaMemcpyAsync(dst, once ? once : host_rows(p), rows_bytes(p), cudaMemcpyHostToDevice, cs));
            return;
        }
        if (!staging_->copy(dst, host_rows(p), x_.dtype, t_, p.rows * x_.d, cs)) throw_out_of_range();
    }

    [[noreturn]] void throw_out_of_range() const {
        throw std::invalid_argument(std::string("faiss-flash: transfer_dtype ") + (t_ == DType::F16 ? "F16" : "BF16") +
                                    ": the points hold values outside its range (use BF16 or F32)");
    }

    const Points& x_;
    const LloydOptions& opt_;
    DType t_;
    int dev_;
    std::vector<Piece> pieces_;
    int64_t P_;
    size_t budget_;
    int staging_threads_;
    size_t row_bytes_ = 0, in_row_bytes_ = 0;
    int64_t flat0_ = 0, flat1_ = 0; // the shard's rows in flattened (batch * n) order
    bool direct_ = false;
    std::unique_ptr<PinnedBuffer> converted_; // (convert_streamed_once)
    std::vector<const char*> converted_rows_; // per piece: its rows in converted_, or null (empty: none)
    int variant_ = -1;
    int64_t width_ = 0;
    bool half_ = false; // Fp32Mode::TF32: pieces assigned as scaled fp16 (xh_, ch_, cn_)
    double copy_s_ = 0, compute_s_ = 0;

    std::unique_ptr<Stream> compute_, copy_;
    DeviceBuffer<float> cen_, cnorm_, dist_, weights_, xnorm_tmp_, cmax_, xmax_, cn_;
    DeviceBuffer<unsigned char> lowp_, xs_, cs_, xh_, ch_;
    DeviceBuffer<double> sums_, wsums_, obj_, stats_ws_;
    DeviceBuffer<unsigned long long> counts_;
    DeviceBuffer<int32_t> labels_;
    ExactLists lists_; // the exact fp32 path's (width_ set)
    std::unique_ptr<SortInverseUpdate> update_;
    std::vector<std::unique_ptr<DeviceBuffer<unsigned char>>> data_;
    std::vector<std::unique_ptr<DeviceBuffer<float>>> norms_;
    DeviceBuffer<unsigned char> slot_data_[kSlots];
    PinnedBuffer host_sums_, host_wsums_, host_counts_, host_obj_;
    std::unique_ptr<Events> events_, slot_free_, slot_ready_;
    std::unique_ptr<StagedCopier> staging_;
};

} // namespace

struct PartialSums::Impl {
    Points x;
    LloydOptions opt;
    std::vector<std::unique_ptr<HostRegistration>> pins; // (before shards: unregistered after they are done)
    std::vector<std::unique_ptr<Shard>> shards;
    Placement placement;
};

PartialSums::PartialSums(const Points& x, const LloydOptions& options) : impl_(std::make_unique<Impl>()) {
    const double t0 = wall_seconds();
    Impl& m = *impl_;
    m.x = x;
    m.opt = options;
    m.opt.on_iteration = nullptr;
    m.opt.post_process = nullptr;
    const LloydOptions& opt = m.opt;
    if (x.device >= 0)
        throw std::invalid_argument(
            "faiss-flash: several GPUs and streaming take host points; these are on CUDA device " +
            std::to_string(x.device));
    const int count = device_count();
    if (count == 0) throw std::runtime_error("faiss-flash: no CUDA device is visible");
    std::vector<int> devices = opt.cuda_devices;
    if (devices.empty()) devices.push_back(opt.cuda_device >= 0 ? opt.cuda_device : 0);
    for (int dv : devices)
        if (dv < 0 || dv >= count)
            throw std::invalid_argument("faiss-flash: cuda_devices: device " + std::to_string(dv) +
                                        " does not exist (" + std::to_string(count) + " visible)");
    DType t = x.dtype;
    if (opt.transfer_dtype != DType::F32 && opt.transfer_dtype != x.dtype) {
        if (x.dtype != DType::F32)
            throw std::invalid_argument("faiss-flash: transfer_dtype converts fp32 points only (these are fp16/bf16)");
        t = opt.transfer_dtype;
    }
    const size_t row_bytes = size_t(x.d) * dtype_size(t);
    int64_t P = opt.stream_piece_rows;
    if (P <= 0) P = std::clamp<int64_t>(int64_t((size_t(1) << 30) / row_bytes), 1 << 16, 1 << 22);
    P = std::min<int64_t>(P, x.n);

    std::vector<Piece> pieces;
    for (int64_t b = 0; b < x.batch; b++)
        for (int64_t r = 0; r < x.n; r += P) pieces.push_back({b, r, std::min(P, x.n - r)});
    const size_t S = std::min(devices.size(), pieces.size());

    // Memory budget per shard: the device's free memory (or the cap) shared by its shards.
    std::map<int, int> shards_on;
    for (size_t i = 0; i < S; i++) shards_on[devices[i]]++;
    std::map<int, size_t> budget;
    for (auto [dv, nshards] : shards_on) {
        DeviceScope scope(dv);
        size_t free_b = 0, total_b = 0;
        FLASH_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        const size_t margin = std::max<size_t>(size_t(512) << 20, free_b / 32);
        size_t b = free_b > margin ? free_b - margin : 0;
        if (opt.device_memory_limit > 0) b = std::min(b, size_t(opt.device_memory_limit));
        budget[dv] = b / nshards;
    }
    // The shards stage their copies at the same time, each on its own OpenMP team: together
    // they share the threads the process may use (more only oversubscribe the cores that convert).
    const int staging_threads = staging_team_share(S);
    for (size_t i = 0; i < S; i++) {
        const size_t p0 = i * pieces.size() / S, p1 = (i + 1) * pieces.size() / S;
        m.shards.push_back(std::make_unique<Shard>(m.x, m.opt, t, devices[i],
                                                   std::vector<Piece>(pieces.begin() + p0, pieces.begin() + p1), P,
                                                   budget[devices[i]], staging_threads));
    }
    for_each_parallel(S, [&](size_t i) { m.shards[i]->setup(); });

    // Pin the streamed rows of pageable points once, so that every pass DMAs them directly.
    bool any_streamed = false, direct = true;
    for (auto& sh : m.shards) any_streamed |= sh->rows_where(false) > 0, direct &= sh->direct();
    if (any_streamed && !direct && t == x.dtype && opt.pin_host_data) {
        DeviceScope scope(m.shards.front()->device()); // (a context in use, not device 0's)
        bool ok = true;
        const char* run_begin = nullptr;
        const char* run_end = nullptr;
        auto flush = [&] {
            if (run_begin && ok) {
                m.pins.push_back(std::make_unique<HostRegistration>(run_begin, size_t(run_end - run_begin)));
                ok = m.pins.back()->ok();
            }
            run_begin = run_end = nullptr;
        };
        for (auto& sh : m.shards)
            for (size_t i = 0; i < sh->pieces().size(); i++) {
                if (sh->resident(i)) {
                    flush();
                    continue;
                }
                const Piece& p = sh->pieces()[i];
                const char* begin = sh->host_rows(p);
                const char* end = begin + size_t(p.rows) * x.d * dtype_size(x.dtype);
                if (run_end != begin) flush();
                if (!run_begin) run_begin = begin;
                run_end = end;
            }
        flush();
        if (ok)
            for (auto& sh : m.shards) sh->set_direct(true);
        else
            m.pins.clear();
    }
    // Points sent in another type: the streamed rows converted once into pinned host memory,
    // as many as half of what the host has available holds (the shards in proportion to their
    // streamed rows); the others, and those of a shard that could not get the memory, staged
    // every pass.
    if (any_streamed && t != x.dtype && opt.pin_host_data) {
        size_t bytes = 0;
        for (auto& sh : m.shards) bytes += sh->streamed_bytes();
        const size_t avail = std::min(bytes, host_memory_available() / 2);
        for_each_parallel(S, [&](size_t i) {
            const size_t mine = m.shards[i]->streamed_bytes();
            if (mine > 0) m.shards[i]->convert_streamed_once(size_t((unsigned __int128)mine * avail / bytes));
        });
    }

    Placement& pl = m.placement;
    pl.shards = int(S);
    pl.pieces = int64_t(pieces.size());
    pl.host_pinned = true;
    for (auto& sh : m.shards) {
        const int64_t streamed = sh->rows_where(false);
        pl.resident_rows += sh->rows_where(true);
        pl.streamed_rows += streamed;
        pl.streamed_bytes += int64_t(sh->streamed_bytes());
        pl.converted_rows += sh->converted_rows();
        if (streamed > 0) pl.host_pinned &= sh->dmas_streamed_rows();
    }
    if (pl.streamed_rows == 0) pl.host_pinned = false;
    pl.setup_s = wall_seconds() - t0;
}

PartialSums::~PartialSums() = default;

void PartialSums::run(const float* centroids, double* sums, double* wsums, int64_t* sizes, double* obj) {
    Impl& m = *impl_;
    const double t0 = wall_seconds();
    const int64_t B = m.x.batch, k = m.opt.k, d = m.x.d;
    for_each_parallel(m.shards.size(), [&](size_t i) { m.shards[i]->run(centroids); });
    // Shard order, then piece order: a fixed reduction order.
    std::fill(sums, sums + B * k * d, 0.0);
    std::fill(wsums, wsums + B * k, 0.0);
    std::fill(sizes, sizes + B * k, int64_t(0));
    std::fill(obj, obj + B, 0.0);
    Placement& pl = m.placement;
    pl.copy_s = pl.compute_s = 0;
    for (auto& sh : m.shards) {
        const double* s = sh->sums();
        for (int64_t i = 0; i < B * k * d; i++) sums[i] += s[i];
        for (int64_t i = 0; i < B * k; i++) {
            wsums[i] += sh->wsums()[i];
            sizes[i] += int64_t(sh->counts()[i]);
        }
        for (size_t i = 0; i < sh->pieces().size(); i++) obj[sh->pieces()[i].b] += sh->piece_obj()[i];
        pl.copy_s = std::max(pl.copy_s, sh->copy_s());
        pl.compute_s = std::max(pl.compute_s, sh->compute_s());
    }
    pl.iteration_s = wall_seconds() - t0;
}

Placement PartialSums::placement() const {
    return impl_->placement;
}

} // namespace flash::cuda_engine
