#include "kernels/sharded_lloyd.h"

#include "kernels/cpu/lloyd_cpu.h"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/lloyd_common.h"

namespace flash {

bool wants_sharded_run(const Points& x, const LloydOptions& opt) {
    if (x.device >= 0) return false;
    if (opt.cuda_devices.size() > 1 || opt.streaming == Streaming::Force || opt.device_memory_limit > 0) return true;
    if (x.dtype == DType::F32 && opt.transfer_dtype != DType::F32) return true;
    if (opt.streaming == Streaming::Off) return false;
    const int dev = !opt.cuda_devices.empty() ? opt.cuda_devices[0] : (opt.cuda_device >= 0 ? opt.cuda_device : 0);
    return !cuda_engine::fits_in_memory(x, opt.k, dev, opt.fp32_mode == Fp32Mode::TF32);
}

std::vector<std::vector<IterationStats>> run_lloyd_sharded(const Points& x, float* centroids, const LloydOptions& opt,
                                                           const CheckpointHook& checkpoint) {
    const double t0 = wall_seconds();
    const int64_t B = x.batch, k = opt.k, d = x.d;
    cuda_engine::PartialSums pass(x, opt);
    std::vector<double> sums(B * k * d), wsums(B * k), obj(B);
    std::vector<int64_t> sizes(B * k);
    std::vector<float> counts(k - opt.k_frozen);
    std::vector<std::vector<IterationStats>> stats(B);
    double search = 0;
    for (int it = 0; it < opt.niter; it++) {
        if (opt.stop_on_sigint && stop_requested()) break; // all problems of the batch stop together
        const double ts = wall_seconds();
        pass.run(centroids, sums.data(), wsums.data(), sizes.data(), obj.data());
        search += wall_seconds() - ts;
        for (int64_t b = 0; b < B; b++) {
            float* cb = centroids + b * k * d;
            centroids_from_sums(sums.data() + b * k * d, wsums.data() + b * k, k, d, opt.k_frozen, cb, counts.data());
            IterationStats st;
            st.obj = obj[b];
            st.nsplit = split_empty_clusters(d, k, x.n, opt.k_frozen, counts.data(), cb);
            st.imbalance = imbalance_from_counts(sizes.data() + b * k, k);
            st.time_s = wall_seconds() - t0;
            st.search_time_s = search;
            if (opt.post_process)
                opt.post_process(cb, k, d);
            else
                cpu::post_process_centroids(cb, k, d, opt.spherical, opt.int_centroids);
            stats[b].push_back(st);
            if (opt.on_iteration) opt.on_iteration(b, it, st);
        }
        if (checkpoint.due(it + 1, opt.niter)) checkpoint.save(it + 1, centroids, stats);
    }
    if (opt.placement) *opt.placement = pass.placement();
    return stats;
}

} // namespace flash
