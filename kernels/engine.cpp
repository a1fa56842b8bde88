// API layer of the engine: validate, pick the backend, hand over.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/checkpoint.h"
#include "kernels/cpu/assign_cpu.h"
#include "kernels/cpu/lloyd_cpu.h"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/flash_kmeans.h"
#include "kernels/lloyd_common.h"
#include "kernels/sharded_lloyd.h"
#include "kernels/stop_scope.h"

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

namespace {

// The several-GPU and streaming options (they apply to host points on the CUDA engine).
void validate_placement(const Points& x, const LloydOptions& opt) {
    auto fail = [](const std::string& m) { throw std::invalid_argument("faiss-flash: " + m); };
    for (int dv : opt.cuda_devices)
        if (dv < 0) fail("cuda_devices: device ordinals must be >= 0, got " + std::to_string(dv));
    if (opt.device_memory_limit < 0)
        fail("device_memory_limit must be >= 0 bytes, got " + std::to_string(opt.device_memory_limit));
    if (opt.stream_piece_rows < 0) fail("stream_piece_rows must be >= 0, got " + std::to_string(opt.stream_piece_rows));
    if (opt.transfer_dtype != DType::F32 && x.dtype != DType::F32 && opt.transfer_dtype != x.dtype)
        fail("transfer_dtype converts fp32 points only; these are fp16/bf16");
    if (x.device >= 0 && (opt.cuda_devices.size() > 1 || opt.streaming == Streaming::Force))
        fail("several GPUs and streaming take host points; these are on CUDA device " + std::to_string(x.device));
}

std::vector<std::vector<IterationStats>> run_on(Backend backend, const Points& x, float* centroids,
                                                const LloydOptions& opt, const CheckpointHook& checkpoint = {}) {
    if (backend == Backend::CUDA) {
        if (wants_sharded_run(x, opt)) return run_lloyd_sharded(x, centroids, opt, checkpoint);
        if (opt.cuda_devices.size() == 1) {
            LloydOptions one = opt;
            one.cuda_device = opt.cuda_devices[0];
            return cuda_engine::run_lloyd(x, centroids, one, checkpoint);
        }
        return cuda_engine::run_lloyd(x, centroids, opt, checkpoint);
    }
    return cpu::run_lloyd(x, centroids, opt);
}

// Runs the iterations saving a checkpoint every checkpoint_every of them, resuming from an
// existing one. Each Lloyd iteration depends only on the centroids (FAISS' split rule reseeds
// its generator every iteration), so a resumed run ends exactly where an uninterrupted one does.
// The GPU engines take the rest of the run in one call and save from inside it (CheckpointHook:
// one upload and set-up per run); the CPU engine, which sets nothing up, goes in calls of
// checkpoint_every iterations.
std::vector<std::vector<IterationStats>> run_resumable(Backend backend, const Points& x, float* centroids,
                                                       const LloydOptions& opt) {
    const size_t ncent = size_t(x.batch * opt.k * x.d);
    Checkpoint ck;
    ck.batch = x.batch;
    ck.n = x.n;
    ck.d = x.d;
    ck.k = opt.k;
    ck.metric = int(opt.metric);
    ck.data_fingerprint = data_fingerprint(x);
    ck.run_fingerprint = run_fingerprint(x, centroids, opt); // (centroids: still the initial ones)
    ck.stats.assign(x.batch, {});

    Checkpoint found;
    if (!opt.checkpoint_path.empty() && load_checkpoint(opt.checkpoint_path, found)) {
        check_same_run(found, ck, opt.niter, opt.checkpoint_path);
        ck.iterations_done = found.iterations_done;
        for (int64_t b = 0; b < x.batch; b++)
            ck.stats[b].assign(found.stats[b].begin(), found.stats[b].begin() + ck.iterations_done);
        std::copy(found.centroids.begin(), found.centroids.end(), centroids);
        if (opt.on_iteration) // callers see the whole history
            for (int64_t b = 0; b < x.batch; b++)
                for (int it = 0; it < ck.iterations_done; it++) opt.on_iteration(b, it, ck.stats[b][it]);
    }

    StopScope stop_scope(opt.stop_on_sigint);
    const bool stoppable = opt.stop_on_sigint;
    // The CPU engine runs a batch's problems one after another, so a batch can only stop
    // between calls: with stop_on_sigint, one iteration per call (it sets nothing up per call).
    const bool cpu_batch = backend == Backend::CPU && x.batch > 1;
    const bool one_call = backend == Backend::CUDA;
    const int segment = opt.checkpoint_every > 0 && !one_call ? opt.checkpoint_every
                                                              : (stoppable && cpu_batch ? 1 : std::max(1, opt.niter));
    auto save = [&](const float* c) {
        if (opt.checkpoint_path.empty()) return;
        ck.centroids.assign(c, c + ncent);
        save_checkpoint(opt.checkpoint_path, ck);
    };
    // Stats of problem b from a call that started after `offset` iterations, its times made
    // cumulative over the whole run.
    auto shifted = [&](int64_t b, IterationStats s, int offset) {
        if (offset > 0) {
            s.time_s += ck.stats[b][offset - 1].time_s;
            s.search_time_s += ck.stats[b][offset - 1].search_time_s;
        }
        return s;
    };
    // The stats st[b][from..] of such a call, into ck.
    auto absorb = [&](const std::vector<std::vector<IterationStats>>& st, size_t from, int offset) {
        for (int64_t b = 0; b < x.batch; b++)
            for (size_t i = from; i < st[b].size(); i++) ck.stats[b].push_back(shifted(b, st[b][i], offset));
        ck.iterations_done = offset + int(st[0].size());
    };
    while (ck.iterations_done < opt.niter && !(stoppable && stop_requested())) {
        LloydOptions seg = opt;
        seg.niter = std::min(segment, opt.niter - ck.iterations_done);
        const int offset = ck.iterations_done;
        size_t absorbed = 0; // stats of this call already in ck (saved from inside it)
        CheckpointHook hook;
        if (one_call && opt.checkpoint_every > 0 && !opt.checkpoint_path.empty()) {
            hook.every = opt.checkpoint_every;
            hook.save = [&, offset](int, const float* c, const std::vector<std::vector<IterationStats>>& st) {
                absorb(st, absorbed, offset);
                absorbed = st[0].size();
                save(c);
            };
        }
        if (opt.on_iteration)
            seg.on_iteration = [&, offset](int64_t b, int it, const IterationStats& s) {
                opt.on_iteration(b, offset + it, shifted(b, s, offset));
            };
        const auto st = run_on(backend, x, centroids, seg, hook); // (before `absorbed` is read)
        absorb(st, absorbed, offset);
        // At checkpoint_every boundaries, at the end and when stopped (not after each of the
        // one-iteration calls of a stoppable CPU batch).
        if (opt.checkpoint_every > 0 || ck.iterations_done >= opt.niter || (stoppable && stop_requested()))
            save(centroids);
    }
    if (stoppable && stop_requested() && ck.iterations_done < opt.niter) {
        throw stopped_after(ck.iterations_done, opt.niter, opt.checkpoint_path);
    }
    return ck.stats;
}

} // namespace

std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt) {
    validate_problem(x, centroids, opt.k, opt.niter, opt.k_frozen);
    if (opt.checkpoint_every < 0)
        throw std::invalid_argument("faiss-flash: checkpoint_every must be >= 0, got " +
                                    std::to_string(opt.checkpoint_every));
    validate_placement(x, opt);
    const Backend backend = resolve_backend(opt.backend, x);
    if (x.device < 0) check_finite_host(x);
    check_weights_host(opt.weights, x.batch * x.n);
    if (opt.checkpoint_path.empty() && !opt.stop_on_sigint) return run_on(backend, x, centroids, opt);
    return run_resumable(backend, x, centroids, opt);
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
