// Run under mpirun -np P: distributed k-means (CPU engine) on shards of a dataset must
// equal the single-process FlashClustering run on the whole dataset (same seed): bit for bit
// on integer-valued data (exact sums), within float tolerance on Gaussian data.
#include <faiss/IndexFlat.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "faiss_ext/FlashClustering.h"
#include "kernels/distributed/lloyd_mpi.h"
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

void run_case(const std::string& name, const std::vector<float>& x, int64_t n, int64_t d, int64_t k, int max_ppc,
              bool exact, bool uneven) {
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    // Shard boundaries: even split, or rank r owning a share proportional to r + 1.
    std::vector<int64_t> bounds(size + 1, 0);
    const int64_t total_w = int64_t(size) * (size + 1) / 2;
    for (int r = 0; r < size; r++) bounds[r + 1] = uneven ? bounds[r] + n * (r + 1) / total_w : n * (r + 1) / size;
    bounds[size] = n;
    flash::Points local;
    local.data = x.data() + bounds[rank] * d;
    local.n = bounds[rank + 1] - bounds[rank];
    local.d = d;
    flash::distributed::MpiKmeansOptions opt;
    opt.lloyd.k = k;
    opt.lloyd.niter = 8;
    opt.lloyd.backend = flash::Backend::CPU;
    opt.max_points_per_centroid = max_ppc;
    std::vector<float> cen(k * d);
    const auto stats = flash::distributed::run_kmeans(MPI_COMM_WORLD, local, cen.data(), opt);
    if (rank != 0) return;

    faiss_flash::FlashClustering ref(static_cast<int>(d), static_cast<int>(k));
    ref.niter = 8;
    ref.max_points_per_centroid = max_ppc;
    ref.flash.backend = flash::Backend::CPU;
    faiss::IndexFlatL2 index(d);
    ref.train(n, x.data(), index);
    const std::string tag = name + " (np=" + std::to_string(size) + ")";
    if (exact) {
        expect(std::memcmp(ref.centroids.data(), cen.data(), sizeof(float) * k * d) == 0,
               tag + ": centroids not bit-identical");
    } else {
        double worst = 0;
        for (int64_t i = 0; i < k * d; i++)
            worst = std::max(worst, double(std::fabs(ref.centroids[i] - cen[i])) / (1 + std::fabs(ref.centroids[i])));
        expect(worst < 1e-4, tag + ": centroids differ by " + std::to_string(worst));
    }
    const double o1 = ref.iteration_stats.back().obj, o2 = stats.back().obj;
    expect(std::fabs(o1 - o2) <= 1e-4 * std::fabs(o1), tag + ": objective " + std::to_string(o2) + " vs " +
                                                            std::to_string(o1));
    std::printf("%s: objective %.6g (single process %.6g)\n", tag.c_str(), o2, o1);
}

} // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    try {
        const auto xi = flash_test::integer_points(3000, 8, 40, 77);
        run_case("integer data, no subsampling", xi, 3000, 8, 12, 1000, true, false);
        run_case("integer data, subsampled, uneven shards", xi, 3000, 8, 20, 50, true, true);
        const auto xg = flash_test::gaussian_mixture(6000, 16, 30, 78);
        run_case("gaussian data", xg, 6000, 16, 24, 1000, false, true);
    } catch (const std::exception& e) {
        std::printf("rank %d: exception: %s\n", rank, e.what());
        failures++;
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) std::printf("mpi check: %d checks, %d failures\n", checks, total);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
