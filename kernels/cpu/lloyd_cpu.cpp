#include "kernels/cpu/lloyd_cpu.h"

#include <cmath>

#include "kernels/cpu/assign_cpu.h"
#include "kernels/cpu/update_cpu.h"
#include "kernels/lloyd_common.h"

namespace flash::cpu {

void post_process_centroids(float* centroids, int64_t k, int64_t d, bool spherical, bool int_centroids) {
    if (spherical) {
#pragma omp parallel for
        for (int64_t c = 0; c < k; c++) {
            float* r = centroids + c * d;
            double s = 0;
            for (int64_t j = 0; j < d; j++) s += double(r[j]) * r[j];
            if (s > 0) {
                const float inv = float(1 / std::sqrt(s));
                for (int64_t j = 0; j < d; j++) r[j] *= inv;
            }
        }
    }
    if (int_centroids)
        for (int64_t i = 0; i < k * d; i++) centroids[i] = std::round(centroids[i]);
}

std::vector<std::vector<IterationStats>> run_lloyd(const Points& x, float* centroids, const LloydOptions& opt) {
    const int64_t n = x.n, d = x.d, k = opt.k;
    const size_t row_bytes = dtype_size(x.dtype) * d;
    std::vector<std::vector<IterationStats>> all_stats(x.batch);
    std::vector<int64_t> labels(n);
    std::vector<float> dist(n), counts(k - opt.k_frozen);

    for (int64_t b = 0; b < x.batch; b++) {
        const void* xb = static_cast<const char*>(x.data) + size_t(b) * n * row_bytes;
        float* cb = centroids + size_t(b) * k * d;
        const float* wb = opt.weights ? opt.weights + size_t(b) * n : nullptr;
        const double t0 = wall_seconds();
        double search_s = 0;
        for (int it = 0; it < opt.niter; it++) {
            // A single problem can stop between any two iterations (the caller sees fewer
            // stats than niter); batches stop between calls, where all problems agree.
            if (opt.stop_on_sigint && x.batch == 1 && stop_requested()) break;
            const double ts = wall_seconds();
            assign_blocked(xb, x.dtype, n, d, cb, k, opt.metric, labels.data(), dist.data());
            search_s += wall_seconds() - ts;

            // The objective as FAISS accumulates it: a float sum in point order.
            float obj = 0;
            for (int64_t i = 0; i < n; i++) obj += dist[i];

            update_centroids(xb, x.dtype, n, d, labels.data(), wb, k, opt.k_frozen, cb, counts.data());
            const int nsplit = split_empty_clusters(d, k, n, opt.k_frozen, counts.data(), cb);

            IterationStats st;
            st.obj = obj;
            st.time_s = wall_seconds() - t0;
            st.search_time_s = search_s;
            st.imbalance = imbalance_factor(labels.data(), n, k);
            st.nsplit = nsplit;
            all_stats[b].push_back(st);

            if (opt.post_process)
                opt.post_process(cb, k, d);
            else
                post_process_centroids(cb, k, d, opt.spherical, opt.int_centroids);
            if (opt.on_iteration) opt.on_iteration(b, it, st);
        }
    }
    return all_stats;
}

} // namespace flash::cpu
