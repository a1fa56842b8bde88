#include "kernels/distributed/lloyd_mpi.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "kernels/checkpoint.h"
#include "kernels/cpu/half_convert.h"
#include "kernels/cpu/lloyd_cpu.h"
#include "kernels/cuda/cuda_engine.h"
#include "kernels/distributed/lloyd_mpi_detail.h"
#include "kernels/lloyd_common.h"
#include "kernels/stop_scope.h"

namespace flash::distributed {

namespace {

void check_mpi(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("faiss-flash: MPI call failed: ") + what);
}

// Failures of one rank made collective. local() runs a step on this rank and keeps its
// exception (a rank that failed skips later steps); agree() is collective and makes every
// rank throw if any rank failed: the failing ranks their own exception, the others
// RankFailed with the message of the lowest failing rank. Every check that one rank alone
// can fail reaches an agree() before the next collective that depends on it, so no rank is
// left waiting in a collective that another rank never enters.
class Failures {
  public:
    explicit Failures(MPI_Comm comm) : comm_(comm) {
        check_mpi(MPI_Comm_rank(comm, &rank_), "MPI_Comm_rank");
        check_mpi(MPI_Comm_size(comm, &size_), "MPI_Comm_size");
    }

    template <class Step>
    void local(Step&& step) {
        if (error_) return;
        try {
            step();
        } catch (...) {
            error_ = std::current_exception();
        }
    }

    bool failed() const { return bool(error_); }

    void agree() {
        int lowest = error_ ? rank_ : size_;
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, &lowest, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce");
        if (lowest < size_) raise(lowest);
    }

  private:
    // Collective: the lowest failing rank broadcasts its message.
    [[noreturn]] void raise(int lowest) {
        std::string msg;
        if (rank_ == lowest) {
            try {
                std::rethrow_exception(error_);
            } catch (const std::exception& e) {
                msg = e.what();
            } catch (...) {
                msg = "unknown exception";
            }
            if (msg.size() > 4096) msg.resize(4096);
        }
        int len = int(msg.size());
        check_mpi(MPI_Bcast(&len, 1, MPI_INT, lowest, comm_), "MPI_Bcast");
        msg.resize(size_t(len));
        check_mpi(MPI_Bcast(msg.data(), len, MPI_CHAR, lowest, comm_), "MPI_Bcast");
        if (error_) std::rethrow_exception(error_);
        throw RankFailed(
            lowest, "faiss-flash: rank " + std::to_string(lowest) + " of " + std::to_string(size_) + " failed: " + msg);
    }

    MPI_Comm comm_;
    int rank_ = 0, size_ = 1;
    std::exception_ptr error_;
};

// What one rank can check on its own (the same checks fail on every rank when the options
// are wrong; the shard checks may fail on one rank only).
void validate_arguments(const Points& local, const float* centroids, const MpiKmeansOptions& opt) {
    auto fail = [](const std::string& m) { throw std::invalid_argument("faiss-flash: " + m); };
    const LloydOptions& lo = opt.lloyd;
    if (lo.checkpoint_every < 0) fail("checkpoint_every must be >= 0, got " + std::to_string(lo.checkpoint_every));
    if (local.batch != 1) fail("distributed k-means takes batch 1, got " + std::to_string(local.batch));
    if (local.device >= 0)
        fail("distributed k-means takes host shards, got CUDA device " + std::to_string(local.device));
    if (local.n < 0) fail("number of points n of the shard must be >= 0, got " + std::to_string(local.n));
    if (local.data == nullptr && local.n > 0) fail("shard data is a null pointer");
    validate_run(local.d, local.dtype, centroids, lo.k, lo.niter, lo.k_frozen);
    if (opt.max_points_per_centroid <= 0)
        fail("max_points_per_centroid must be positive, got " + std::to_string(opt.max_points_per_centroid));
}

// The options that shape the collectives and the result must agree across ranks (one
// all-reduce of the values and their negations gives every rank the max and the min).
void check_same_options(MPI_Comm comm, const Points& local, const MpiKmeansOptions& opt) {
    const LloydOptions& lo = opt.lloyd;
    constexpr int kFields = 13;
    const char* names[kFields] = {"the dimension d",
                                  "k",
                                  "niter",
                                  "metric",
                                  "spherical",
                                  "int_centroids",
                                  "k_frozen",
                                  "seed",
                                  "max_points_per_centroid",
                                  "whether init_centroids is given",
                                  "whether checkpoint_path is given",
                                  "checkpoint_every",
                                  "stop_on_sigint"};
    int64_t v[2 * kFields] = {local.d,
                              lo.k,
                              lo.niter,
                              int64_t(lo.metric),
                              int64_t(lo.spherical),
                              int64_t(lo.int_centroids),
                              lo.k_frozen,
                              opt.seed,
                              opt.max_points_per_centroid,
                              int64_t(opt.init_centroids != nullptr),
                              int64_t(!lo.checkpoint_path.empty()),
                              lo.checkpoint_every,
                              int64_t(lo.stop_on_sigint)};
    for (int i = 0; i < kFields; i++) v[kFields + i] = -v[i]; // values are validated, far from INT64_MIN
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, v, 2 * kFields, MPI_INT64_T, MPI_MAX, comm), "MPI_Allreduce");
    for (int i = 0; i < kFields; i++)
        if (v[i] != -v[kFields + i])
            throw std::invalid_argument(std::string("faiss-flash: ranks disagree on ") + names[i] + " (values from " +
                                        std::to_string(-v[kFields + i]) + " to " + std::to_string(v[i]) + ")");
}

