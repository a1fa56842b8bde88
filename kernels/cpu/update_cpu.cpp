#include "kernels/cpu/update_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/half_convert.h"

namespace flash::cpu {

void sort_by_cluster(const int64_t* labels, int64_t n, int64_t k, std::vector<int64_t>& order,
                     std::vector<int64_t>& offsets) {
    const int nt = std::max(1, std::min<int>(omp_get_max_threads(), int(n / 4096) + 1));
    // hist[t * k + c]: points of cluster c in thread t's contiguous chunk of points.
    std::vector<int64_t> hist(size_t(nt) * k, 0);
    order.resize(n);
    offsets.assign(k + 1, 0);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        const int64_t p0 = n * t / nt, p1 = n * (t + 1) / nt;
        int64_t* h = hist.data() + size_t(t) * k;
        for (int64_t i = p0; i < p1; i++) h[labels[i]]++;
#pragma omp barrier
#pragma omp single
        {
            // Exclusive scan in (cluster, thread) order keeps the sort stable.
            int64_t run = 0;
            for (int64_t c = 0; c < k; c++) {
                offsets[c] = run;
                for (int s = 0; s < nt; s++) {
                    int64_t cnt = hist[size_t(s) * k + c];
                    hist[size_t(s) * k + c] = run;
                    run += cnt;
                }
            }
            offsets[k] = run;
        }
        for (int64_t i = p0; i < p1; i++) order[h[labels[i]]++] = i;
    }
}

void update_centroids(const void* x, DType dtype, int64_t n, int64_t d, const int64_t* labels,
                      const float* weights, int64_t k, int64_t k_frozen, float* centroids, float* counts) {
    std::vector<int64_t> order, offsets;
    sort_by_cluster(labels, n, k, order, offsets);

#pragma omp parallel
    {
        std::vector<float> row(dtype == DType::F32 ? 0 : d);
#pragma omp for schedule(dynamic, 16)
        for (int64_t c = k_frozen; c < k; c++) {
            float* cen = centroids + c * d;
            std::memset(cen, 0, sizeof(float) * d);
            float h = 0;
            for (int64_t s = offsets[c]; s < offsets[c + 1]; s++) {
                const int64_t i = order[s];
                const float* xi;
                if (dtype == DType::F32) {
                    xi = static_cast<const float*>(x) + i * d;
                } else {
                    load_row(x, dtype, i, d, row.data());
                    xi = row.data();
                }
                if (weights) {
                    const float w = weights[i];
                    h += w;
                    for (int64_t j = 0; j < d; j++) cen[j] += xi[j] * w;
                } else {
                    h += 1.0;
                    for (int64_t j = 0; j < d; j++) cen[j] += xi[j];
                }
            }
            counts[c - k_frozen] = h;
            if (h == 0) continue;
            const float norm = 1 / h;
            for (int64_t j = 0; j < d; j++) cen[j] *= norm;
        }
    }
}

} // namespace flash::cpu
