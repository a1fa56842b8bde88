// Kernel-configuration choice for the assignment: a heuristic by default; with
// FLASH_AUTOTUNE=1 each configuration is timed once per (GPU, dtype, shape bucket) and the
// winner is cached on disk ($FLASH_CACHE_DIR or ~/.cache/faiss-flash/autotune-v7.txt), so
// later runs and processes pay nothing (the name carries a version, bumped when the kernels
// change: v3 = wgmma tiles in pairs, v4 = lean fold and the persistent small-k variant, v6 =
// exact fp32 through the filter: one wgmma configuration, then the FMA kernel; v7 = timed with
// the start from the last labels where the run's later iterations use it).
// FLASH_ASSIGN_VARIANT=i forces configuration i.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"

namespace flash::cuda_engine {

namespace {

int pow2_bucket(int64_t v) {
    int b = 0;
    while ((int64_t(1) << b) < v) b++;
    return b;
}

std::string cache_path() {
    if (const char* dir = std::getenv("FLASH_CACHE_DIR")) return std::string(dir) + "/autotune-v7.txt";
    const char* home = std::getenv("HOME");
    const std::string dir = std::string(home ? home : "/tmp") + "/.cache/faiss-flash";
    mkdir((std::string(home ? home : "/tmp") + "/.cache").c_str(), 0755);
    mkdir(dir.c_str(), 0755);
    return dir + "/autotune-v7.txt";
}

struct Cache {
    std::mutex mu;
    bool loaded = false;
    std::map<std::string, int> winners;
};

Cache& cache() {
    static Cache c;
    return c;
}

// Median time of three launches of one configuration, in milliseconds. start: the timed
// launches start from the labels of the warm-up launch, as the iterations after the first do
// from the last iteration's. That changes the winner: in TF32 mode at N=1M K=16384, timed
// without the start variant 0 won (8.1 ms against variant 5's 9.3), but the iterations, which
// start, ran at 9.0 ms per iteration with it and 8.4 with variant 5; timed with the start,
// variant 5 wins (7.3 against 8.1 ms). bench/RESULTS.md run 43.
float time_variant(const AssignArgs& a, int v, cudaStream_t s, bool start) {
    cudaEvent_t e0, e1;
    FLASH_CUDA_CHECK(cudaEventCreate(&e0));
    FLASH_CUDA_CHECK(cudaEventCreate(&e1));
    launch_assign(a, v, s); // warm-up (writes the labels)
    AssignArgs timed = a;   // (TF32 mode: a is the fp16 view, see choose_assign_variant)
    timed.start_from_labels = start;
    std::vector<float> t;
    for (int r = 0; r < 3; r++) {
        FLASH_CUDA_CHECK(cudaEventRecord(e0, s));
        launch_assign(timed, v, s);
        FLASH_CUDA_CHECK(cudaEventRecord(e1, s));
        FLASH_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        FLASH_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(t.begin(), t.end());
    return t[1];
}

// Measured with FLASH_AUTOTUNE=1 on an H100 (bench/RESULTS.md, 2026-11-25): for fp16 / bf16
// rows of at most 128 elements the two-warpgroup kernel with swizzled 64-wide centroid tiles
// (wgmma variant 5) won every shape bucket but one (K = 8192, where it was within 1.2% of the
// winner): 22% to 25% less assignment time than variant 0 on the large configs; for k <= 128
// its persistent form (variant 6) won (run 7: 0.030 vs 0.035 ms at B = 32 N = 4096 K = 64). For
// split fp32 and 256-wide rows variant 0 (the widest tile) won. Elsewhere (no wgmma) variant 0
// is the first mma.sync / FMA configuration.
int heuristic_variant(const AssignArgs& a) {
    if (a.dtype != DType::F32 && a.d <= 128 && wgmma_supported(a) && assign_wgmma_variants(a) > 6)
        return a.k <= 128 ? 6 : 5;
    return 0;
}

} // namespace

// Variants are numbered wgmma configurations first, then the portable ones (mma.sync for
// fp16 / bf16, plain fp32 FMA for fp32).
int assign_variants(const AssignArgs& a) {
    if (a.half_view) return assign_variants(*a.half_view);
    const int w = wgmma_supported(a) ? assign_wgmma_variants(a) : 0;
    return w + (a.dtype == DType::F32 ? 1 : assign_mma_variants(a));
}

void launch_assign(const AssignArgs& a, int variant, cudaStream_t stream) {
    if (a.half_view) { // Fp32Mode::TF32: the scaled fp16 problem, then fp32 distances
        launch_assign(*a.half_view, variant, stream);
        launch_exact_distances(a, stream);
        return;
    }
    const int w = wgmma_supported(a) ? assign_wgmma_variants(a) : 0;
    if (a.dtype == DType::F32) {
        if (variant < w && a.xsplit) { // the filter or the split products, then fp32 FMA
            if (a.recheck_list)
                FLASH_CUDA_CHECK(cudaMemsetAsync(a.recheck_count, 0, sizeof(uint32_t) * a.batch, stream));
            launch_assign_wgmma(a, variant, stream);
            if (a.recheck_list) launch_assign_fp32_recheck(a, stream);
            if (a.candidates) launch_resolve_candidates(a, stream);
            else launch_exact_distances(a, stream);
        } else {
            launch_assign_fp32(a, stream);
        }
    } else if (variant < w) {
        launch_assign_wgmma(a, variant, stream);
    } else {
        launch_assign_mma(a, variant - w, stream);
    }
}

int choose_assign_variant(const AssignArgs& a, cudaStream_t s, bool start_later) {
    if (a.half_view) return choose_assign_variant(*a.half_view, s, start_later);
    const int count = assign_variants(a);
    if (const char* forced = std::getenv("FLASH_ASSIGN_VARIANT")) return std::min(std::max(0, std::atoi(forced)), count - 1);
    if (count == 1 || !env_switched_on("FLASH_AUTOTUNE")) return heuristic_variant(a);

    int dev = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    FLASH_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    std::ostringstream key;
    key << prop.name << "|dtype" << int(a.dtype) << "|d" << pow2_bucket(a.d) << "|k" << pow2_bucket(a.k) << "|n"
        << pow2_bucket(a.batch * a.n) << (start_later ? "|start" : ""); // (timed differently: its own entry)
    std::string k = key.str();
    std::replace(k.begin(), k.end(), ' ', '_');

    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    const std::string path = cache_path();
    if (!c.loaded) {
        std::ifstream f(path);
        std::string line;
        while (std::getline(f, line)) {
            std::istringstream in(line);
            std::string kk;
            int v;
            if (in >> kk >> v && v >= 0) c.winners[kk] = v;
        }
        c.loaded = true;
    }
    auto it = c.winners.find(k);
    if (it != c.winners.end()) return std::min(it->second, count - 1);

    cudaEvent_t t0, t1;
    FLASH_CUDA_CHECK(cudaEventCreate(&t0));
    FLASH_CUDA_CHECK(cudaEventCreate(&t1));
    FLASH_CUDA_CHECK(cudaEventRecord(t0, s));
    std::vector<float> ms(count);
    for (int v = 0; v < count; v++) ms[v] = time_variant(a, v, s, start_later);
    FLASH_CUDA_CHECK(cudaEventRecord(t1, s));
    FLASH_CUDA_CHECK(cudaEventSynchronize(t1));
    float tuning_ms = 0;
    FLASH_CUDA_CHECK(cudaEventElapsedTime(&tuning_ms, t0, t1));
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    const int best = int(std::min_element(ms.begin(), ms.end()) - ms.begin());
    c.winners[k] = best;
    std::ofstream out(path, std::ios::app);
    out << k << " " << best;
    for (float m : ms) out << " " << m;
    out << "\n";
    std::fprintf(stderr, "faiss-flash autotune: %s -> variant %d (", k.c_str(), best);
    for (int v = 0; v < count; v++) std::fprintf(stderr, "%s%.3f ms", v ? ", " : "", ms[v]);
    std::fprintf(stderr, "), tuned in %.1f ms, cached in %s\n", tuning_ms, path.c_str());
    return best;
}

} // namespace flash::cuda_engine
