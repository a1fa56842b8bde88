// Public engine API of faiss-flash: exact Lloyd iterations on a batch of problems.
// Independent of FAISS and free of CUDA types, so a CPU-only build compiles it too.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flash {

enum class Metric : int { L2 = 0, InnerProduct = 1 };
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
enum class Backend : int { Auto = 0, CPU = 1, CUDA = 2 };

/// How the CUDA engine evaluates fp32 dot products.
/// Exact: every assignment is the true fp32 argmin except at near-ties (the default).
/// TF32: opt-in fast mode, TF32-class products without the exact re-check: scaled fp16
///       copies and one fp16 product (11-bit significands, TF32's). May misassign close points.
enum class Fp32Mode : int { Exact = 0, TF32 = 1 };

/// Where the CUDA engine keeps host points.
/// Auto: resident on the GPU(s) when they fit, else as much as fits resident and the rest
///       streamed from host memory every iteration (copies overlap compute).
/// Off:  everything resident; data that does not fit is a clear out-of-memory error.
/// Force: nothing resident, every piece streamed every iteration (tests, shared GPUs).
enum class Streaming : int { Auto = 0, Off = 1, Force = 2 };

/// How the points were placed by the last sharded / streaming run (LloydOptions::placement).
struct Placement {
    int shards = 0;                ///< one per entry of cuda_devices (1 for a single device)
    int64_t pieces = 0;            ///< pieces of stream_piece_rows rows (per problem)
    int64_t resident_rows = 0;     ///< rows kept on the GPU(s) for the whole run
    int64_t streamed_rows = 0;     ///< rows copied from host memory every iteration
    int64_t streamed_bytes = 0;    ///< bytes copied per iteration
    bool host_pinned = false;      ///< streamed rows were DMA'd from pinned memory (no staging copy)
    int64_t converted_rows = 0;    ///< streamed rows converted once to transfer_dtype in pinned memory
    double setup_s = 0;            ///< allocation, pinning (or converting once) and the upload of the resident rows
    double copy_s = 0;             ///< per iteration: host-to-device copy time (slowest shard, CUDA events)
    double compute_s = 0;          ///< per iteration: assignment + partial sums (slowest shard, CUDA events)
    double iteration_s = 0;        ///< per iteration: wall time of the whole pass incl. the reduction
};

/// A batch of B point sets, each (n, d) row-major and contiguous:
/// element (b, i, j) lives at data[(b * n + i) * d + j].
struct Points {
    const void* data = nullptr;
    DType dtype = DType::F32;
    int64_t batch = 1;
    int64_t n = 0;
    int64_t d = 0;
    int device = -1; ///< -1: host memory; >= 0: CUDA ordinal that holds `data`
};

/// Same fields and meaning as faiss::ClusteringIterationStats.
struct IterationStats {
    double obj = 0;           ///< sum over points of the distance (L2) or similarity (IP)
                              ///< to the assigned centroid, before the update
    double time_s = 0;        ///< cumulative seconds since the start of the run
    double search_time_s = 0; ///< cumulative seconds spent in assignment
    double imbalance = 0;     ///< k * sum(h^2) / (sum h)^2 over cluster sizes h
    int nsplit = 0;           ///< empty clusters re-seeded this iteration
};

struct LloydOptions {
    int64_t k = 0;
    int niter = 25;
    Metric metric = Metric::L2;
    bool spherical = false;     ///< L2-normalise centroids after each update
    bool int_centroids = false; ///< round centroids after each update
    int64_t k_frozen = 0;       ///< the first k_frozen centroids are never updated
    const float* weights = nullptr; ///< (batch, n) host, or null for unit weights
    Backend backend = Backend::Auto;
    int cuda_device = -1;       ///< -1: the device holding the data, else device 0
    Fp32Mode fp32_mode = Fp32Mode::Exact;

