#include <faiss/IndexFlat.h>

#include <cstdio>
#include <random>
#include <vector>

#include "faiss_ext/FlashClustering.h"

int main() {
    const int n = 2000, d = 8, k = 10;
    std::mt19937 rng(1);
    std::normal_distribution<float> g;
    std::vector<float> x(n * d);
    for (auto& v : x) v = g(rng);
    faiss_flash::FlashClustering clus(d, k);
    clus.flash.backend = flash::Backend::CPU;
    faiss::IndexFlatL2 index(d);
    clus.train(n, x.data(), index);
    std::printf("consumer: %zu centroids, objective %g\n", clus.centroids.size() / d, clus.iteration_stats.back().obj);
    return index.ntotal == k ? 0 : 1;
}
