// A process to kill: runs the CPU engine (or, with "cuda", the one-GPU engine) with a checkpoint
// and writes the final centroids. Used by test_checkpoint.
//   checkpoint_worker OUT_CENTROIDS CHECKPOINT|- SLEEP_MS_PER_ITERATION [cpu|cuda]
// Prints "resumed at N" and exits 0 when done, 130 when stopped by SIGINT. The sleep is taken in
// each iteration's callback (on the GPU these come at each checkpoint, every two iterations).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "kernels/checkpoint.h"
#include "kernels/flash_kmeans.h"
#include "test_data.h"

int main(int argc, char** argv) {
    const std::string backend = argc == 5 ? argv[4] : "cpu";
    if ((argc != 4 && argc != 5) || (backend != "cpu" && backend != "cuda")) {
        std::fprintf(stderr, "usage: checkpoint_worker OUT CHECKPOINT|- SLEEP_MS [cpu|cuda]\n");
        return 2;
    }
    const std::string out = argv[1], ck = argv[2];
    const int sleep_ms = std::atoi(argv[3]);
    const int64_t n = 8000, d = 16, k = 40;
    const auto x = flash_test::gaussian_mixture(n, d, 60, 4242);
    std::vector<float> cen(x.begin(), x.begin() + k * d);

    flash::Points p = flash_test::host_points(x.data(), n, d);
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = 24;
    opt.backend = backend == "cuda" ? flash::Backend::CUDA : flash::Backend::CPU;
    if (ck != "-") {
        opt.checkpoint_path = ck;
        opt.checkpoint_every = 2;
        opt.stop_on_sigint = true;
        flash::Checkpoint found;
        if (flash::load_checkpoint(ck, found)) std::printf("resumed at %d\n", found.iterations_done);
    }
    opt.on_iteration = [&](int64_t, int, const flash::IterationStats&) {
        if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    };
    try {
        const auto stats = flash::run_lloyd(p, cen.data(), opt);
        std::printf("stats: %zu\n", stats[0].size());
    } catch (const flash::Interrupted& e) {
        std::printf("%s\n", e.what());
        return 130;
    }
    std::ofstream f(out, std::ios::binary);
    f.write(reinterpret_cast<const char*>(cen.data()), std::streamsize(sizeof(float) * cen.size()));
    return f ? 0 : 1;
}
