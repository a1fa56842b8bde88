// The CUDA engine's entry points: device choice, uploads, buffers allocated once, and the
// whole Lloyd loop queued on one stream with no host synchronisation until the end.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/cuda/device_ops.cuh"
#include "kernels/cuda/resources.cuh"
#include "kernels/cuda/update.cuh"
#include "kernels/lloyd_common.h"

namespace flash::cuda_engine {

namespace {

int pick_device(const Points& x, int requested) {
    const int count = device_count();
    if (count == 0) throw std::runtime_error("faiss-flash: no CUDA device is visible");
    int dev = requested >= 0 ? requested : (x.device >= 0 ? x.device : 0);
    if (dev >= count)
        throw std::invalid_argument("faiss-flash: CUDA device " + std::to_string(dev) + " does not exist (" +
                                    std::to_string(count) + " visible)");
    if (x.device >= 0 && x.device != dev)
        throw std::invalid_argument("faiss-flash: the points are on CUDA device " + std::to_string(x.device) +
                                    " but device " + std::to_string(dev) + " was requested");
    return dev;
}

// Host data of at least 256 MiB goes up through two pinned buffers: every thread copies piece
// i into one while the DMA engine sends piece i - 1 from the other (a pageable cudaMemcpy moves
// about 6 GB/s). FLASH_CUDA_STAGED_UPLOAD=<MiB> sets the threshold, 0 turns staging off.
constexpr size_t kUploadPiece = size_t(32) << 20;

void upload(void* dst, const void* src, size_t bytes, DType dtype, cudaStream_t s) {
    const char* env = std::getenv("FLASH_CUDA_STAGED_UPLOAD");
    const long long mib = env ? std::atoll(env) : 256;
    if (mib <= 0 || bytes < size_t(mib) << 20) {
        FLASH_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
        return;
    }
    StagedCopier(2, kUploadPiece).copy(dst, src, dtype, dtype, int64_t(bytes / dtype_size(dtype)), s);
}

// The points on the device: the caller's buffer, or an upload of host data.
struct DevicePoints {
    const void* ptr = nullptr;
    DeviceBuffer<unsigned char> owned;
    DevicePoints(const Points& x, cudaStream_t s) {
        const size_t bytes = size_t(x.batch) * x.n * x.d * dtype_size(x.dtype);
        if (x.device >= 0) {
            cudaPointerAttributes attr{};
            FLASH_CUDA_CHECK(cudaPointerGetAttributes(&attr, x.data));
            if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
                throw std::invalid_argument("faiss-flash: Points.device is set but data is not device memory");
            ptr = x.data;
            DeviceBuffer<int> flag(1, "finite-check flag");
            FLASH_CUDA_CHECK(cudaMemsetAsync(flag.get(), 0, sizeof(int), s));
            launch_check_finite(x.data, x.dtype, x.batch * x.n * x.d, flag.get(), s);
            int h = 0;
            FLASH_CUDA_CHECK(cudaMemcpyAsync(&h, flag.get(), sizeof(int), cudaMemcpyDeviceToHost, s));
            FLASH_CUDA_CHECK(cudaStreamSynchronize(s));
            if (h) throw std::invalid_argument("faiss-flash: input contains NaN's or Inf's");
        } else {
            owned.allocate(bytes, "points");
            upload(owned.get(), x.data, bytes, x.dtype, s);
            ptr = owned.get();
        }
    }
};

} // namespace

int device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return count;
}