// This rank's index among the ranks of its node (the GPU it uses by default). Collective:
// every rank calls it, whatever its shard size or backend.
int node_rank(MPI_Comm comm, int rank) {
    MPI_Comm node;
    int r = 0;
    check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
    check_mpi(MPI_Comm_rank(node, &r), "MPI_Comm_rank");
    MPI_Comm_free(&node);
    return r;
}

// Per-cluster sums of the n rows of x, in double so that the all-reduce adds exactly
// rounded partial sums; counts are weighted (like FAISS' hassign) and plain (for the
// imbalance). sums: (k, d), wsum: (k), count: (k), all overwritten.
void accumulate(const Points& x, const float* weights, const int64_t* labels, const float* dist, int64_t k,
                double* sums, double* wsum, int64_t* count, double* obj) {
    const int64_t d = x.d;
    std::fill(sums, sums + k * d, 0.0);
    std::fill(wsum, wsum + k, 0.0);
    std::fill(count, count + k, int64_t(0));
    *obj = 0;
    std::vector<float> row(d);
    for (int64_t r = 0; r < x.n; r++) {
        cpu::load_row(x.data, x.dtype, r, d, row.data());
        const int64_t c = labels[r];
        const double w = weights ? weights[r] : 1.0;
        double* sc = sums + c * d;
        for (int64_t j = 0; j < d; j++) sc[j] += w * row[j];
        wsum[c] += w;
        count[c]++;
        *obj += dist[r];
    }
}

} // namespace

namespace detail {

namespace {

// call(piece, count) over buf's n elements of type in pieces of at most max_count.
template <class Call>
void in_pieces(void* buf, int64_t n, MPI_Datatype type, int64_t max_count, Call&& call) {
    int elem = 0;
    check_mpi(MPI_Type_size(type, &elem), "MPI_Type_size");
    char* p = static_cast<char*>(buf);
    for (int64_t off = 0; off < n; off += max_count) call(p + off * elem, int(std::min(max_count, n - off)));
}

} // namespace

void bcast(MPI_Comm comm, void* buf, int64_t n, MPI_Datatype type, int root, int64_t max_count) {
    in_pieces(buf, n, type, max_count,
              [&](void* piece, int count) { check_mpi(MPI_Bcast(piece, count, type, root, comm), "MPI_Bcast"); });
}

void allreduce_in_place(MPI_Comm comm, void* buf, int64_t n, MPI_Datatype type, MPI_Op op, int64_t max_count) {
    in_pieces(buf, n, type, max_count, [&](void* piece, int count) {
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, piece, count, type, op, comm), "MPI_Allreduce");
    });
}

