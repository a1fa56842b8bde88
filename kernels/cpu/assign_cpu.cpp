#include "kernels/cpu/assign_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas_threads.h"
#include "kernels/cpu/half_convert.h"

namespace flash::cpu {

namespace {

// Tile sizes: a (kPointTile x kCentroidTile) fp32 product block is 512 KiB, small enough
// to stay in a core's L2 between the BLAS call that writes it and the argmin that reads
// it; kPointTile rows of d <= 1024 floats fit there too. Each OpenMP thread owns whole
// point tiles, so no synchronisation is needed inside the loop.
constexpr int64_t kPointTile = 256;
constexpr int64_t kCentroidTile = 512;

struct Best {
    float dis;
    int64_t idx;
};

// One point tile [i0, i0 + m) against all centroids.
void assign_tile(const float* xt, int64_t m, int64_t d, const float* xnorm, const float* centroids,
                 const float* cnorm, int64_t k, Metric metric, float* ip, Best* best) {
    const bool l2 = metric == Metric::L2;
    for (int64_t i = 0; i < m; i++)
        best[i] = {l2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity(), 0};
    for (int64_t j0 = 0; j0 < k; j0 += kCentroidTile) {
        const int64_t nj = std::min(kCentroidTile, k - j0);
        gemm_abt(int(m), int(nj), int(d), 1.0f, xt, centroids + j0 * d, ip);
        for (int64_t i = 0; i < m; i++) {
            const float* row = ip + i * nj;
            Best b = best[i];
            if (l2) {
                const float xn = xnorm[i];
                for (int64_t j = 0; j < nj; j++) {
                    // Same expression and order as FAISS' exhaustive_L2sqr_blas.
                    float dis = xn + cnorm[j0 + j] - 2 * row[j];
                    if (dis < 0) dis = 0;
                    if (dis < b.dis) b = {dis, j0 + j};
                }
            } else {
                for (int64_t j = 0; j < nj; j++)
                    if (row[j] > b.dis) b = {row[j], j0 + j};
            }
            best[i] = b;
        }
    }
}

} // namespace

void row_norms_sq(const float* x, int64_t n, int64_t d, float* norms) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double s = 0;
        const float* r = x + i * d;
        for (int64_t j = 0; j < d; j++) s += double(r[j]) * r[j];
        norms[i] = float(s);
    }
}

void assign_blocked(const void* x, DType dtype, int64_t n, int64_t d, const float* centroids,
                    int64_t k, Metric metric, int64_t* labels, float* distances) {
    std::vector<float> cnorm(k);
    row_norms_sq(centroids, k, d, cnorm.data());

    const int64_t ntiles = (n + kPointTile - 1) / kPointTile;
    ScopedSingleThreadedBlas single_blas;
    // If the BLAS cannot be kept to one thread, let it thread and loop over tiles serially.
    const int nthreads = single_blas.active() ? omp_get_max_threads() : 1;

#pragma omp parallel num_threads(nthreads)
    {
        std::vector<float> ip(kPointTile * kCentroidTile);
        std::vector<float> xconv(dtype == DType::F32 ? 0 : kPointTile * d);
        std::vector<float> xnorm(kPointTile);
        std::vector<Best> best(kPointTile);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntiles; t++) {
            const int64_t i0 = t * kPointTile;
            const int64_t m = std::min(kPointTile, n - i0);
            const float* xt;
            if (dtype == DType::F32) {
                xt = static_cast<const float*>(x) + i0 * d;
            } else {
                for (int64_t i = 0; i < m; i++) load_row(x, dtype, i0 + i, d, xconv.data() + i * d);
                xt = xconv.data();
            }
            row_norms_sq(xt, m, d, xnorm.data());
            assign_tile(xt, m, d, xnorm.data(), centroids, cnorm.data(), k, metric, ip.data(), best.data());
            for (int64_t i = 0; i < m; i++) {
                if (labels) labels[i0 + i] = best[i].idx;
                if (distances) distances[i0 + i] = best[i].dis;
            }
        }
    }
}

} // namespace flash::cpu