bool fits_in_memory(const Points& x, int64_t k, int device, bool tf32) {
    if (device < 0 || device >= device_count()) return true; // pick_device reports the error
    DeviceScope scope(device);
    size_t free_b = 0, total_b = 0;
    FLASH_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    uint64_t reserved = 0, used = 0; // what the pool keeps for the next calls is free for this one
    const cudaMemPool_t pool = device_pool(device);
    FLASH_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
    FLASH_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
    free_b += size_t(reserved - used);
    const double rows = double(x.batch) * double(x.n);
    AssignArgs probe;
    probe.dtype = x.dtype;
    probe.d = x.d;
    const bool half = x.dtype == DType::F32 && tf32;
    const int64_t width = x.dtype == DType::F32 && !tf32 && wgmma_supported(probe) ? split_fp32_width(x.d) : 0;
    // points, split fp32 copy (TF32 mode: the fp16 copy instead), its re-check keys, residuals and
    // candidates, labels / distances / norms / weights / re-check list, the update's sort and
    // chunk sums; centroids and their copies.
    const double need = rows * (double(x.d) * double(dtype_size(x.dtype)) + 4.0 * double(width) +
                                (half ? 2.0 * double(x.d) : 0.0) + (width ? 12.0 + 4 * kCandidateSlots : 0.0) + 20) +
                        double(SortInverseUpdate::bytes(x.batch, x.n, x.d, k)) +
                        double(x.batch) * double(k) * double(x.d) * 24;
    const double margin = std::max(512.0 * (1 << 20), double(free_b) / 32);
    return need + margin <= double(free_b);
}

