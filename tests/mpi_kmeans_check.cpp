// Run under mpirun -np P: distributed k-means (CPU engine) on shards of a dataset must
// equal the single-process FlashClustering run on the whole dataset (same seed): bit for bit
// on integer-valued data (exact sums, also with weights that are multiples of 1/2), within
// float tolerance on Gaussian data. Also: a failure on one rank (NaN in its shard, bad
// arguments, a throwing hook) makes every rank throw instead of leaving the others in a
// collective, and the building blocks (chunked all-reduce, permutation prefix) against their
// plain counterparts.
//   mpi_kmeans_check --write-fvecs PATH N D NAN_ROW   (no MPI) writes an .fvecs file of N
//   rows with a NaN in row NAN_ROW, for the tool's test.
#include <faiss/IndexFlat.h>
#include <faiss/utils/distances.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>

#include "faiss_ext/FlashClustering.h"
#include "kernels/checkpoint.h"
#include "kernels/distributed/lloyd_mpi.h"
#include "kernels/distributed/lloyd_mpi_detail.h"
#include "kernels/lloyd_common.h"
#include "test_data.h"

namespace {

int failures = 0, checks = 0;

void expect(bool ok, const std::string& what) {
    checks++;
    if (!ok) {
        failures++;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

int mpi_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int mpi_size() {
    int s = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

// Shard boundaries: even split, or rank r owning a share proportional to r + 1.
std::vector<int64_t> shard_bounds(int64_t n, bool uneven) {
    const int size = mpi_size();
    std::vector<int64_t> bounds(size + 1, 0);
    const int64_t total_w = int64_t(size) * (size + 1) / 2;
    for (int r = 0; r < size; r++) bounds[r + 1] = uneven ? bounds[r] + n * (r + 1) / total_w : n * (r + 1) / size;
    bounds[size] = n;
    return bounds;
}

struct Case {
    std::string name;
    int64_t n = 0, d = 0, k = 0;
    int max_ppc = 1000;
    bool exact = true, uneven = false;
    flash::Metric metric = flash::Metric::L2;
    bool spherical = false;
    bool faiss_post_process = false; ///< the MPI run post-processes with FAISS' code (bit-exact spherical)
    const float* init = nullptr;     ///< (k, d) initial centroids, or null
    const float* weights = nullptr;  ///< (n) per-row weights of the whole dataset, or null
};

// FAISS' Clustering::post_process_centroids for spherical runs (float norms, unlike the
// engine's default), as FlashClustering applies it.
void faiss_renorm(float* c, int64_t k, int64_t d) {
    faiss::fvec_renorm_L2(size_t(d), size_t(k), c);
}

void run_case(const Case& c, const std::vector<float>& x) {
    const int rank = mpi_rank(), size = mpi_size();
    const int64_t n = c.n, d = c.d, k = c.k;
    const auto bounds = shard_bounds(n, c.uneven);
    flash::Points local;
    local.data = x.data() + bounds[rank] * d;
    local.n = bounds[rank + 1] - bounds[rank];
    local.d = d;
    flash::distributed::MpiKmeansOptions opt;
    opt.lloyd.k = k;
    opt.lloyd.niter = 8;
    opt.lloyd.backend = flash::Backend::CPU;
    opt.lloyd.metric = c.metric;
    opt.lloyd.spherical = c.spherical;
    if (c.weights) opt.lloyd.weights = c.weights + bounds[rank]; // this shard's rows
    if (c.faiss_post_process) opt.lloyd.post_process = faiss_renorm;
    opt.max_points_per_centroid = c.max_ppc;
    opt.init_centroids = c.init;
    std::vector<float> cen(k * d);
    const auto stats = flash::distributed::run_kmeans(MPI_COMM_WORLD, local, cen.data(), opt);
    if (rank != 0) return;

    faiss_flash::FlashClustering ref(static_cast<int>(d), static_cast<int>(k));
    ref.niter = 8;
    ref.max_points_per_centroid = c.max_ppc;
    ref.spherical = c.spherical;
    ref.flash.backend = flash::Backend::CPU;
    if (c.init) ref.centroids.assign(c.init, c.init + k * d);
    faiss::IndexFlat index(d, c.metric == flash::Metric::L2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT);
    ref.train(n, x.data(), index, c.weights);
    const std::string tag = c.name + " (np=" + std::to_string(size) + ")";
    if (c.exact) {
        expect(std::memcmp(ref.centroids.data(), cen.data(), sizeof(float) * k * d) == 0,
               tag + ": centroids not bit-identical");
    } else {
        double worst = 0;
        for (int64_t i = 0; i < k * d; i++)
            worst = std::max(worst, double(std::fabs(ref.centroids[i] - cen[i])) / (1 + std::fabs(ref.centroids[i])));
        expect(worst < 1e-4, tag + ": centroids differ by " + std::to_string(worst));
    }
    expect(stats.size() == ref.iteration_stats.size(),
           tag + ": " + std::to_string(stats.size()) + " stats vs " + std::to_string(ref.iteration_stats.size()));
    if (stats.empty() || ref.iteration_stats.empty()) return;
    const double o1 = ref.iteration_stats.back().obj, o2 = stats.back().obj;
    expect(std::fabs(o1 - o2) <= 1e-4 * std::fabs(o1),
           tag + ": objective " + std::to_string(o2) + " vs " + std::to_string(o1));
    std::printf("%s: objective %.6g (single process %.6g)\n", tag.c_str(), o2, o1);
}

// Runs a distributed k-means that must fail on every rank. failing: the rank expected to
// fail itself (its exception, whose message contains `own`), or -1 when every rank fails
// itself. The others must get RankFailed naming `failing` and carrying its message.
void expect_collective_failure(
    const std::string& name, int failing, const std::string& own,
    const std::function<void(flash::Points&, flash::distributed::MpiKmeansOptions&)>& setup) {
    const int rank = mpi_rank();
    const auto x = flash_test::integer_points(600, 4, 20, 5);
    const auto bounds = shard_bounds(600, false);
    flash::Points local;
    local.data = x.data() + bounds[rank] * 4;
    local.n = bounds[rank + 1] - bounds[rank];
    local.d = 4;
    flash::distributed::MpiKmeansOptions opt;
    opt.lloyd.k = 6;
    opt.lloyd.niter = 4;
    opt.lloyd.backend = flash::Backend::CPU;
    setup(local, opt);
    std::vector<float> cen(size_t(opt.lloyd.k > 0 ? opt.lloyd.k : 1) * 4);
    const std::string tag = name + " (rank " + std::to_string(rank) + ")";
    try {
        flash::distributed::run_kmeans(MPI_COMM_WORLD, local, cen.data(), opt);
        expect(false, tag + ": no exception");
    } catch (const flash::distributed::RankFailed& e) {
        const std::string what = e.what();
        expect(failing >= 0 && rank != failing, tag + ": unexpected RankFailed: " + what);
        expect(e.failed_rank == failing, tag + ": RankFailed names rank " + std::to_string(e.failed_rank));
        expect(what.find("rank " + std::to_string(failing)) != std::string::npos && what.find(own) != std::string::npos,
               tag + ": RankFailed message: " + what);
    } catch (const std::exception& e) {
        const std::string what = e.what();
        expect(failing < 0 || rank == failing, tag + ": this rank should get RankFailed, got: " + what);
        expect(what.find(own) != std::string::npos, tag + ": message: " + what);
    }
}

void check_failures() {
    const int size = mpi_size(), last = size - 1;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> bad; // the last rank's shard, with a NaN
    expect_collective_failure("NaN in the last rank's shard", last, "NaN", [&](flash::Points& p, auto&) {
        if (mpi_rank() != last) return;
        const float* src = static_cast<const float*>(p.data);
        bad.assign(src, src + p.n * p.d);
        bad[bad.size() / 2] = nan;
        p.data = bad.data();
    });
    expect_collective_failure("null shard on rank 1", 1, "null pointer", [&](flash::Points& p, auto&) {
        if (mpi_rank() == 1) p.data = nullptr;
    });
    expect_collective_failure(
        "max_points_per_centroid 0", -1, "max_points_per_centroid",
        [&](flash::Points&, flash::distributed::MpiKmeansOptions& o) { o.max_points_per_centroid = 0; });
    expect_collective_failure("k <= 0", -1, "k must be positive",
                              [&](flash::Points&, flash::distributed::MpiKmeansOptions& o) { o.lloyd.k = 0; });
    expect_collective_failure("ranks disagree on k", -1, "ranks disagree on k",
                              [&](flash::Points&, flash::distributed::MpiKmeansOptions& o) {
                                  if (mpi_rank() == last) o.lloyd.k = 7;
                              });
    int calls = 0;
    expect_collective_failure("post_process throws on the last rank", last, "hook failed",
                              [&](flash::Points&, flash::distributed::MpiKmeansOptions& o) {
                                  o.lloyd.post_process = [&calls, last](float*, int64_t, int64_t) {
                                      if (mpi_rank() == last && ++calls == 3) throw std::runtime_error("hook failed");
                                  };
                              });
    expect_collective_failure("on_iteration throws on rank 0 after the last iteration", 0, "callback failed",
                              [&](flash::Points&, flash::distributed::MpiKmeansOptions& o) {
                                  o.lloyd.on_iteration = [](int64_t, int it, const flash::IterationStats&) {
                                      if (mpi_rank() == 0 && it == 3) throw std::runtime_error("callback failed");
                                  };
                              });
    // run_collectively on its own
    try {
        flash::distributed::run_collectively(MPI_COMM_WORLD, [&] {
            if (mpi_rank() == last) throw std::invalid_argument("cannot read shard");
        });
        expect(false, "run_collectively: no exception");
    } catch (const flash::distributed::RankFailed& e) {
        expect(mpi_rank() != last && e.failed_rank == last, "run_collectively: RankFailed on the failing rank");
    } catch (const std::invalid_argument&) {
        expect(mpi_rank() == last, "run_collectively: own exception on another rank");
    }
    flash::distributed::run_collectively(MPI_COMM_WORLD, [] {});
}

// Resumable distributed runs (integer data: exact sums): a run that fails after its fifth
// iteration (a callback throwing on the last rank) or is stopped (a stop request on the last
// rank only) resumes from rank 0's checkpoint to the bits of an uninterrupted run, on every
// rank, with every iteration's callback once; a checkpoint of another run is refused on every
// rank.
void check_checkpoints(const std::vector<float>& x) {
    const int rank = mpi_rank(), last = mpi_size() - 1;
    const int64_t n = 3000, d = 8, k = 12;
    const auto bounds = shard_bounds(n, true);
    flash::Points local;
    local.data = x.data() + bounds[rank] * d;
    local.n = bounds[rank + 1] - bounds[rank];
    local.d = d;
    long pid = long(getpid());
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    const std::string path = "mpi_kmeans_check_" + std::to_string(pid) + ".ckpt"; // (rank 0's, in its directory)
    auto options = [&] {
        flash::distributed::MpiKmeansOptions o;
        o.lloyd.k = k;
        o.lloyd.niter = 8;
        o.lloyd.backend = flash::Backend::CPU;
        o.max_points_per_centroid = 50; // subsampled
        o.lloyd.checkpoint_path = path;
        o.lloyd.checkpoint_every = 2;
        return o;
    };
    std::vector<float> straight(k * d), resumed(k * d);
    auto plain = options();
    plain.lloyd.checkpoint_path.clear();
    plain.lloyd.checkpoint_every = 0;
    const auto st_straight = flash::distributed::run_kmeans(MPI_COMM_WORLD, local, straight.data(), plain);
    auto file_iterations = [&] { // rank 0's checkpoint, sent to every rank
        int done = -1;
        flash::Checkpoint c;
        if (rank == 0 && flash::load_checkpoint(path, c)) done = c.iterations_done;
        MPI_Bcast(&done, 1, MPI_INT, 0, MPI_COMM_WORLD);
        return done;
    };
    // Resumed with a callback that records the iterations it sees (the whole history, in order)
    // and a post-processing that counts the iterations run (and the initial centroids): only
    // those after the checkpoint's `from`.
    auto resume = [&](const std::string& what, int from) {
        std::vector<int> seen;
        int processed = 0;
        auto o = options();
        o.lloyd.on_iteration = [&seen](int64_t, int it, const flash::IterationStats&) { seen.push_back(it); };
        o.lloyd.post_process = [&processed](float*, int64_t, int64_t) { processed++; }; // (the default: none)
        const auto st = flash::distributed::run_kmeans(MPI_COMM_WORLD, local, resumed.data(), o);
        expect(std::memcmp(resumed.data(), straight.data(), sizeof(float) * k * d) == 0,
               what + ": resumed centroids equal the uninterrupted run's");
        expect(st.size() == st_straight.size() && st.back().obj == st_straight.back().obj,
               what + ": resumed stats (8 iterations, same objective)");
        expect(seen == std::vector<int>({0, 1, 2, 3, 4, 5, 6, 7}),
               what + ": every iteration's callback once, in order");
        expect(processed == 1 + 8 - from, what + ": ran only the iterations after the checkpoint");
        expect(file_iterations() == 8, what + ": the final checkpoint holds 8 iterations");
        if (rank == 0) std::remove(path.c_str());
    };

    auto crash = options();
    crash.lloyd.on_iteration = [last](int64_t, int it, const flash::IterationStats&) {
        if (mpi_rank() == last && it == 4) throw std::runtime_error("simulated crash");
    };
    try {
        flash::distributed::run_kmeans(MPI_COMM_WORLD, local, resumed.data(), crash);
        expect(false, "checkpoint: the crashing run did not throw");
    } catch (const std::exception&) {
    }
    expect(file_iterations() == 4, "checkpoint: a run that failed after 5 iterations left the one after 4");
    resume("checkpoint after a failure", 4);

    auto stopped = options();
    stopped.lloyd.stop_on_sigint = true;
    stopped.lloyd.on_iteration = [last](int64_t, int it, const flash::IterationStats&) {
        if (mpi_rank() == last && it == 1) flash::request_stop(); // one rank only
    };
    try {
        flash::distributed::run_kmeans(MPI_COMM_WORLD, local, resumed.data(), stopped);
        expect(false, "checkpoint: the stopped run did not throw");
    } catch (const flash::Interrupted& e) {
        expect(std::string(e.what()).find("stopped after iteration 3 of 8") != std::string::npos,
               std::string("checkpoint: Interrupted on every rank: ") + e.what());
    }
    expect(file_iterations() == 3,
           "checkpoint: a stop requested during iteration 2 on one rank ends every rank after 3");
    resume("checkpoint after a stop request", 3);

    // A stop requested during the last iteration: the run ends as it would have, no Interrupted.
    auto late = options();
    late.lloyd.checkpoint_path.clear();
    late.lloyd.checkpoint_every = 0;
    late.lloyd.stop_on_sigint = true;
    late.lloyd.on_iteration = [last](int64_t, int it, const flash::IterationStats&) {
        if (mpi_rank() == last && it == 6) flash::request_stop(); // read at the last all-reduce
    };
    try {
        const auto st = flash::distributed::run_kmeans(MPI_COMM_WORLD, local, resumed.data(), late);
        expect(st.size() == 8 && std::memcmp(resumed.data(), straight.data(), sizeof(float) * k * d) == 0,
               "checkpoint: a stop during the last iteration leaves the run whole");
    } catch (const std::exception& e) {
        expect(false, std::string("checkpoint: a stop during the last iteration threw: ") + e.what());
    }

    // Another run's checkpoint (another seed): refused on every rank, the file left as it is.
    flash::clear_stop_request(); // (the last rank's request, honoured)
    flash::distributed::run_kmeans(MPI_COMM_WORLD, local, resumed.data(), options()); // a checkpoint of 8
    auto other = options();
    other.seed = 99;
    try {
        flash::distributed::run_kmeans(MPI_COMM_WORLD, local, resumed.data(), other);
        expect(false, "checkpoint: another run's checkpoint was accepted");
    } catch (const flash::distributed::RankFailed& e) {
        expect(rank != 0 && e.failed_rank == 0, "checkpoint: RankFailed names rank 0");
    } catch (const std::invalid_argument& e) {
        expect(rank == 0 && std::string(e.what()).find("another problem") != std::string::npos,
               std::string("checkpoint: refusal on rank 0: ") + e.what());
    }
    expect(file_iterations() == 8, "checkpoint: a refused checkpoint is left as it was");
    if (rank == 0) std::remove(path.c_str());
}

void check_building_blocks() {
    const int rank = mpi_rank(), size = mpi_size();
    // Chunked all-reduce: pieces of 3 elements, against the closed form.
    std::vector<double> v(10);
    std::vector<int64_t> w(7);
    for (size_t i = 0; i < v.size(); i++) v[i] = double(rank + 1) * double(i);
    for (size_t i = 0; i < w.size(); i++) w[i] = int64_t(rank) * 1000 + int64_t(i);
    flash::distributed::detail::allreduce_in_place(MPI_COMM_WORLD, v.data(), int64_t(v.size()), MPI_DOUBLE, MPI_SUM, 3);
    flash::distributed::detail::allreduce_in_place(MPI_COMM_WORLD, w.data(), int64_t(w.size()), MPI_INT64_T, MPI_MAX,
                                                   3);
    bool ok = true;
    for (size_t i = 0; i < v.size(); i++) ok = ok && v[i] == double(size) * (size + 1) / 2 * double(i);
    for (size_t i = 0; i < w.size(); i++) ok = ok && w[i] == int64_t(size - 1) * 1000 + int64_t(i);
    expect(ok, "allreduce_in_place in pieces of 3");
    // Permutation prefix (sparse and dense branches) equals the full permutation's prefix.
    const int64_t cases[][3] = {{1000, 10, 1234}, {1000, 250, 1235}, {1000, 251, 7},    {1000, 1000, 8}, {1000, 0, 9},
                                {1, 1, 3},        {2, 1, 4},         {100003, 777, -5}, {5000, 1, 0}};
    for (const auto& c : cases) {
        const auto full = flash::faiss_rand_perm(c[0], c[2]);
        const auto prefix = flash::distributed::detail::rand_perm_prefix(c[0], c[1], c[2]);
        expect(std::equal(prefix.begin(), prefix.end(), full.begin()) && int64_t(prefix.size()) == c[1],
               "rand_perm_prefix(" + std::to_string(c[0]) + ", " + std::to_string(c[1]) + ", " + std::to_string(c[2]) +
                   ")");
    }
}

// .fvecs of n rows (values i + j / 8) with a NaN in row nan_row.
int write_fvecs(const std::string& path, int64_t n, int32_t d, int64_t nan_row) {
    std::ofstream f(path, std::ios::binary);
    std::vector<float> row(static_cast<size_t>(d));
    for (int64_t i = 0; i < n; i++) {
        for (int32_t j = 0; j < d; j++) row[j] = float(i % 17) + float(j) / 8;
        if (i == nan_row) row[0] = std::numeric_limits<float>::quiet_NaN();
        f.write(reinterpret_cast<const char*>(&d), 4);
        f.write(reinterpret_cast<const char*>(row.data()), std::streamsize(4) * d);
    }
    return f ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    if (argc == 6 && std::string(argv[1]) == "--write-fvecs")
        return write_fvecs(argv[2], std::atoll(argv[3]), int32_t(std::atoi(argv[4])), std::atoll(argv[5]));
    MPI_Init(&argc, &argv);
    const int rank = mpi_rank(), size = mpi_size();
    try {
        check_building_blocks();
        // Failures first: the runs after them show that no rank was left behind in a collective.
        check_failures();
        check_checkpoints(flash_test::integer_points(3000, 8, 40, 77));
        const auto xi = flash_test::integer_points(3000, 8, 40, 77);
        run_case({"integer data, no subsampling", 3000, 8, 12, 1000}, xi);
        run_case({"integer data, subsampled, uneven shards", 3000, 8, 20, 50, true, true}, xi);
        Case ip{"integer data, spherical, inner product", 3000, 8, 12, 1000, true, true};
        ip.metric = flash::Metric::InnerProduct;
        ip.spherical = true;
        ip.faiss_post_process = true;
        run_case(ip, xi);
        Case sph{"integer data, spherical L2, subsampled, given initial centroids", 3000, 8, 10, 100, true, false};
        sph.spherical = true;
        sph.faiss_post_process = true;
        sph.init = xi.data() + 8 * 100; // rows 100..109, normalised by the post-processing
        run_case(sph, xi);
        run_case({"integer data, training set of exactly k points", 12, 8, 12, 1000}, xi);
        run_case({"integer data, max_points_per_centroid 1", 3000, 8, 20, 1}, xi);
        run_case({"fewer points than ranks", 2, 8, 1, 1000}, xi);
        // Weights 0.5, 1, 1.5 or 2 (per row, split with the shards): weighted sums of integers
        // stay exact, so bit for bit too, with and without subsampling (which keeps the weights
        // of the rows it picks).
        std::vector<float> wi(xi.size() / 8); // (3000)
        std::mt19937 wrng(79);
        for (float& w : wi) w = 0.5f * float(1 + wrng() % 4);
        Case wc{"integer data, weighted, uneven shards", 3000, 8, 12, 1000, true, true};
        wc.weights = wi.data();
        run_case(wc, xi);
        Case wsub{"integer data, weighted, subsampled", 3000, 8, 20, 50, true, false};
        wsub.weights = wi.data();
        run_case(wsub, xi);
        const auto xg = flash_test::gaussian_mixture(6000, 16, 30, 78);
        run_case({"gaussian data", 6000, 16, 24, 1000, false, true}, xg);
        Case gsph{"gaussian data, spherical (engine post-processing)", 6000, 16, 24, 1000, false, true};
        gsph.spherical = true;
        run_case(gsph, xg);
    } catch (const std::exception& e) {
        std::printf("rank %d: exception: %s\n", rank, e.what());
        failures++;
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) std::printf("mpi check (np=%d): %d checks on rank 0, %d failures\n", size, checks, total);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