std::vector<int64_t> rand_perm_prefix(int64_t n, int64_t m, int64_t seed) {
    if (m < 0 || m > n) throw std::logic_error("rand_perm_prefix: need 0 <= m <= n");
    if (4 * m > n) { // the whole permutation is about as small as the map
        std::vector<int64_t> perm = faiss_rand_perm(n, seed);
        perm.resize(size_t(m));
        return perm;
    }
    // Same draws as faiss_rand_perm; moved[p] is the entry at position p > i where it is not p.
    std::vector<int64_t> out(static_cast<size_t>(m));
    std::unordered_map<int64_t, int64_t> moved;
    moved.reserve(size_t(m));
    std::mt19937 rng((unsigned int)seed);
    for (int64_t i = 0; i < m; i++) {
        int64_t vi = i;
        if (const auto at = moved.find(i); at != moved.end()) {
            vi = at->second;
            moved.erase(at);
        }
        const int64_t i2 = i + int64_t(rng() % uint32_t(n - i)); // m < n here, so i + 1 < n
        if (i2 == i) {
            out[i] = vi;
            continue;
        }
        const auto at2 = moved.find(i2);
        out[i] = at2 == moved.end() ? i2 : at2->second;
        moved[i2] = vi;
    }
    return out;
}

} // namespace detail

void run_collectively(MPI_Comm comm, const std::function<void()>& step) {
    Failures failures(comm);
    failures.local(step);
    failures.agree();
}