std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt,
                                                   const CheckpointHook& checkpoint) {
    const bool phases = std::getenv("FLASH_CUDA_PHASE_TIMES") != nullptr;
    HostClock clock(phases || std::getenv("FLASH_CUDA_CALL_TIMES")); // host time of each setup step
    DeviceScope scope(pick_device(x, opt.cuda_device));
    prepare_split_draws(); // (synchronous the first time on a device: before any work is queued)
    Stream stream;
    cudaStream_t s = stream.get();
    StreamAllocations pooled(s);
    const int64_t B = x.batch, n = x.n, d = x.d, k = opt.k, niter = opt.niter;

    DevicePoints xd(x, s);
    clock.mark("points");
    DeviceBuffer<float> cen(B * k * d, "centroids"), cnorm(B * k, "centroid norms"), xnorm(B * n, "point norms");
    DeviceBuffer<float> dist(B * n, "distances"), counts(B * k, "cluster weights");
    DeviceBuffer<int32_t> labels(B * n, "labels");
    DeviceBuffer<unsigned char> lowp(x.dtype == DType::F32 ? 0 : B * k * d * 2, "rounded centroids");
    DeviceBuffer<float> weights(opt.weights ? B * n : 0, "weights");
    // From k = kStartMinK each point's running minimum starts from its value for the centroid
    // it had last iteration (AssignArgs::start_from_labels). Below it the reads at each block's
    // start cost more than they spare (bench/RESULTS.md, run 29). FLASH_ASSIGN_BOUND=0: not
    // used; =1: also below kStartMinK.
    constexpr int64_t kStartMinK = 4096;
    const bool start_from_labels = niter > 1 && !env_switched_off("FLASH_ASSIGN_BOUND") &&
                                   (k >= kStartMinK || env_switched_on("FLASH_ASSIGN_BOUND"));
    // Per-iteration stats: row `it` of the history [obj (B doubles) | imbalance (B doubles) |
    // nsplit (B ints)], written by the iteration's split kernel at a cursor it moves on (a
    // captured graph replays it; a copy per iteration cost 2-4 us at the small configs).
    const size_t row_bytes = (size_t(B) * (2 * sizeof(double) + sizeof(int)) + 7) / 8 * 8; // doubles aligned
    DeviceBuffer<unsigned char> stats_hist(row_bytes * niter, "stats history");
    DeviceBuffer<double> obj_row(B, "objective");
    DeviceBuffer<unsigned> stats_cursor(2, "stats cursor");
    FLASH_CUDA_CHECK(cudaMemsetAsync(stats_cursor.get(), 0, sizeof(unsigned) * 2, s));
    if (niter > 0) FLASH_CUDA_CHECK(cudaMemsetAsync(stats_hist.get(), 0, row_bytes * niter, s)); // (rows' padding)
    const StatsHistory history{stats_hist.get(), row_bytes, obj_row.get(), stats_cursor.get()};
    DeviceBuffer<double> stats_ws(stats_workspace_size(B, n), "objective partial sums");
    FLASH_CUDA_CHECK(cudaMemsetAsync(stats_ws.get(), 0, sizeof(double) * stats_ws.size(), s));
    SortInverseUpdate update(B, n, d, k, s);
    Events ev(2 * size_t(niter) + 1);
    // Checkpoints inside the run (CheckpointHook), where one falls before the last iteration: two
    // pinned slots, each a checkpoint's centroids and the stats rows of the `every` iterations
    // before it (allocated here, before the run's first event: not in its time).
    const bool checkpoints = checkpoint.save && checkpoint.every > 0 && checkpoint.every < niter;
    const size_t cen_bytes = sizeof(float) * B * k * d;
    PinnedBuffer ck_slots[2];
    if (checkpoints)
        for (auto& slot : ck_slots) slot.allocate(cen_bytes + row_bytes * checkpoint.every, "checkpoint copies");
    struct WaitOnExit { // an exception (a failed save) leaves no copy in flight into freed slots
        cudaStream_t s;
        bool armed;
        ~WaitOnExit() {
            if (armed) (void)cudaStreamSynchronize(s);
        }
    } wait_on_exit{s, checkpoints};
    clock.mark("buffers");

    FLASH_CUDA_CHECK(cudaMemcpyAsync(cen.get(), centroids, sizeof(float) * B * k * d, cudaMemcpyHostToDevice, s));
    if (opt.weights)
        FLASH_CUDA_CHECK(cudaMemcpyAsync(weights.get(), opt.weights, sizeof(float) * B * n, cudaMemcpyHostToDevice, s));
    launch_row_norms(xd.ptr, x.dtype, B * n, d, xnorm.get(), s);

    AssignArgs a;
    a.x = xd.ptr;
    a.centroids = x.dtype == DType::F32 ? static_cast<const void*>(cen.get()) : lowp.get();
    a.cnorm = cnorm.get();
    a.xnorm = xnorm.get();
    a.dtype = x.dtype;
    a.metric = opt.metric;
    a.batch = B;
    a.n = n;
    a.d = d;
    a.k = k;
    a.labels = labels.get();
    a.distances = dist.get();

    HalfFp32 half(a, opt.fp32_mode == Fp32Mode::TF32, s);
    SplitFp32 split(a, s); // exact fp32 (not in TF32 mode: a.half_view)

    // FLASH_CUDA_PHASE_TIMES=1: events between the phases, a breakdown on stderr at the end.
    Events pev(phases ? 3 * size_t(niter) : 0);
    if (niter > 0) { // the autotuner times real launches: give it prepared centroids
        launch_prepare_centroids(cen.get(), B * k, d, x.dtype, lowp.get(), cnorm.get(), s);
        split.prepare(a, cen.get(), s);
        half.prepare(a, cen.get(), s);
    }
    const int variant = niter > 0 ? choose_assign_variant(a, s, start_from_labels) : 0;
    // fp16 / bf16: the assignment counts its labels into the update's tile histogram (after the
    // variant is chosen: the autotuner's launches must not count).
    if (x.dtype != DType::F32 && update.label_counts()) {
        a.tile_counts = update.label_counts();
        a.count_tile = update.count_tile();
        a.count_tiles = update.count_tiles();
    }
    if (start_from_labels) { // (after the autotuner's launches, which write labels): no label, no start
        FLASH_CUDA_CHECK(cudaMemsetAsync(labels.get(), 0xff, sizeof(int32_t) * B * n, s));
        a.start_from_labels = true;
        half.view.start_from_labels = true; // (TF32 mode: the fp16 view's pass writes these labels)
    }
    clock.mark("prepare");

    // One iteration in two parts; an event between them times the assignment. Without post-
    // processing the update's finish and the split prepare the rows they write (the same
    // per-row function as the preparation pass, so the same bits): one launch less.
    const bool prepared_in_update = !opt.spherical && !opt.int_centroids;
    const CentroidCopies copies =
        prepared_in_update ? CentroidCopies{x.dtype, lowp.get(), cnorm.get()} : CentroidCopies{};
    auto assign_part = [&] {
        if (!prepared_in_update) launch_prepare_centroids(cen.get(), B * k, d, x.dtype, lowp.get(), cnorm.get(), s);
        split.prepare(a, cen.get(), s);
        half.prepare(a, cen.get(), s);
        launch_assign(a, variant, s);
    };
    // The objective needs only the distances: it runs on a side stream beside the update (a
    // second branch of the captured graph), joined before the split kernel, which writes the
    // iteration's stats row; the imbalance, which needs the cluster sizes, comes from the split
    // kernel too. One launch fewer on the iteration's critical path.
    Stream side;
    Events fork(2);
    // An exception inside an eager update_part: the frees on s still wait for the objective. (Not
    // after a capture: an event recorded inside one cannot be waited on outside it, and captured
    // work that never launched needs no wait.)
    struct JoinOnExit {
        cudaStream_t s;
        cudaEvent_t e;
        bool eager = false;
        ~JoinOnExit() {
            if (eager) (void)cudaStreamWaitEvent(s, e, 0);
        }
    } join_on_exit{s, fork[1]};
    // assigned: recorded once the assignment is done (FAISS' search time), on the side branch:
    // off the update's path (in a captured graph an event-record node between the assignment
    // and the update cost 1-2 us per iteration at the small configs; see run_lloyd's loop).
    auto update_part = [&](int64_t it, cudaEvent_t assigned) { // it < 0: no phase events (graph capture)
        join_on_exit.eager = it >= 0;
        FLASH_CUDA_CHECK(cudaEventRecord(fork[0], s));
        FLASH_CUDA_CHECK(cudaStreamWaitEvent(side.get(), fork[0], 0));
        if (it < 0) // a node of the graph (outside a capture the flag is refused)
            FLASH_CUDA_CHECK(cudaEventRecordWithFlags(assigned, side.get(), cudaEventRecordExternal));
        else
            FLASH_CUDA_CHECK(cudaEventRecord(assigned, side.get()));
        launch_objective(dist.get(), B, n, stats_ws.get(), obj_row.get(), side.get());
        FLASH_CUDA_CHECK(cudaEventRecord(fork[1], side.get()));
        update.run(xd.ptr, x.dtype, labels.get(), opt.weights ? weights.get() : nullptr, opt.k_frozen, cen.get(),
                   counts.get(), s, copies, a.tile_counts != nullptr);
        if (it >= 0 && phases) FLASH_CUDA_CHECK(cudaEventRecord(pev[3 * it], s));
        FLASH_CUDA_CHECK(cudaStreamWaitEvent(s, fork[1], 0)); // the objective, long done by now
        join_on_exit.eager = false;
        launch_split_empty_clusters(cen.get(), counts.get(), B, k, d, opt.k_frozen, n, update.sizes(), history, s,
                                    copies);
        if (it >= 0 && phases) FLASH_CUDA_CHECK(cudaEventRecord(pev[3 * it + 1], s));
        launch_post_process(cen.get(), B * k, d, opt.spherical, opt.int_centroids, s);
    };
    // The iteration is captured once as a CUDA graph and replayed: one launch per iteration
    // instead of about twenty (what bounds small, latency-bound problems; two graphs with an
    // event between them cost 1-3 us more per iteration at the small configs). The event after
    // the assignment (FAISS' search time) is a node of the graph's side branch, pointed at the
    // iteration's own event before each launch. FLASH_CUDA_GRAPH=0 or FLASH_CUDA_PHASE_TIMES=1
    // run the kernels one by one; so does a capture that fails.
    const bool try_graphs = niter >= 2 && !phases && !env_switched_off("FLASH_CUDA_GRAPH");
    CapturedGraph iteration;
    const bool graphs = try_graphs && iteration.capture(s, [&] {
        assign_part();
        update_part(-1, ev[1]);
    });
    clock.mark("graphs");
    FLASH_CUDA_CHECK(cudaEventRecord(ev[0], s));
    // The stats of every iteration, appended as their history rows reach the host (at each
    // checkpoint and at the end; their events have ended by then): rows[0] is iteration `first`'s.
    std::vector<std::vector<IterationStats>> stats(B);
    double search = 0;
    auto append_stats = [&](const unsigned char* rows, int64_t first, int64_t upto) {
        for (int64_t it = int64_t(stats[0].size()); it < upto; it++) {
            const unsigned char* row = rows + (it - first) * row_bytes;
            search += ev.seconds(2 * it, 2 * it + 1);
            const double t = ev.seconds(0, 2 * it + 2);
            for (int64_t b = 0; b < B; b++) {
                IterationStats one;
                std::memcpy(&one.obj, row + sizeof(double) * b, sizeof(double));
                std::memcpy(&one.imbalance, row + sizeof(double) * (B + b), sizeof(double));
                std::memcpy(&one.nsplit, row + 2 * sizeof(double) * B + sizeof(int) * b, sizeof(int));
                one.time_s = t;
                one.search_time_s = search;
                stats[b].push_back(one);
            }
        }
    };
    int64_t delivered = 0; // iterations whose stats went to on_iteration
    auto deliver = [&](int64_t upto) {
        if (opt.on_iteration)
            for (int64_t b = 0; b < B; b++)
                for (int64_t it = delivered; it < upto; it++) opt.on_iteration(b, int(it), stats[b][it]);
        delivered = upto;
    };

    // stop_on_sigint: a stop request (SIGINT, request_stop) ends the run between iterations. The
    // host then keeps at most kAhead iterations queued, waiting for the end of iteration
    // it - kAhead before it queues iteration it, and queues no more once a stop is requested;
    // those already queued finish, and the run returns their stats only.
    // Checkpoints: after each due iteration its centroids and stats rows are copied behind it on
    // the stream into pinned slot (count / every) % 2; once the host has queued the iteration
    // after next, it waits for the due one to end and writes it while the GPU works on the two
    // queued since (one set-up for the whole run, not one per checkpoint; no wait between
    // checkpoints). Two slots suffice: a slot's next copy (2 every iterations on) is queued after
    // its checkpoint was written, at most kAhead = 2 iterations behind.
    constexpr int64_t kAhead = 2;
    static_assert(kAhead <= 2, "two checkpoint slots");
    auto ck_slot = [&](int64_t count) {
        return static_cast<unsigned char*>(ck_slots[(count / checkpoint.every) % 2].get());
    };
    std::vector<int64_t> pending; // due iteration counts copied, not yet written, in order
    int64_t done = niter;
    for (int64_t it = 0; it < niter; it++) {
        if (opt.stop_on_sigint && it >= kAhead) {
            FLASH_CUDA_CHECK(cudaEventSynchronize(ev[2 * (it - kAhead) + 2]));
            if (stop_requested()) {
                done = it;
                break;
            }
        }
        if (graphs) {
            iteration.set_recorded_event(ev[2 * it + 1]);
            iteration.launch(s);
        } else {
            a.early_points = it > 0; // the points are the same as the last iteration's
            assign_part();
            update_part(it, ev[2 * it + 1]);
        }
        while (!pending.empty() && pending.front() <= it + 1 - kAhead) {
            const int64_t count = pending.front();
            FLASH_CUDA_CHECK(cudaEventSynchronize(ev[2 * (count - 1) + 2])); // (it covers the copies)
            const unsigned char* slot = ck_slot(count);
            append_stats(slot + cen_bytes, count - checkpoint.every, count);
            checkpoint.save(int(count), reinterpret_cast<const float*>(slot), stats);
            deliver(count);
            pending.erase(pending.begin());
        }
        if (checkpoints && checkpoint.due(it + 1, niter)) {
            unsigned char* slot = ck_slot(it + 1);
            FLASH_CUDA_CHECK(cudaMemcpyAsync(slot, cen.get(), cen_bytes, cudaMemcpyDeviceToHost, s));
            FLASH_CUDA_CHECK(cudaMemcpyAsync(slot + cen_bytes,
                                             stats_hist.get() + row_bytes * (it + 1 - checkpoint.every),
                                             row_bytes * checkpoint.every, cudaMemcpyDeviceToHost, s));
            pending.push_back(it + 1);
        }
        FLASH_CUDA_CHECK(cudaEventRecord(ev[2 * it + 2], s));
    }

    std::vector<unsigned char> h_hist(row_bytes * done);
    FLASH_CUDA_CHECK(cudaMemcpyAsync(centroids, cen.get(), cen_bytes, cudaMemcpyDeviceToHost, s));
    if (done > 0)
        FLASH_CUDA_CHECK(cudaMemcpyAsync(h_hist.data(), stats_hist.get(), row_bytes * done, cudaMemcpyDeviceToHost, s));
    clock.mark("enqueue");
    FLASH_CUDA_CHECK(cudaStreamSynchronize(s));
    clock.mark("run");
    // (Checkpoints still pending are of iterations before the last: the caller saves the end.)

    if (phases && done > 0 && split.lists.count.get()) { // the re-check's share, last iteration
        std::vector<uint32_t> cnt(B);
        FLASH_CUDA_CHECK(cudaMemcpy(cnt.data(), split.lists.count.get(), sizeof(uint32_t) * B, cudaMemcpyDeviceToHost));
        double total = 0;
        for (auto v : cnt) total += v;
        std::fprintf(stderr, "faiss-flash fp32 %s: %.4f%% of points re-checked with fp32 FMA over every centroid\n",
                     split.lists.candidates.get() ? "filter" : "certificate", 100.0 * total / double(B * n));
    }
    if (phases && done > 0) {
        double t_assign = 0, t_update = 0, t_split = 0, t_post = 0;
        for (int64_t it = 0; it < done; it++) {
            t_assign += ev.seconds(2 * it, 2 * it + 1);
            float ms = 0;
            FLASH_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[2 * it + 1], pev[3 * it]));
            t_update += ms / 1e3;
            FLASH_CUDA_CHECK(cudaEventElapsedTime(&ms, pev[3 * it], pev[3 * it + 1]));
            t_split += ms / 1e3;
            FLASH_CUDA_CHECK(cudaEventElapsedTime(&ms, pev[3 * it + 1], ev[2 * it + 2]));
            t_post += ms / 1e3;
        }
        std::fprintf(stderr,
                     "faiss-flash phases (ms/iter): assign %.3f update %.3f objective join+split+stats %.3f "
                     "post %.3f\n",
                     1e3 * t_assign / done, 1e3 * t_update / done, 1e3 * t_split / done, 1e3 * t_post / done);
    }
    append_stats(h_hist.data(), 0, done);
    deliver(done);
    return stats;
}

