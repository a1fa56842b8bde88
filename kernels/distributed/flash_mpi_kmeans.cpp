// Distributed k-means of an .fvecs file: each MPI rank reads only its own slice of rows.
//   mpirun -np 4 flash_mpi_kmeans data.fvecs -k 1024 [--niter 25] [--seed 1234]
//          [--max-points-per-centroid 256] [--metric l2|ip] [--backend auto|cpu|cuda]
//          [-o centroids.fvecs]
//   mpirun -np 2 flash_mpi_kmeans --synthetic N --dim D -k K ...   (generated shards, no file)
// Rank 0 prints one line per iteration and writes the centroids. With --backend cuda each
// rank uses the GPU of its index among the ranks of its node.
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/distributed/lloyd_mpi.h"
#include "kernels/synthetic_points.h"

namespace {

// Rows [r0, r1) of an .fvecs file (each row: int32 d, then d floats).
std::vector<float> read_fvecs_slice(const std::string& path, int rank, int size, int64_t& n_total, int64_t& d,
                                    int64_t& r0) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot open " + path);
    const int64_t bytes = f.tellg();
    f.seekg(0);
    int32_t dim = 0;
    if (!f.read(reinterpret_cast<char*>(&dim), 4) || dim <= 0 || dim > (1 << 20))
        throw std::runtime_error(path + ": not an .fvecs file (bad dimension header)");
    d = dim;
    const int64_t row_bytes = 4 + 4 * d;
    if (bytes % row_bytes != 0) throw std::runtime_error(path + ": truncated .fvecs file (size is not a whole number of rows)");
    n_total = bytes / row_bytes;
    r0 = n_total * rank / size;
    const int64_t r1 = n_total * (rank + 1) / size;
    std::vector<float> x((r1 - r0) * d);
    f.seekg(r0 * row_bytes);
    for (int64_t i = r0; i < r1; i++) {
        int32_t di = 0;
        f.read(reinterpret_cast<char*>(&di), 4);
        if (di != dim) throw std::runtime_error(path + ": row " + std::to_string(i) + " has dimension " +
                                                std::to_string(di) + ", expected " + std::to_string(dim));
        f.read(reinterpret_cast<char*>(&x[(i - r0) * d]), 4 * d);
        if (!f) throw std::runtime_error(path + ": read error at row " + std::to_string(i));
    }
    return x;
}

} // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rc = 0;
    try {
        std::string path, out, metric = "l2", backend = "auto";
        int64_t synthetic = 0, dim = 128;
        flash::distributed::MpiKmeansOptions opt;
        opt.lloyd.niter = 25;
        for (int i = 1; i < argc; i++) {
            const std::string a = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw std::invalid_argument("missing value after " + a);
                return argv[++i];
            };
            if (a == "-k") opt.lloyd.k = std::atol(value().c_str());
            else if (a == "--niter") opt.lloyd.niter = std::atoi(value().c_str());
            else if (a == "--seed") opt.seed = std::atoi(value().c_str());
            else if (a == "--max-points-per-centroid") opt.max_points_per_centroid = std::atoi(value().c_str());
            else if (a == "--metric") metric = value();
            else if (a == "--backend") backend = value();
            else if (a == "-o") out = value();
            else if (a == "--synthetic") synthetic = std::atoll(value().c_str());
            else if (a == "--dim") dim = std::atoll(value().c_str());
            else if (path.empty() && a[0] != '-') path = a;
            else throw std::invalid_argument("unknown argument " + a);
        }
        if ((path.empty() && synthetic <= 0) || opt.lloyd.k <= 0)
            throw std::invalid_argument("usage: flash_mpi_kmeans FILE.fvecs -k K [...] (or --synthetic N --dim D)");
        if (synthetic > 0 && dim <= 0) throw std::invalid_argument("--dim must be positive");
        if (metric == "ip") opt.lloyd.metric = flash::Metric::InnerProduct;
        else if (metric != "l2") throw std::invalid_argument("--metric must be l2 or ip");
        if (backend == "cpu") opt.lloyd.backend = flash::Backend::CPU;
        else if (backend == "cuda") opt.lloyd.backend = flash::Backend::CUDA;
        else if (backend != "auto") throw std::invalid_argument("--backend must be auto, cpu or cuda");

        int64_t n_total = 0, d = 0, r0 = 0;
        std::vector<float> x;
        if (synthetic > 0) {
            n_total = synthetic;
            d = dim;
            r0 = n_total * rank / size;
            x.resize(size_t(n_total * (rank + 1) / size - r0) * d);
            flash::synthetic_points(r0, int64_t(x.size()) / d, d, flash::DType::F32, x.data());
        } else {
            x = read_fvecs_slice(path, rank, size, n_total, d, r0);
        }
        flash::Points local;
        local.data = x.data();
        local.n = int64_t(x.size()) / d;
        local.d = d;
        if (rank == 0) {
            std::printf("%ld points in %ldD over %d ranks, k=%ld, %d iterations\n", long(n_total), long(d), size,
                        long(opt.lloyd.k), opt.lloyd.niter);
            opt.lloyd.on_iteration = [](int64_t, int it, const flash::IterationStats& s) {
                std::printf("  iteration %d (%.2f s): objective=%g imbalance=%.3f nsplit=%d\n", it, s.time_s, s.obj,
                            s.imbalance, s.nsplit);
                std::fflush(stdout);
            };
        }
        std::vector<float> cen(opt.lloyd.k * d);
        flash::distributed::run_kmeans(MPI_COMM_WORLD, local, cen.data(), opt);
        if (rank == 0 && !out.empty()) {
            std::ofstream f(out, std::ios::binary);
            const int32_t dim = int32_t(d);
            for (int64_t c = 0; c < opt.lloyd.k; c++) {
                f.write(reinterpret_cast<const char*>(&dim), 4);
                f.write(reinterpret_cast<const char*>(&cen[c * d]), std::streamsize(4 * d));
            }
            if (!f) throw std::runtime_error("cannot write " + out);
            std::printf("wrote %ld centroids to %s\n", long(opt.lloyd.k), out.c_str());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "flash_mpi_kmeans (rank %d): %s\n", rank, e.what());
        rc = 1;
    }
    if (rc != 0) MPI_Abort(MPI_COMM_WORLD, rc);
    MPI_Finalize();
    return rc;
}
