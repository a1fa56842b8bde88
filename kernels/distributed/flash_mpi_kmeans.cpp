// Distributed k-means of an .fvecs file: each MPI rank reads only its own slice of rows.
//   mpirun -np 4 flash_mpi_kmeans data.fvecs -k 1024 [--niter 25] [--seed 1234]
//          [--max-points-per-centroid 256] [--metric l2|ip] [--backend auto|cpu|cuda]
//          [-o centroids.fvecs] [--checkpoint PATH [--checkpoint-every N]]
//   mpirun -np 2 flash_mpi_kmeans --synthetic N --dim D -k K ...   (generated shards, no file)
// --metric ip: spherical k-means (inner product, centroids normalised), as the CLI's.
// --checkpoint: rank 0 writes the run's state there every N iterations (default 1) and at the
// end; the same command run again resumes from it to the same centroids. SIGINT, SIGTERM or
// SIGUSR1 (mpirun forwards SIGUSR1 to every rank) stop every rank after the current iteration,
// with the checkpoint written: exit status 130.
// Rank 0 prints one line per iteration and writes the centroids; it opens OUT before training,
// in the step that reads the shards (an unwritable path fails there, on every rank), but writes
// it only at the end; if the run fails with an error, it removes an OUT that it created or
// began to overwrite (an existing OUT is untouched until that final write; a run killed from
// outside may leave the empty file it created).
// With --backend cuda each rank uses the GPU of its index among the ranks of its node. Exit
// status: 0, 1 on an error (every rank leaves; rank 0 names the rank that failed), 2 on a bad
// command line.
#include <mpi.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/checkpoint.h"
#include "kernels/distributed/lloyd_mpi.h"
#include "kernels/lloyd_common.h"
#include "kernels/synthetic_points.h"