void assign_nearest(const Points& x, const float* centroids, int64_t k, Metric metric, int64_t* labels,
                    float* distances, int cuda_device) {
    DeviceScope scope(pick_device(x, cuda_device));
    Stream stream;
    cudaStream_t s = stream.get();
    StreamAllocations pooled(s);
    const int64_t B = x.batch, n = x.n, d = x.d;
    DevicePoints xd(x, s);
    DeviceBuffer<float> cen(B * k * d, "centroids"), cnorm(B * k, "centroid norms"), xnorm(B * n, "point norms");
    DeviceBuffer<float> dist(B * n, "distances");
    DeviceBuffer<int32_t> lab(B * n, "labels");
    DeviceBuffer<unsigned char> lowp(x.dtype == DType::F32 ? 0 : B * k * d * 2, "rounded centroids");
    FLASH_CUDA_CHECK(cudaMemcpyAsync(cen.get(), centroids, sizeof(float) * B * k * d, cudaMemcpyHostToDevice, s));
    launch_row_norms(xd.ptr, x.dtype, B * n, d, xnorm.get(), s);
    launch_prepare_centroids(cen.get(), B * k, d, x.dtype, lowp.get(), cnorm.get(), s);
    AssignArgs a;
    a.x = xd.ptr;
    a.centroids = x.dtype == DType::F32 ? static_cast<const void*>(cen.get()) : lowp.get();
    a.cnorm = cnorm.get();
    a.xnorm = xnorm.get();
    a.dtype = x.dtype;
    a.metric = metric;
    a.batch = B;
    a.n = n;
    a.d = d;
    a.k = k;
    a.labels = lab.get();
    a.distances = dist.get();
    SplitFp32 split(a, s);
    split.prepare(a, cen.get(), s);
    launch_assign(a, choose_assign_variant(a, s), s);
    std::vector<int32_t> l32(B * n);
    FLASH_CUDA_CHECK(cudaMemcpyAsync(l32.data(), lab.get(), sizeof(int32_t) * B * n, cudaMemcpyDeviceToHost, s));
    if (distances)
        FLASH_CUDA_CHECK(cudaMemcpyAsync(distances, dist.get(), sizeof(float) * B * n, cudaMemcpyDeviceToHost, s));
    FLASH_CUDA_CHECK(cudaStreamSynchronize(s));
    if (labels)
        for (int64_t i = 0; i < B * n; i++) labels[i] = l32[i];
}

} // namespace flash::cuda_engine
