#include "kernels/distributed/lloyd_mpi.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "kernels/cpu/half_convert.h"
#include "kernels/cpu/lloyd_cpu.h"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/lloyd_common.h"

namespace flash::distributed {

namespace {

void check_mpi(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("faiss-flash: MPI call failed: ") + what);
}

// Per-cluster sums of one shard, in double so that the all-reduce adds exactly rounded
// partial sums; counts are weighted (like FAISS' hassign) and plain (for the imbalance).
struct ClusterSums {
    std::vector<double> sums;    // (k, d)
    std::vector<double> weight;  // (k)
    std::vector<int64_t> count;  // (k)
    double obj = 0;
};

void accumulate(const Points& x, const std::vector<int64_t>& rows, const float* weights, const int64_t* labels,
                const float* dist, int64_t k, ClusterSums& s) {
    const int64_t d = x.d;
    s.sums.assign(size_t(k * d), 0.0);
    s.weight.assign(size_t(k), 0.0);
    s.count.assign(size_t(k), 0);
    s.obj = 0;
    std::vector<float> row(d);
    for (size_t r = 0; r < rows.size(); r++) {
        cpu::load_row(x.data, x.dtype, rows[r], d, row.data());
        const int64_t c = labels[r];
        const double w = weights ? weights[rows[r]] : 1.0;
        double* sc = s.sums.data() + c * d;
        for (int64_t j = 0; j < d; j++) sc[j] += w * row[j];
        s.weight[c] += w;
        s.count[c]++;
        s.obj += dist[r];
    }
}

} // namespace