    /// Several GPUs in one process: the points (host memory) are sharded over these CUDA
    /// ordinals in order; a device may appear more than once (two shards on one GPU, which
    /// tests the path on a single device). Sums, counts and objective are reduced in a fixed
    /// order: deterministic for a given list, equal to one GPU within float tolerance.
    /// Empty: the single device of cuda_device.
    std::vector<int> cuda_devices;
    /// Host data larger than the GPU (see Streaming); applies to host points on CUDA.
    Streaming streaming = Streaming::Auto;
    /// Cap in bytes on the GPU memory used per device (0: the free memory less a margin).
    int64_t device_memory_limit = 0;
    /// fp32 host points sent to the GPU as F16 / BF16 (half the bytes per copy; the
    /// assignment then runs on tensor cores in that type). F32: as they are.
    DType transfer_dtype = DType::F32;
    /// Rows per piece of the sharded / streaming engine (0: about 1 GiB of points per piece).
    int64_t stream_piece_rows = 0;
    /// Pin (cudaHostRegister) the streamed part of pageable host points once per run, so
    /// every iteration DMAs it directly; with transfer_dtype, convert it once into pinned host
    /// memory of that type instead, as many pieces as half of the host memory available to the
    /// process holds (Placement::converted_rows). False (or when pinning fails, and for the
    /// pieces beyond that memory): staging copies, converting every iteration.
    bool pin_host_data = true;
    /// When set, receives how the sharded / streaming engine placed the points.
    Placement* placement = nullptr;

    /// Host post-processing of the updated (k, d) centroids of one problem, replacing
    /// spherical / int_centroids. The CPU engine calls it; FlashClustering uses it to
    /// reuse FAISS' own post-processing bit for bit.
    std::function<void(float* centroids, int64_t k, int64_t d)> post_process;
    /// Called after each iteration of problem b (on the host; the one-GPU engine, which keeps
    /// the loop on the device, calls it at the end of the run and at each checkpoint, after
    /// writing it; the other engines after each iteration, before its checkpoint).
    std::function<void(int64_t b, int iter, const IterationStats&)> on_iteration;

    /// Resumable runs: when checkpoint_path is set, centroids, finished iterations and
    /// stats are written there (atomically) every checkpoint_every iterations (0: none before
    /// the end) and at the end or when stopped; a run that finds a checkpoint of the same
    /// problem continues from it and ends with the same centroids as an uninterrupted run.
    std::string checkpoint_path;
    int checkpoint_every = 0;
    /// Install a SIGINT handler for the run: Ctrl-C stops it between iterations (after
    /// writing the checkpoint, if any) by throwing flash::Interrupted.
    bool stop_on_sigint = false;
};

/// Thrown when a run is stopped between iterations (SIGINT or request_stop()).
struct Interrupted : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Thrown when the file at checkpoint_path cannot be resumed from: not a faiss-flash
/// checkpoint, written by another version, damaged, or a checkpoint of another run or of more
/// iterations than niter (the message names the file and says which). A std::invalid_argument;
/// a file that cannot be read or written is a std::runtime_error instead.
struct BadCheckpoint : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

/// Asks the Lloyd runs in progress that have stop_on_sigint set to stop after their current
/// iteration (async-signal-safe); other runs ignore it. A request made while no such run is in
/// progress is dropped when the next one starts.
void request_stop();

/// Runs opt.niter Lloyd iterations (assign, objective, update, split empty clusters,
/// post-process) on each of the x.batch problems.
/// centroids: (batch, k, d) fp32 host memory; initial centroids in, final out.
/// Returns stats[b][iter]. Throws std::invalid_argument on bad input.
std::vector<std::vector<IterationStats>> run_lloyd(
        const Points& x,
        float* centroids,
        const LloydOptions& opt);

/// Nearest centroid of every point. centroids: (batch, k, d) fp32 host.
/// labels, distances: (batch, n) host; distances are squared L2 or similarities (IP).
/// Ties go to the lowest centroid index. Either output may be null.
void assign_nearest(
        const Points& x,
        const float* centroids,
        int64_t k,
        Metric metric,
        int64_t* labels,
        float* distances,
        Backend backend = Backend::Auto,
        int cuda_device = -1);

/// True when this build has the CUDA engine and a CUDA device is visible.
bool cuda_available();

/// The backend Auto resolves to for data in host memory: CUDA when available.
Backend resolve_backend(Backend requested, const Points& x);

const char* backend_name(Backend b);

} // namespace flash
