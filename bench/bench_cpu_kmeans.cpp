// CPU engine vs faiss::Clustering on the same data and init (issue 2's benchmark).
//   bench_cpu_kmeans [--n N] [--d D] [--k K] [--niter I] [--repeats R]
// Each repeat trains both from scratch (same seed, no subsampling) and reports seconds
// per iteration; medians over repeats. Also checks the centroids agree bit for bit.
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "faiss_ext/FlashClustering.h"

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    int64_t n = 200000, d = 128, k = 1024;
    int niter = 10, repeats = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        const long v = std::atol(argv[i + 1]);
        if (a == "--n") n = v;
        else if (a == "--d") d = v;
        else if (a == "--k") k = v;
        else if (a == "--niter") niter = int(v);
        else if (a == "--repeats") repeats = int(v);
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    std::mt19937 rng(123);
    std::normal_distribution<float> g;
    std::vector<float> x(n * d);
    for (auto& v : x) v = g(rng);

    faiss::ClusteringParameters cp;
    cp.niter = niter;
    cp.max_points_per_centroid = int(n / k + 1); // no subsampling
    cp.min_points_per_centroid = 1;

    std::vector<double> t_faiss, t_flash;
    bool identical = true;
    for (int r = 0; r < repeats; r++) {
        faiss::Clustering ref(int(d), int(k), cp);
        faiss::IndexFlatL2 i1(d);
        double t = now();
        ref.train(n, x.data(), i1);
        t_faiss.push_back((now() - t) / niter);

        faiss_flash::FlashClustering ours(int(d), int(k), cp);
        ours.flash.backend = flash::Backend::CPU;
        faiss::IndexFlatL2 i2(d);
        t = now();
        ours.train(n, x.data(), i2);
        t_flash.push_back((now() - t) / niter);
        identical = identical && std::memcmp(ref.centroids.data(), ours.centroids.data(), sizeof(float) * k * d) == 0;
    }
    const double flops = 2.0 * n * k * d;
    std::printf("N=%ld d=%ld K=%ld niter=%d repeats=%d (median seconds per iteration, whole train() / niter)\n",
                long(n), long(d), long(k), niter, repeats);
    std::printf("%-22s %10s %10s\n", "engine", "s/iter", "GFLOP/s");
    std::printf("%-22s %10.4f %10.1f\n", "faiss::Clustering", median(t_faiss), flops / median(t_faiss) / 1e9);
    std::printf("%-22s %10.4f %10.1f\n", "faiss-flash CPU", median(t_flash), flops / median(t_flash) / 1e9);
    std::printf("speedup %.2fx; centroids bit-identical: %s\n", median(t_faiss) / median(t_flash),
                identical ? "yes" : "no");
    return 0;
}