std::vector<IterationStats> run_kmeans(MPI_Comm comm, const Points& local, float* centroids,
                                       const MpiKmeansOptions& opt) {
    int rank = 0, size = 1;
    check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
    const LloydOptions& lo = opt.lloyd;
    const int64_t k = lo.k, d = local.d;
    if (local.batch != 1) throw std::invalid_argument("faiss-flash: distributed k-means takes batch 1");
    if (local.device >= 0) throw std::invalid_argument("faiss-flash: distributed k-means takes host shards");
    if (local.data == nullptr && local.n > 0) throw std::invalid_argument("faiss-flash: shard data is a null pointer");
    if (centroids == nullptr) throw std::invalid_argument("faiss-flash: centroids is a null pointer");
    if (k <= 0 || d <= 0 || local.n < 0 || lo.niter < 0)
        throw std::invalid_argument("faiss-flash: need k > 0, d > 0, n >= 0, niter >= 0");

    // Global layout: this rank holds global rows [offset, offset + n_local).
    int64_t n_local = local.n, offset = 0, n_global = 0;
    check_mpi(MPI_Exscan(&n_local, &offset, 1, MPI_INT64_T, MPI_SUM, comm), "MPI_Exscan");
    if (rank == 0) offset = 0;
    check_mpi(MPI_Allreduce(&n_local, &n_global, 1, MPI_INT64_T, MPI_SUM, comm), "MPI_Allreduce");
    int64_t d_max = d, d_min = d;
    check_mpi(MPI_Allreduce(&d, &d_max, 1, MPI_INT64_T, MPI_MAX, comm), "MPI_Allreduce");
    check_mpi(MPI_Allreduce(&d, &d_min, 1, MPI_INT64_T, MPI_MIN, comm), "MPI_Allreduce");
    if (d_min != d_max) throw std::invalid_argument("faiss-flash: ranks disagree on the dimension d");
    if (n_global < k)
        throw std::invalid_argument("faiss-flash: number of training points (" + std::to_string(n_global) +
                                    ") should be at least as large as number of clusters (" + std::to_string(k) + ")");
    if (n_local > 0) check_finite_host(local);

    // Training rows, as faiss::Clustering picks them from the concatenated data: all rows,
    // or the first k * max_points_per_centroid of a permutation seeded with `seed`.
    std::vector<int64_t> rows;   // local row ids this rank trains on
    std::vector<int64_t> sample; // global row of training-set position i
    const int64_t cap = k * int64_t(opt.max_points_per_centroid);
    if (n_global > cap) {
        const auto perm = faiss_rand_perm(n_global, opt.seed);
        sample.assign(perm.begin(), perm.begin() + cap);
    } else {
        sample.resize(n_global);
        for (int64_t i = 0; i < n_global; i++) sample[i] = i;
    }
    for (int64_t g : sample)
        if (g >= offset && g < offset + n_local) rows.push_back(g - offset);
    std::sort(rows.begin(), rows.end());
    const int64_t n_train = int64_t(sample.size());

    // Initial centroids: training-set positions perm2[0..k) with perm2 seeded seed + 1; the
    // owner of each row contributes it, the others zeros, and a sum gathers them exactly.
    if (opt.init_centroids) {
        std::copy(opt.init_centroids, opt.init_centroids + k * d, centroids);
    } else {
        const auto perm2 = faiss_rand_perm(n_train, opt.seed + 1);
        std::vector<float> mine(size_t(k * d), 0.0f);
        for (int64_t c = 0; c < k; c++) {
            const int64_t g = sample[perm2[c]];
            if (g >= offset && g < offset + n_local) cpu::load_row(local.data, local.dtype, g - offset, d, &mine[c * d]);
        }
        check_mpi(MPI_Allreduce(mine.data(), centroids, int(k * d), MPI_FLOAT, MPI_SUM, comm), "MPI_Allreduce");
    }

    // Local training rows gathered once (the engine wants contiguous points).
    const size_t row_bytes = dtype_size(local.dtype) * d;
    std::vector<char> xs(rows.size() * row_bytes);
    for (size_t r = 0; r < rows.size(); r++)
        std::memcpy(xs.data() + r * row_bytes, static_cast<const char*>(local.data) + rows[r] * row_bytes, row_bytes);
    std::vector<float> ws;
    if (lo.weights) {
        ws.resize(rows.size());
        for (size_t r = 0; r < rows.size(); r++) ws[r] = lo.weights[rows[r]];
    }
    std::vector<int64_t> local_rows(rows.size());
    for (size_t r = 0; r < rows.size(); r++) local_rows[r] = int64_t(r);
    Points xl = local;
    xl.data = xs.data();
    xl.n = int64_t(rows.size());

    // On the CUDA engine the shard stays on this rank's GPU for the whole run (one device per
    // rank: cuda_device, else the rank's index among the ranks of its node), and each pass
    // returns the shard's cluster sums directly.
    std::unique_ptr<cuda_engine::PartialSums> gpu;
    if (xl.n > 0 && resolve_backend(lo.backend, xl) == Backend::CUDA) {
        LloydOptions go = lo;
        go.weights = ws.empty() ? nullptr : ws.data();
        if (go.cuda_device < 0 && go.cuda_devices.empty()) {
            MPI_Comm node;
            int local_rank = 0;
            check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node),
                      "MPI_Comm_split_type");
            check_mpi(MPI_Comm_rank(node, &local_rank), "MPI_Comm_rank");
            MPI_Comm_free(&node);
            go.cuda_device = local_rank % std::max(1, cuda_engine::device_count());
        }
        gpu = std::make_unique<cuda_engine::PartialSums>(xl, go);
    }

    std::vector<IterationStats> stats;
    std::vector<int64_t> labels(gpu ? 0 : rows.size());
    std::vector<float> dist(gpu ? 0 : rows.size());
    ClusterSums s;
    s.sums.assign(size_t(k * d), 0.0);
    s.weight.assign(size_t(k), 0.0);
    s.count.assign(size_t(k), 0);
    std::vector<int64_t> count(static_cast<size_t>(k));
    std::vector<float> counts_f(static_cast<size_t>(k));
    const double t0 = wall_seconds();
    double search = 0;
    for (int it = 0; it < lo.niter; it++) {
        const double ts = wall_seconds();
        if (gpu) {
            gpu->run(centroids, s.sums.data(), s.weight.data(), s.count.data(), &s.obj);
            search += wall_seconds() - ts;
        } else {
            if (xl.n > 0)
                assign_nearest(xl, centroids, k, lo.metric, labels.data(), dist.data(), lo.backend, lo.cuda_device);
            search += wall_seconds() - ts;
            accumulate(xl, local_rows, ws.empty() ? nullptr : ws.data(), labels.data(), dist.data(), k, s);
        }

        // One all-reduce of sums, weighted counts, counts and objective.
        std::vector<double> packed(s.sums);
        packed.insert(packed.end(), s.weight.begin(), s.weight.end());
        packed.push_back(s.obj);
        std::vector<double> total(packed.size());
        check_mpi(MPI_Allreduce(packed.data(), total.data(), int(packed.size()), MPI_DOUBLE, MPI_SUM, comm),
                  "MPI_Allreduce");
        check_mpi(MPI_Allreduce(s.count.data(), count.data(), int(k), MPI_INT64_T, MPI_SUM, comm), "MPI_Allreduce");

        centroids_from_sums(total.data(), total.data() + k * d, k, d, lo.k_frozen, centroids, counts_f.data());
        IterationStats st;
        st.obj = total[k * d + k];
        st.nsplit = split_empty_clusters(d, k, n_train, lo.k_frozen, counts_f.data(), centroids);
        st.imbalance = imbalance_from_counts(count.data(), k);
        st.time_s = wall_seconds() - t0;
        st.search_time_s = search;
        cpu::post_process_centroids(centroids, k, d, lo.spherical, lo.int_centroids);
        stats.push_back(st);
        if (lo.on_iteration) lo.on_iteration(0, it, st);
    }
    return stats;
}

} // namespace flash::distributed