namespace {

const char* kUsage =
    "usage: flash_mpi_kmeans FILE.fvecs -k K [--niter N] [--seed S] [--max-points-per-centroid M]\n"
    "                        [--metric l2|ip (spherical)] [--backend auto|cpu|cuda] [-o OUT.fvecs]\n"
    "                        [--checkpoint PATH [--checkpoint-every N]]\n"
    "       flash_mpi_kmeans --synthetic N [--dim D] -k K [...]";

// A bad command line (exit status 2, with the usage).
struct UsageError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

struct Args {
    std::string path, out;
    int64_t synthetic = 0, dim = 128;
    flash::distributed::MpiKmeansOptions opt;
};

// Integer value of a flag within [lo, hi] (std::atol would read "abc" as 0).
int64_t parse_int(const std::string& flag, const std::string& v, int64_t lo, int64_t hi) {
    size_t used = 0;
    long long x = 0;
    try {
        x = std::stoll(v, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != v.size()) throw UsageError(flag + " needs an integer, got '" + v + "'");
    if (x < lo) throw UsageError(flag + " must be >= " + std::to_string(lo) + ", got " + v);
    if (x > hi) throw UsageError(flag + " must be <= " + std::to_string(hi) + ", got " + v);
    return x;
}

// Whether two paths name one file: the same file where both exist, else the same normalised path.
bool same_file(const std::string& a, const std::string& b) {
    namespace fs = std::filesystem;
    std::error_code ea, eb;
    if (fs::exists(a, ea) && fs::exists(b, eb)) return fs::equivalent(a, b, ea) && !ea;
    const fs::path ca = fs::weakly_canonical(a, ea), cb = fs::weakly_canonical(b, eb);
    return ea || eb ? a == b : ca == cb;
}

Args parse_args(int argc, char** argv) {
    constexpr int64_t kIntMax = std::numeric_limits<int>::max(), kIntMin = std::numeric_limits<int>::min();
    Args a;
    a.opt.lloyd.niter = 25;
    std::string metric = "l2", backend = "auto";
    bool have_k = false;
    for (int i = 1; i < argc; i++) {
        const std::string f = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError("missing value after " + f);
            return argv[++i];
        };
        if (f == "-k") {
            a.opt.lloyd.k = parse_int(f, value(), 1, int64_t(1) << 31);
            have_k = true;
        } else if (f == "--niter") {
            a.opt.lloyd.niter = int(parse_int(f, value(), 1, kIntMax));
        } else if (f == "--seed") {
            a.opt.seed = int(parse_int(f, value(), kIntMin, kIntMax));
        } else if (f == "--max-points-per-centroid") {
            a.opt.max_points_per_centroid = int(parse_int(f, value(), 1, kIntMax));
        } else if (f == "--metric") {
            metric = value();
        } else if (f == "--backend") {
            backend = value();
        } else if (f == "-o") {
            a.out = value();
            if (a.out.empty()) throw UsageError("-o needs a file name");
        } else if (f == "--synthetic") {
            a.synthetic = parse_int(f, value(), 1, int64_t(1) << 48); // n * (rank + 1) stays in range
        } else if (f == "--checkpoint") {
            a.opt.lloyd.checkpoint_path = value();
            if (a.opt.lloyd.checkpoint_path.empty()) throw UsageError("--checkpoint needs a file name");
        } else if (f == "--checkpoint-every") {
            a.opt.lloyd.checkpoint_every = int(parse_int(f, value(), 1, kIntMax));
        } else if (f == "--dim") {
            a.dim = parse_int(f, value(), 1, 1 << 20);
        } else if (a.path.empty() && !f.empty() && f[0] != '-') {
            a.path = f;
        } else {
            throw UsageError("unknown argument '" + f + "'");
        }
    }
    if (a.path.empty() && a.synthetic == 0) throw UsageError("give an .fvecs file or --synthetic N");
    if (!a.path.empty() && a.synthetic > 0) throw UsageError("give an .fvecs file or --synthetic N, not both");
    if (!have_k) throw UsageError("-k K (the number of centroids) is required");
    if (a.opt.lloyd.checkpoint_every > 0 && a.opt.lloyd.checkpoint_path.empty())
        throw UsageError("--checkpoint-every needs --checkpoint PATH");
    if (!a.opt.lloyd.checkpoint_path.empty() && a.opt.lloyd.checkpoint_every == 0) a.opt.lloyd.checkpoint_every = 1;
    const std::string& ck = a.opt.lloyd.checkpoint_path;
    if (!a.out.empty() && !a.path.empty() && same_file(a.out, a.path))
        throw UsageError("-o " + a.out + " is the input file: the centroids would overwrite the points");
    if (!ck.empty() && !a.path.empty() && same_file(ck, a.path))
        throw UsageError("--checkpoint " + ck + " is the input file");
    if (!ck.empty() && !a.out.empty() && same_file(ck, a.out))
        throw UsageError("--checkpoint " + ck + " and -o name the same file");
    // (the checkpoint's writer goes through PATH.tmp, which the start of the run also probes)
    for (const auto& [flag, path] : {std::pair<std::string, std::string>{"the input file", a.path}, {"-o", a.out}})
        if (!ck.empty() && !path.empty() && same_file(ck + ".tmp", path))
            throw UsageError("--checkpoint " + ck + ": its temporary file " + ck + ".tmp is " + flag);
    a.opt.lloyd.stop_on_sigint = true; // (the handlers: main)
    // --metric ip: spherical k-means, as the CLI's --metric ip and faiss.Kmeans(spherical=True)
    if (metric == "ip") {
        a.opt.lloyd.metric = flash::Metric::InnerProduct;
        a.opt.lloyd.spherical = true;
    } else if (metric != "l2")
        throw UsageError("--metric must be l2 or ip, got '" + metric + "'");
    if (backend == "cpu")
        a.opt.lloyd.backend = flash::Backend::CPU;
    else if (backend == "cuda")
        a.opt.lloyd.backend = flash::Backend::CUDA;
    else if (backend != "auto")
        throw UsageError("--backend must be auto, cpu or cuda, got '" + backend + "'");
    return a;
}

// Checks before training that the centroids can be written to path: opens it for appending,
// which creates it if missing but leaves an existing file as it is until the end of the run.
// Returns whether it created the file (the caller removes it if the run then fails).
bool check_writable(const std::string& path) {
    std::error_code ec;
    const bool existed = std::filesystem::exists(path, ec);
    std::ofstream f(path, std::ios::binary | std::ios::app);
    if (!f) throw std::runtime_error("cannot write " + path);
    return !existed;
}

// Checks before training that checkpoints can be written beside path: creates and removes the
// writer's temporary file (path + ".tmp"); an existing checkpoint is not touched.
void check_checkpoint_writable(const std::string& path) {
    const std::string tmp = path + ".tmp";
    if (!std::ofstream(tmp, std::ios::binary | std::ios::trunc))
        throw std::runtime_error("cannot write checkpoint " + path + " (" + tmp +
                                 " cannot be created: does its directory exist and take new files?)");
    std::remove(tmp.c_str());
}

// Rows [r0, r1) of an .fvecs file (each row: int32 d, then d floats).
std::vector<float> read_fvecs_slice(const std::string& path, int rank, int size, int64_t& n_total, int64_t& d,
                                    int64_t& r0) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw std::runtime_error(path + " is a directory, not an .fvecs file");
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot open " + path);
    const int64_t bytes = f.tellg();
    f.seekg(0);
    int32_t dim = 0;
    if (!f.read(reinterpret_cast<char*>(&dim), 4) || dim <= 0 || dim > (1 << 20))
        throw std::runtime_error(path + ": not an .fvecs file (bad dimension header)");
    d = dim;
    const int64_t row_bytes = 4 + 4 * d;
    if (bytes % row_bytes != 0)
        throw std::runtime_error(path + ": truncated .fvecs file (size is not a whole number of rows)");
    n_total = bytes / row_bytes;
    r0 = n_total * rank / size;
    const int64_t r1 = n_total * (rank + 1) / size;
    std::vector<float> x((r1 - r0) * d);
    f.seekg(r0 * row_bytes);
    for (int64_t i = r0; i < r1; i++) {
        int32_t di = 0;
        f.read(reinterpret_cast<char*>(&di), 4);
        if (di != dim)
            throw std::runtime_error(path + ": row " + std::to_string(i) + " has dimension " + std::to_string(di) +
                                     ", expected " + std::to_string(dim));
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
    // A clean stop between iterations (every rank: the run's stop flag is all-reduced); after
    // MPI_Init, which may install handlers of its own.
    struct sigaction stop = {};
    stop.sa_handler = [](int) { flash::request_stop(); };
    stop.sa_flags = SA_RESTART;
    sigemptyset(&stop.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &stop, nullptr);
    int rc = 0;
    std::string remove_on_error; // rank 0: the output file if this run created it or began writing it
    // Until the centroids are computed every error is collective (run_collectively,
    // run_kmeans): all ranks throw and leave together, and rank 0 reports it (a RankFailed
    // names the lowest failing rank and carries its message). After that only rank 0 works.
    try {
        Args a;
        std::vector<float> x, cen;
        int64_t n_total = 0, d = 0, r0 = 0;
        flash::distributed::run_collectively(MPI_COMM_WORLD, [&] {
            a = parse_args(argc, argv);
            if (rank == 0 && !a.out.empty() && check_writable(a.out)) remove_on_error = a.out;
            if (rank == 0 && !a.opt.lloyd.checkpoint_path.empty())
                check_checkpoint_writable(a.opt.lloyd.checkpoint_path);
            if (a.synthetic > 0) {
                n_total = a.synthetic;
                d = a.dim;
                r0 = n_total * rank / size;
                x.resize(size_t(n_total * (rank + 1) / size - r0) * size_t(d));
                flash::synthetic_points(r0, int64_t(x.size()) / d, d, flash::DType::F32, x.data());
            } else {
                x = read_fvecs_slice(a.path, rank, size, n_total, d, r0);
            }
            flash::check_enough_points(n_total, a.opt.lloyd.k); // (before the centroids: -k may be huge)
            cen.resize(size_t(a.opt.lloyd.k * d)); // (here: a failed allocation is collective too)
        });
        flash::Points local;
        local.data = x.data();
        local.n = int64_t(x.size()) / d;
        local.d = d;
        flash::distributed::MpiKmeansOptions& opt = a.opt;
        if (rank == 0) {
            std::printf("%ld points in %ldD over %d ranks, k=%ld, %d iterations\n", long(n_total), long(d), size,
                        long(opt.lloyd.k), opt.lloyd.niter);
            flash::Checkpoint found; // (only to say so: run_kmeans checks it is this run's)
            try {
                if (!opt.lloyd.checkpoint_path.empty() && flash::load_checkpoint(opt.lloyd.checkpoint_path, found))
                    std::printf("found checkpoint %s (%d iterations done)\n", opt.lloyd.checkpoint_path.c_str(),
                                found.iterations_done);
            } catch (const std::exception&) {
            }
            opt.lloyd.on_iteration = [](int64_t, int it, const flash::IterationStats& s) {
                std::printf("  iteration %d (%.2f s): objective=%g imbalance=%.3f nsplit=%d\n", it, s.time_s, s.obj,
                            s.imbalance, s.nsplit);
                std::fflush(stdout);
            };
        }
        // A stop asked for (on any rank) while the shards were read: every rank leaves before training.
        int stop = flash::stop_requested() ? 1 : 0;
        MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (stop) throw flash::Interrupted("faiss-flash: stopped before the first iteration");
        flash::distributed::run_kmeans(MPI_COMM_WORLD, local, cen.data(), opt);
        if (rank == 0 && !a.out.empty()) {
            std::ofstream f(a.out, std::ios::binary);
            if (!f) throw std::runtime_error("cannot write " + a.out); // (not truncated: kept)
            remove_on_error = a.out;                                   // truncated from here on
            const int32_t dim = int32_t(d);
            for (int64_t c = 0; c < opt.lloyd.k; c++) {
                f.write(reinterpret_cast<const char*>(&dim), 4);
                f.write(reinterpret_cast<const char*>(&cen[c * d]), std::streamsize(4 * d));
            }
            f.close();
            if (!f) throw std::runtime_error("cannot write " + a.out);
            remove_on_error.clear();
            std::printf("wrote %ld centroids to %s\n", long(opt.lloyd.k), a.out.c_str());
        }
    } catch (const flash::Interrupted& e) {
        if (rank == 0) std::fprintf(stderr, "flash_mpi_kmeans: %s\n", e.what());
        rc = 130;
    } catch (const UsageError& e) {
        if (rank == 0) std::fprintf(stderr, "flash_mpi_kmeans: %s\n%s\n", e.what(), kUsage);
        rc = 2;
    } catch (const std::exception& e) {
        if (rank == 0) std::fprintf(stderr, "flash_mpi_kmeans: %s\n", e.what());
        rc = 1;
    }
    if (rc != 0 && !remove_on_error.empty()) std::remove(remove_on_error.c_str());
    MPI_Finalize();
    return rc;
}