std::vector<IterationStats> run_kmeans(MPI_Comm comm, const Points& local, float* centroids,
                                       const MpiKmeansOptions& opt) {
    int rank = 0, size = 1;
    check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
    const LloydOptions& lo = opt.lloyd;
    // As the engine: SIGINT stops the run while it goes on, and a request left from before the
    // call is dropped unless another stoppable run is in progress (on entry: one made while the
    // run sets up stops it after its first iteration).
    const StopScope stop_scope(lo.stop_on_sigint);
    Failures failures(comm);
    failures.local([&] { validate_arguments(local, centroids, opt); });
    failures.agree();
    check_same_options(comm, local, opt);
    const int64_t k = lo.k, d = local.d;
    const int local_rank = node_rank(comm, rank);

    // Global layout: this rank holds global rows [offset, offset + n_local).
    int64_t n_local = local.n, offset = 0, n_global = 0;
    check_mpi(MPI_Exscan(&n_local, &offset, 1, MPI_INT64_T, MPI_SUM, comm), "MPI_Exscan");
    if (rank == 0) offset = 0;
    check_mpi(MPI_Allreduce(&n_local, &n_global, 1, MPI_INT64_T, MPI_SUM, comm), "MPI_Allreduce");
    check_enough_points(n_global, k);
    auto owned = [&](int64_t g) { return g >= offset && g < offset + n_local; };

    // Training set, as faiss::Clustering picks it from the concatenated data: all rows, or the
    // first k * max_points_per_centroid of a permutation seeded with `seed`. Then this rank's
    // training rows gathered once (the engines want contiguous points), and its engine: on
    // CUDA the shard stays on this rank's GPU for the whole run (cuda_device, else the rank's
    // index among the ranks of its node) and each pass returns the shard's cluster sums.
    const int64_t cap = k * int64_t(opt.max_points_per_centroid);
    const int64_t n_train = std::min(n_global, cap);
    std::vector<int64_t> sample; // (n_train) global row of training-set position i
    std::vector<char> xs;        // (rows, d) this rank's training rows, in global order
    std::vector<float> ws;       // (rows) their weights, or empty
    Points xl = local;
    std::unique_ptr<cuda_engine::PartialSums> gpu;
    // One all-reduce per iteration: (k, d) sums, (k) weighted counts, the objective, a failure
    // flag and a stop flag; the (k) plain counts go in a second one (int64).
    std::vector<double> packed;
    std::vector<int64_t> count;
    std::vector<int64_t> labels;
    std::vector<float> dist, counts_f;
    failures.local([&] {
        if (n_local > 0) check_finite_host(local);
        check_weights_host(lo.weights, n_local);
        if (n_global > cap) {
            sample = detail::rand_perm_prefix(n_global, cap, opt.seed);
        } else {
            sample.resize(size_t(n_global));
            for (int64_t i = 0; i < n_global; i++) sample[i] = i;
        }
        std::vector<int64_t> rows; // local row ids this rank trains on
        for (int64_t g : sample)
            if (owned(g)) rows.push_back(g - offset);
        std::sort(rows.begin(), rows.end());
        const size_t row_bytes = dtype_size(local.dtype) * size_t(d);
        xs.resize(rows.size() * row_bytes);
        for (size_t r = 0; r < rows.size(); r++)
            std::memcpy(xs.data() + r * row_bytes, static_cast<const char*>(local.data) + rows[r] * row_bytes,
                        row_bytes);
        if (lo.weights) {
            ws.resize(rows.size());
            for (size_t r = 0; r < rows.size(); r++) ws[r] = lo.weights[rows[r]];
        }
        xl.data = xs.data();
        xl.n = int64_t(rows.size());
        if (xl.n > 0 && n_train > k && resolve_backend(lo.backend, xl) == Backend::CUDA) {
            LloydOptions go = lo;
            go.weights = ws.empty() ? nullptr : ws.data();
            if (go.cuda_device < 0 && go.cuda_devices.empty())
                go.cuda_device = local_rank % std::max(1, cuda_engine::device_count());
            gpu = std::make_unique<cuda_engine::PartialSums>(xl, go);
        }
        packed.assign(size_t(k * d + k + 3), 0.0);
        count.assign(size_t(k), 0);
        counts_f.assign(size_t(k), 0.0f);
        if (!gpu) {
            labels.resize(size_t(xl.n));
            dist.resize(size_t(xl.n));
        }
    });
    failures.agree();

    // Centroid c is global row rows_of(c): its owner contributes it, the others zeros, and a
    // bitwise OR gathers the exact bits (a float sum would turn -0 into +0).
    auto gather_rows = [&](auto rows_of) {
        std::fill(centroids, centroids + k * d, 0.0f);
        for (int64_t c = 0; c < k; c++) {
            const int64_t g = rows_of(c);
            if (owned(g)) cpu::load_row(local.data, local.dtype, g - offset, d, centroids + c * d);
        }
        detail::allreduce_in_place(comm, centroids, k * d, MPI_UINT32_T, MPI_BOR);
    };

    // As faiss::Clustering: a training set of exactly k points is the centroids, in
    // training-set order, without iterations or post-processing.
    if (n_train == k) {
        gather_rows([&](int64_t c) { return sample[c]; });
        IterationStats st;
        st.imbalance = 1;
        return {st};
    }

    // Initial centroids: training-set positions perm2[0..k) with perm2 seeded seed + 1, or
    // the given ones; then post-processed like every update (faiss::Clustering does both).
    if (opt.init_centroids) {
        std::copy(opt.init_centroids, opt.init_centroids + k * d, centroids);
    } else {
        const std::vector<int64_t> perm2 = detail::rand_perm_prefix(n_train, k, int64_t(opt.seed) + 1);
        gather_rows([&](int64_t c) { return sample[perm2[c]]; });
    }
    auto post_process = [&] {
        if (lo.post_process)
            lo.post_process(centroids, k, d);
        else
            cpu::post_process_centroids(centroids, k, d, lo.spherical, lo.int_centroids);
    };
    failures.local(post_process);

    // Resumable runs (checkpoint_path, on every rank): rank 0 writes the checkpoint, after every
    // checkpoint_every iterations and at the end (or when stopped); a run that finds one of the
    // same run (the same shards in the same ranks, options and initial centroids) continues from
    // its centroids and stats, which rank 0 reads and sends to every rank.
    std::vector<IterationStats> stats;
    Checkpoint ck;
    const bool checkpointing = !lo.checkpoint_path.empty();
    if (checkpointing) {
        failures.agree(); // (the initial post-processing) before the collectives below
        Points shard = local;
        if (shard.n == 0) shard.data = nullptr; // (its shape only)
        const uint64_t mine[2] = {data_fingerprint(shard), run_fingerprint(shard, centroids, lo)};
        std::vector<uint64_t> all(size_t(2 * size));
        check_mpi(MPI_Allgather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, comm), "MPI_Allgather");
        std::vector<uint64_t> data_parts = {uint64_t(opt.seed), uint64_t(opt.max_points_per_centroid)}, run_parts;
        for (int r = 0; r < size; r++) {
            data_parts.push_back(all[2 * r]);
            run_parts.push_back(all[2 * r + 1]);
        }
        ck.batch = 1;
        ck.n = n_global;
        ck.d = d;
        ck.k = k;
        ck.metric = int(lo.metric);
        ck.data_fingerprint = combine_fingerprints(data_parts);
        ck.run_fingerprint = combine_fingerprints(run_parts);
        int64_t resumed = 0;
        failures.local([&] {
            Checkpoint found;
            if (rank != 0 || !load_checkpoint(lo.checkpoint_path, found)) return;
            check_same_run(found, ck, lo.niter, lo.checkpoint_path);
            resumed = found.iterations_done;
            stats = found.stats[0];
            std::copy(found.centroids.begin(), found.centroids.end(), centroids);
        });
        failures.agree();
        check_mpi(MPI_Bcast(&resumed, 1, MPI_INT64_T, 0, comm), "MPI_Bcast");
        if (resumed > 0) {
            detail::bcast(comm, centroids, k * d, MPI_FLOAT, 0);
            stats.resize(size_t(resumed));
            detail::bcast(comm, stats.data(), resumed * int64_t(sizeof(IterationStats)), MPI_BYTE, 0);
            if (lo.on_iteration) // callers see the whole history
                failures.local([&] {
                    for (int it = 0; it < int(resumed); it++) lo.on_iteration(0, it, stats[it]);
                });
        }
    }
    auto save = [&] { // rank 0, after the iterations in stats
        if (!checkpointing || rank != 0) return;
        ck.iterations_done = int(stats.size());
        ck.stats = {stats};
        ck.centroids.assign(centroids, centroids + k * d);
        save_checkpoint(lo.checkpoint_path, ck);
    };

    double* sums = packed.data(); // (k, d)
    double* wsum = sums + k * d;  // (k)
    double* obj = wsum + k;       // (1)
    double* failed = obj + 1;     // (1) number of ranks that failed
    double* stop = failed + 1;    // (1) number of ranks asked to stop (stop_on_sigint)
    const double t_before = stats.empty() ? 0 : stats.back().time_s; // (a resumed run's time goes on)
    const double t0 = wall_seconds() - t_before;
    double search = stats.empty() ? 0 : stats.back().search_time_s;
    for (int it = int(stats.size()); it < lo.niter; it++) {
        const double ts = wall_seconds();
        failures.local([&] {
            if (gpu) {
                gpu->run(centroids, sums, wsum, count.data(), obj);
                search += wall_seconds() - ts;
            } else {
                if (xl.n > 0)
                    assign_nearest(xl, centroids, k, lo.metric, labels.data(), dist.data(), lo.backend, lo.cuda_device);
                search += wall_seconds() - ts;
                accumulate(xl, ws.empty() ? nullptr : ws.data(), labels.data(), dist.data(), k, sums, wsum,
                           count.data(), obj);
            }
        });
        *failed = failures.failed() ? 1 : 0;
        *stop = lo.stop_on_sigint && stop_requested() ? 1 : 0;
        detail::allreduce_in_place(comm, packed.data(), int64_t(packed.size()), MPI_DOUBLE, MPI_SUM);
        if (*failed != 0) failures.agree(); // throws on every rank
        detail::allreduce_in_place(comm, count.data(), k, MPI_INT64_T, MPI_SUM);

        centroids_from_sums(sums, wsum, k, d, lo.k_frozen, centroids, counts_f.data());
        IterationStats st;
        st.obj = *obj;
        st.nsplit = split_empty_clusters(d, k, n_train, lo.k_frozen, counts_f.data(), centroids);
        st.imbalance = imbalance_from_counts(count.data(), k);
        st.time_s = wall_seconds() - t0;
        st.search_time_s = search;
        failures.local(post_process);
        stats.push_back(st);
        if (lo.on_iteration) failures.local([&] { lo.on_iteration(0, it, st); });
        const bool stopping = *stop != 0 && it + 1 < lo.niter; // (the same on every rank: a sum; none after the last)
        if (checkpointing &&
            (stopping || it + 1 == lo.niter || (lo.checkpoint_every > 0 && (it + 1) % lo.checkpoint_every == 0)))
            failures.local(save);
        if (stopping) {
            failures.agree();
            throw stopped_after(it + 1, lo.niter, lo.checkpoint_path); // (empty: not checkpointing)
        }
    }
    failures.agree(); // post-processing, callback or checkpoint failures since the last all-reduce
    return stats;
}

} // namespace flash::distributed
